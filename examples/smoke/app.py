"""The Streamlit page of the FluxLit proxy smoke app (``cargo xtask smoke``).

It shows ``FluxLit Smoke`` and the marker that the smoke API returns, fetched through
``FLUXLIT_INTERNAL_API_BASE`` (the loopback URL of the API that FluxLit gives to the
Streamlit process), so a WebSocket client that receives both has seen the UI, the API and
the gateway work together. The file uploader lets the smoke test upload a file through each
edge proxy with Streamlit's XSRF protection on.
"""

from __future__ import annotations

import json
import os
import urllib.request

import streamlit as st

ENV_VAR = "FLUXLIT_INTERNAL_API_BASE"

st.title("FluxLit Smoke")

api_base = os.environ.get(ENV_VAR)
if not api_base:
    st.error(f"{ENV_VAR} is not set: run this app through `fluxlit run`.")
else:
    url = api_base.rstrip("/") + "/smoke"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            data = json.load(response)
    except Exception as exc:  # noqa: BLE001 - any failure is shown on the page
        st.error(f"Could not call the API at {url}: {type(exc).__name__}: {exc}")
    else:
        st.success(f"API marker: {data.get('marker', '')}")

uploaded = st.file_uploader("Upload a file")
if uploaded is not None:
    st.write(f"Uploaded {uploaded.name}: {uploaded.size} bytes")
