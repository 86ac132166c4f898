#!/bin/sh
# Makes a throw-away certificate authority and a server certificate signed by it, for trying the
# TLS edge (compose.nginx-https.yaml) locally: RSA-2048, valid 1 day; the server certificate has
# CN=localhost, SAN localhost and 127.0.0.1, extendedKeyUsage serverAuth. Writes into DIR
# (default ./certs): cert.pem and key.pem (for the server), ca.pem (what clients trust:
# `curl --cacert`, `SSL_CERT_FILE` for `fluxlit doctor --live`). A separate CA is needed because
# strict TLS clients (rustls/webpki) refuse a self-signed CA certificate used as the server's.
# `cargo xtask smoke` uses it too. Not for production.
set -eu
dir="${1:-./certs}"
mkdir -p "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 \
    -subj "/CN=FluxLit throw-away test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$dir/key.pem" -out "$dir/server.csr" 2>/dev/null
printf '%s\n' \
    "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" > "$dir/server.ext"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
    -set_serial 1 -days 1 -extfile "$dir/server.ext" -out "$dir/cert.pem" 2>/dev/null
rm -f "$dir/server.csr" "$dir/server.ext" "$dir/ca-key.pem"
chmod 644 "$dir/cert.pem" "$dir/ca.pem"
chmod 600 "$dir/key.pem"
echo "wrote $dir/cert.pem and $dir/key.pem (server) and $dir/ca.pem (trust this one)"
