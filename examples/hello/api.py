"""The HTTP API half of the FluxLit hello example.

FluxLit starts this with ``python -m uvicorn api:app --host 127.0.0.1 --port {port}``
and mounts it under ``/api``. The gateway strips the mount prefix before forwarding,
so the routes here are ``/hello`` and ``/request-info`` (reachable publicly as
``/api/hello`` and ``/api/request-info``). The public prefix is announced in the
``X-Forwarded-Prefix`` header instead of being configured here, which is why this
app does not set FastAPI's ``root_path``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

app = FastAPI(title="FluxLit hello API")

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
    """Echo what the API sees of the proxy: forwarding headers and the ASGI root_path."""
    info: dict[str, Any] = {name: request.headers.get(name) for name in FORWARDED_HEADERS}
    info["root_path"] = request.scope.get("root_path", "")
    return info
