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
if [ -x "$DEST/pkg/pytriton/tritonserver/bin/tritonserver" ] && [ "$(cat "$DEST/VERSION" 2>/dev/null)" = "$VERSION" ]; then
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
rm -rf "$DEST"
mv "$STAGING" "$DEST"
echo "installed tritonserver (nvidia-pytriton $VERSION) in $DEST"
