#!/usr/bin/env bash
# Install a local tritonserver (Python backend only) for the Triton tests, benchmarks and `sctranslator serve`.
#
# NVIDIA ships tritonserver 2.51 inside the nvidia-pytriton wheel. pytriton itself pins numpy<2,
# so the wheel is unpacked with --no-deps into <venv>/tritonserver/pkg (never imported, only its
# binary is run) and the Python-backend stub for the venv's Python version is put where the
# backend looks for it. sctranslator.export.triton_server finds it there and sets up its
# environment (LD_LIBRARY_PATH with this Python's libpython and the bundled libraries, PATH).
# Idempotent: does nothing when the same version is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="$VENV/bin/python"
VERSION="${PYTRITON_VERSION:-0.7.0}"
DEST="$VENV/tritonserver"

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "install_tritonserver: the pytriton tritonserver build is for Linux x86_64 only; skipped" >&2
    exit 0
fi
# The stub is compiled against numpy 1: under numpy 2 its BYTES inputs (the names-in model's gene and
# protein names) arrive as copies of their first byte. stub-env is a virtualenv layout whose python is
# this venv's, with numpy<2 in its own site-packages and this venv's site-packages after it;
# sctranslator.export.triton_server.server_env puts its bin/ first on the stubs' PATH.
# $1: where the stub-env is built now; $2: where it will live (the .pth names that final place).
install_stub_env() {
    local env="$1/stub-env" final="${2:-$1}/stub-env"
    local site_rel
    site_rel="$("$PYTHON" -c 'import sys; print(f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages")')"
    # Done when numpy is there and the .pth names a folder that exists (not a staging one).
    if [ -d "$env/site/numpy" ] && [ -d "$(head -n 1 "$env/$site_rel/stub.pth" 2>/dev/null)" ]; then return; fi
    rm -rf "$env"
    mkdir -p "$env/bin" "$env/$site_rel"
    ln -s "$(cd "$VENV" && pwd)/bin/python" "$env/bin/python"
    ln -s python "$env/bin/python3"
    sed -e '/^command/d' "$VENV/pyvenv.cfg" > "$env/pyvenv.cfg"
    "$PYTHON" -m pip install -q --no-deps --no-compile --target "$env/site.partial" "numpy>=1.26,<2"
    mv "$env/site.partial" "$env/site"
    # numpy<2 first, then this venv's site-packages with its .pth files (editable installs).
    mkdir -p "$(dirname "$final")"
    printf '%s\nimport site; site.addsitedir(%s)\n' "$(cd "$(dirname "$final")" && pwd)/stub-env/site" \
        "'$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')'" > "$env/$site_rel/stub.pth"
}
if [ -x "$DEST/pkg/pytriton/tritonserver/bin/tritonserver" ] && [ "$(cat "$DEST/VERSION" 2>/dev/null)" = "$VERSION" ]; then
    install_stub_env "$DEST"
    echo "tritonserver from nvidia-pytriton $VERSION already installed in $DEST"
    exit 0
fi

STAGING="$DEST.partial"
rm -rf "$STAGING"
"$PYTHON" -m pip install -q --no-deps --no-compile --target "$STAGING/pkg" "nvidia-pytriton==$VERSION"
SERVER="$STAGING/pkg/pytriton/tritonserver"
PY_VERSION="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
STUB="$SERVER/python_backend_stubs/$PY_VERSION/triton_python_backend_stub"
if [ ! -f "$STUB" ]; then
    echo "install_tritonserver: nvidia-pytriton $VERSION has no Python-backend stub for Python $PY_VERSION" >&2
    exit 1
fi
cp "$STUB" "$SERVER/backends/python/triton_python_backend_stub"
chmod +x "$SERVER/bin/tritonserver" "$SERVER/backends/python/triton_python_backend_stub"
echo "$VERSION" > "$STAGING/VERSION"
install_stub_env "$STAGING" "$DEST"
rm -rf "$DEST"
mv "$STAGING" "$DEST"
echo "installed tritonserver (nvidia-pytriton $VERSION) in $DEST"
