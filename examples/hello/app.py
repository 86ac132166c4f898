"""The Streamlit half of the FluxLit hello example.

The page calls the example API through ``FLUXLIT_INTERNAL_API_BASE``, the loopback
URL of the API that FluxLit gives to the Streamlit process (for example
``http://127.0.0.1:8000/api``), and shows what it answers. It also has a file
uploader, which exercises Streamlit's upload endpoint through the gateway.
"""

from __future__ import annotations

import json
import os
import urllib.request

import streamlit as st

ENV_VAR = "FLUXLIT_INTERNAL_API_BASE"

st.title("FluxLit hello")


def fetch_json(url: str) -> dict:
    """GET a URL and decode its JSON body."""
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


api_base = os.environ.get(ENV_VAR)
if not api_base:
    st.error(
        f"{ENV_VAR} is not set, so the API cannot be reached. "
        "Run this example through FluxLit (`cargo xtask example`), which sets it."
    )
else:
    hello_url = api_base.rstrip("/") + "/hello"
    try:
        data = fetch_json(hello_url)
    except Exception as exc:  # noqa: BLE001 - any failure is shown on the page
        st.error(
            f"Could not call the API at {hello_url} "
            f"({ENV_VAR}={api_base}): {type(exc).__name__}: {exc}"
        )
    else:
        st.success(data.get("message", ""))
        st.table(data.get("items", []))

uploaded = st.file_uploader("Upload a file")
if uploaded is not None:
    st.write(f"Uploaded {uploaded.name}: {uploaded.size} bytes")
