"""The HTTP API of the FluxLit proxy smoke app (``cargo xtask smoke``).

FluxLit starts it with ``python -m uvicorn api:app --host 127.0.0.1 --port {port}`` and
mounts it under ``{root_path}/api``; the mount is stripped before a request reaches these
routes. Each route answers what the smoke test needs to see through every edge proxy:

- ``GET /smoke``: a fixed marker, also shown by the Streamlit page;
- ``GET /request-id``: the ``X-Request-ID`` this API received (FluxLit sends one on every hop);
- ``GET /scheme``: the ``X-Forwarded-Proto``, ``-Host``, ``-Prefix``, ``-Port`` and ``-For``
  and the RFC 7239 ``Forwarded`` header this API received (every line of each, joined with
  ``", "``; null when absent), that is, what FluxLit tells the API about the public URL
  (``https`` behind a TLS edge) and the client;
- ``GET|POST /probe/{token}/{name}``: names itself (``token``, ``name``, ``method`` and the
  number of body bytes received), so that a check can tell which request a response answers;
- ``GET /seen/{token}``: every request this API received whose raw path or query string
  contains ``token`` (method, raw path, query string), oldest first. The smoke's
  ``smuggling`` check puts a random token in its paths and asks whether a request hidden in a
  body ever arrived; ``dot-segments`` puts one in the query string of each probe and asks
  whether the API answered it. Requests to ``/seen/`` are not recorded; the record keeps the
  last 2000 requests.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from fastapi import FastAPI, Request

app = FastAPI(title="FluxLit smoke API")

MARKER = "fluxlit_smoke_ok"

# Every request this API received, oldest first (bounded): see ``GET /seen/{token}``.
SEEN: deque[dict[str, str]] = deque(maxlen=2000)


@app.middleware("http")
async def record(request: Request, call_next: Any) -> Any:
    """Records the method, raw path and query string of every request (before routing, so
    that requests to unknown routes are recorded too)."""
    raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
    path = raw_path.decode("latin-1")
    if not path.startswith("/seen/"):
        SEEN.append(
            {
                "method": request.method,
                "path": path,
                "query": request.scope.get("query_string", b"").decode("latin-1"),
            }
        )
    return await call_next(request)


def _all(request: Request, name: str) -> str | None:
    """Every line of header ``name`` joined with ``", "`` (null when absent)."""
    values = request.headers.getlist(name)
    return ", ".join(values) if values else None


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
    """The forwarded fields as this API saw them (null when absent)."""
    return {
        "scheme": _all(request, "x-forwarded-proto"),
        "host": _all(request, "x-forwarded-host"),
        "prefix": _all(request, "x-forwarded-prefix"),
        "port": _all(request, "x-forwarded-port"),
        "for": _all(request, "x-forwarded-for"),
        "forwarded": _all(request, "forwarded"),
    }


@app.api_route("/probe/{token}/{name}", methods=["GET", "POST"])
async def probe(token: str, name: str, request: Request) -> dict[str, Any]:
    """Names the request this answers."""
    body = await request.body()
    return {"token": token, "name": name, "method": request.method, "body_bytes": len(body)}


@app.get("/seen/{token}")
def seen(token: str) -> dict[str, Any]:
    """The recorded requests whose raw path or query string contains ``token``."""
    return {
        "token": token,
        "requests": [r for r in SEEN if token in r["path"] or token in r["query"]],
    }
