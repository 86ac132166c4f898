"""The HTTP API half of the FluxLit hello example.

FluxLit starts this from ``api_command`` in ``fluxlit.toml``::

    python -m uvicorn api:app --host 127.0.0.1 --port {port} --root-path {api_prefix}

and mounts it under ``/api``. The gateway strips the mount prefix before forwarding, so the
routes here are ``/hello`` and ``/request-info`` (reachable publicly as ``/api/hello`` and
``/api/request-info``, or ``/myapp/api/...`` with ``FLUXLIT_ROOT_PATH=/myapp``).

``{api_prefix}`` is the API's public prefix (the root path plus the API mount: ``/api``, or
``/myapp/api``), which FluxLit also puts in this process's environment as
``FLUXLIT_API_ROOT_PATH``. Given to uvicorn as ``--root-path``, it becomes the ASGI
``root_path``, from which FastAPI writes the URLs its docs pages load: Swagger UI at
``/api/docs`` fetches ``/api/openapi.json`` (not ``/openapi.json``, which is Streamlit's), and
``openapi.json`` lists ``/api`` as its server, so "Try it out" calls ``/api/hello``.

``FastAPIOffline`` is FastAPI with the Swagger UI and ReDoc JavaScript served by this app
(under ``{api_prefix}/static-offline-docs``) instead of from a CDN, so the docs also work
where browsers cannot reach the internet. A plain ``FastAPI(...)`` gets the same prefixes
right; only its docs assets come from the CDN.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi_offline import FastAPIOffline

app = FastAPIOffline(title="FluxLit hello API")

ITEMS: list[dict[str, Any]] = [
    {"id": 1, "name": "gateway", "language": "Rust"},
    {"id": 2, "name": "ui", "language": "Streamlit"},
    {"id": 3, "name": "api", "language": "FastAPI"},
]

# Headers a reverse proxy such as the FluxLit gateway is expected to set.
FORWARDED_HEADERS = (
    "x-forwarded-prefix",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "host",
)


@app.get("/hello")
def hello() -> dict[str, Any]:
    """A fixed greeting and a few items for the Streamlit page to display."""
    return {"message": "Hello from the FluxLit example API", "items": ITEMS}


@app.get("/request-info")
def request_info(request: Request) -> dict[str, Any]:
    """Echo what the API sees of the proxy: forwarding headers and the ASGI root_path
    (the API's public prefix given to uvicorn as ``--root-path``)."""
    info: dict[str, Any] = {name: request.headers.get(name) for name in FORWARDED_HEADERS}
    info["root_path"] = request.scope.get("root_path", "")
    return info
