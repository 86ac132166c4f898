"""The HTTP API of the FluxLit proxy smoke app (``cargo xtask smoke``).

FluxLit starts it with ``python -m uvicorn api:app --host 127.0.0.1 --port {port}`` and
mounts it under ``{root_path}/api``; the mount is stripped before a request reaches these
routes. Each route answers what the smoke test needs to see through every edge proxy:

- ``GET /smoke``: a fixed marker, also shown by the Streamlit page;
- ``GET /request-id``: the ``X-Request-ID`` this API received (FluxLit sends one on every hop);
- ``GET /scheme``: the ``X-Forwarded-Proto``, ``-Host`` and ``-Prefix`` this API received, that
  is, what FluxLit tells the API about the public URL (``https`` behind a TLS edge).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request

app = FastAPI(title="FluxLit smoke API")

MARKER = "fluxlit_smoke_ok"


@app.get("/smoke")
def smoke() -> dict[str, Any]:
    """A fixed status and marker."""
    return {"status": "ok", "marker": MARKER}


@app.get("/request-id")
def request_id(request: Request) -> dict[str, Any]:
    """The X-Request-ID header as this API saw it (null when absent)."""
    return {"request_id": request.headers.get("x-request-id")}


@app.get("/scheme")
def scheme(request: Request) -> dict[str, Any]:
    """The forwarded scheme, host and prefix as this API saw them (null when absent)."""
    return {
        "scheme": request.headers.get("x-forwarded-proto"),
        "host": request.headers.get("x-forwarded-host"),
        "prefix": request.headers.get("x-forwarded-prefix"),
    }
