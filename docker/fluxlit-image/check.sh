#!/usr/bin/env bash
# Builds and runs the container image `fluxlit build` describes, for examples/hello, with
# Debian's podman and no image registry: the base is a Debian root filesystem made by
# mmdebstrap from Debian's packages and imported as a local image, substituted for the
# digest-pinned python:3.12-slim through the Dockerfile's PYTHON_IMAGE build argument.
# Then /api/readyz must answer 200 on loopback, the health check must pass, the app must run
# as UID 1000 under tini, and `podman stop` (SIGTERM) must end it with exit code 0.
# docs/deployment.md, "Container image", explains it; it is not part of `cargo xtask ci`
# (it downloads Debian and PyPI packages and takes minutes: see the timings it prints).
#
# Usage (as root, from anywhere in the repository):  docker/fluxlit-image/check.sh
#   FLUXLIT_WHEEL=path/to/fluxlit_rs-*.whl  use this wheel (default: the one `cargo xtask wheel`
#                                           left in $CARGO_TARGET_DIR/wheel/dist, built when missing)
#   KEEP=1                                  leave the container running and print its URL
#
# Work files go to $CARGO_TARGET_DIR/image-check (default target/image-check); the base root
# filesystem is reused when it exists there (delete base.tar to make it anew).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
case $target in /*) ;; *) target=$root/$target ;; esac
work=$target/image-check
base_image=localhost/fluxlit-debian-base:bookworm
image=localhost/fluxlit-hello:check
name=fluxlit-hello-check
port=${PORT:-18080}
mkdir -p "$work"

t0=$SECONDS
step() { echo "image-check: [$((SECONDS - t0)) s] $*" >&2; }

# 1. Tools, from Debian's packages. runc: see step 6.
missing=()
for p in podman runc iptables mmdebstrap; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# 2. The base image: Debian bookworm with python3 (+ venv), tini, apt and useradd, as the
# Dockerfile needs from its base. The host's own CA certificates and pip configuration go in
# too, so pip and apt inside the build reach the package registries the way the host does.
if [ ! -s "$work/base.tar" ]; then
    step "mmdebstrap: Debian bookworm root filesystem"
    mmdebstrap --variant=minbase --format=tar \
        --include=python3,python3-venv,tini,ca-certificates,passwd \
        --customize-hook='for c in /usr/local/share/ca-certificates/*.crt; do [ -f "$c" ] && cp "$c" "$1/usr/local/share/ca-certificates/"; done; chroot "$1" update-ca-certificates >/dev/null' \
        --customize-hook='if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$1/etc/pip.conf"; fi' \
        bookworm "$work/base.tar.part"
    mv "$work/base.tar.part" "$work/base.tar"
fi
step "podman import -> $base_image"
podman import --quiet "$work/base.tar" "$base_image" >/dev/null

# 3. The FluxLit wheel: FluxLit is on neither PyPI nor crates.io.
wheel=${FLUXLIT_WHEEL:-}
if [ -z "$wheel" ]; then
    wheel=$(ls "$target"/wheel/dist/fluxlit_rs-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$wheel" ]; then
        step "no wheel in $target/wheel/dist: cargo xtask wheel"
        (cd "$root" && cargo xtask wheel)
        wheel=$(ls "$target"/wheel/dist/fluxlit_rs-*.whl | head -n 1)
    fi
fi
step "wheel: $wheel"

# 4. The build context: a copy of examples/hello, the files `fluxlit build` writes, the wheel.
(cd "$root" && cargo build --locked -q -p fluxlit-cli)
ctx=$work/hello
rm -rf "$ctx"
mkdir -p "$ctx/wheels"
cp "$root"/examples/hello/{app.py,api.py,fluxlit.toml,requirements.txt} "$ctx/"
cp "$wheel" "$ctx/wheels/"
(cd "$ctx" && env -u FLUXLIT_TARGET -u FLUXLIT_CONFIG -u FLUXLIT_GATEWAY_PORT "$target/debug/fluxlit" build)

# 5. Build. chroot isolation: RUN steps run in a chroot of the image's root filesystem with
# the host's network (this machine's OCI runtimes cannot run build containers, see step 6).
step "podman build (PYTHON_IMAGE=$base_image)"
podman build --quiet --isolation chroot --format docker \
    --build-arg "PYTHON_IMAGE=$base_image" -t "$image" "$ctx" >/dev/null
step "built $image"

# 6. Run. Where the OCI runtime refuses to set the container's resource limits (some
# sandboxed VMs refuse setrlimit(RLIMIT_NPROC) there: "error setting rlimit type 6: operation
# not permitted"), run it through a wrapper that drops process.rlimits from the OCI spec; the
# error is printed first.
podman rm -f "$name" >/dev/null 2>&1 || true
runtime=()
if ! probe=$(podman run --rm --network none --health-interval disable --entrypoint /bin/true "$image" 2>&1); then
    echo "image-check: podman run fails here as it is:" >&2
    echo "$probe" >&2
    wrapper=$work/runtime/runc
    mkdir -p "$(dirname "$wrapper")"
    cat >"$wrapper" <<'EOF'
#!/bin/sh
# runc with the OCI spec's process.rlimits removed (docker/fluxlit-image/check.sh, step 6).
# `create` reads the bundle's config.json, `exec` a process.json (podman exec, healthcheck run).
prev=
for a in "$@"; do
    case "$prev" in
    --bundle | -b) spec=$a/config.json ;;
    --process | -p) spec=$a ;;
    esac
    prev=$a
done
if [ -n "${spec:-}" ] && [ -f "$spec" ]; then
    python3 -c 'import json, sys
p = sys.argv[1]
with open(p) as f:
    spec = json.load(f)
spec.pop("rlimits", None)
spec.get("process", {}).pop("rlimits", None)
with open(p, "w") as f:
    json.dump(spec, f)' "$spec"
fi
exec /usr/bin/runc "$@"
EOF
    chmod +x "$wrapper"
    runtime=(--runtime "$wrapper")
    echo "image-check: using $wrapper (runc without rlimits)" >&2
fi
# --health-interval disable: no periodic runs (podman schedules them with systemd timers,
# which a machine without systemd lacks); step 8 runs the image's HEALTHCHECK once.
podman "${runtime[@]}" run -d --name "$name" --health-interval disable \
    -p "127.0.0.1:$port:8000" "$image" >/dev/null
cleanup() {
    if [ "${KEEP:-}" != 1 ]; then podman "${runtime[@]}" rm -f "$name" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
step "started $name on 127.0.0.1:$port"

# 7. Ready within 180 s (Streamlit's first start in a fresh container takes a few seconds).
ready=
for _ in $(seq 1 180); do
    code=$(python3 -c 'import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).status)
except Exception as e:
    print(getattr(e, "code", "none"))' "http://127.0.0.1:$port/api/readyz")
    if [ "$code" = 200 ]; then ready=1; break; fi
    if [ "$(podman inspect --format '{{.State.Running}}' "$name")" != true ]; then break; fi
    sleep 1
done
if [ -z "$ready" ]; then
    podman logs "$name" >&2 || true
    echo "image-check: FAIL: /api/readyz did not answer 200 (last: $code)" >&2
    exit 1
fi
step "GET /api/readyz -> 200"
for path in / /api/hello; do
    code=$(python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).status)' "http://127.0.0.1:$port$path")
    [ "$code" = 200 ] || { echo "image-check: FAIL: GET $path -> $code" >&2; exit 1; }
    step "GET $path -> 200"
done

# 8. The image's HEALTHCHECK, the user and PID 1.
if ! podman "${runtime[@]}" healthcheck run "$name"; then
    echo "image-check: FAIL: podman healthcheck run: not healthy" >&2
    exit 1
fi
step "HEALTHCHECK: healthy"
# The same check against a port nothing listens on must fail: it is not vacuous.
mapfile -t health < <(podman image inspect --format '{{json .Config.Healthcheck.Test}}' "$image" |
    python3 -c 'import json, sys; t = json.load(sys.stdin); assert t[0] == "CMD", t; print("\n".join(t[1:]))')
if podman "${runtime[@]}" exec -e FLUXLIT_GATEWAY_PORT=1 "$name" "${health[@]}" >/dev/null 2>&1; then
    echo "image-check: FAIL: the HEALTHCHECK command passes with nothing listening" >&2
    exit 1
fi
step "HEALTHCHECK command fails against a closed port, as it must"
uid=$(podman "${runtime[@]}" exec "$name" id -u)
[ "$uid" = 1000 ] || { echo "image-check: FAIL: runs as UID $uid" >&2; exit 1; }
pid1=$(podman "${runtime[@]}" exec "$name" cat /proc/1/cmdline | tr '\0' ' ')
case $pid1 in /usr/bin/tini\ --\ fluxlit\ run\ app.py*) ;; *) echo "image-check: FAIL: PID 1 is $pid1" >&2; exit 1 ;; esac
step "UID 1000, PID 1: $pid1"

if [ "${KEEP:-}" = 1 ]; then
    echo "image-check: running at http://127.0.0.1:$port/ (podman rm -f $name to stop)" >&2
    exit 0
fi

# 9. SIGTERM (podman stop) stops FluxLit and its sidecars in order: exit code 0.
podman "${runtime[@]}" stop -t 30 "$name" >/dev/null
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
[ "$exit_code" = 0 ] || { podman logs "$name" >&2; echo "image-check: FAIL: exit code $exit_code after SIGTERM" >&2; exit 1; }
step "podman stop: exit code 0"
step "PASS"
