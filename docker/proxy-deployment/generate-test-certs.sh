#!/bin/sh
# Makes a self-signed certificate for trying the TLS edge (compose.nginx-https.yaml) locally:
# RSA-2048, valid 1 day, CN=localhost, SAN localhost and 127.0.0.1, written as cert.pem and
# key.pem into DIR (default ./certs). `cargo xtask smoke` uses it too. Not for production.
set -eu
dir="${1:-./certs}"
mkdir -p "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 \
    -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
chmod 644 "$dir/cert.pem"
chmod 600 "$dir/key.pem"
echo "wrote $dir/cert.pem and $dir/key.pem"
