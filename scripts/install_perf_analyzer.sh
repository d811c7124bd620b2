#!/usr/bin/env bash
# Install Triton's perf_analyzer (matching the tritonserver 2.51 that install_tritonserver.sh installs)
# into $PERF_ANALYZER_DIR (default <venv>/perf_analyzer), beside the venv's own tritonclient and never over it.
#
# `pip install perf-analyzer` gives a placeholder; the binary ships inside the tritonclient==2.51.0
# wheel (tritonclient-2.51.0.data/data/bin/perf_analyzer). It needs two libraries to start:
#   - libb64.so.0d (Debian's libb64-0d): the system's when installed, else the .deb unpacked here;
#   - libcudart.so.12 (the nvidia-cuda-runtime-cu12 wheel), even on a machine without a GPU.
# The result is $DEST/bin/perf_analyzer, a wrapper that sets LD_LIBRARY_PATH.
# Idempotent: does nothing when the same version is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="$VENV/bin/python"
VERSION="${TRITONCLIENT_VERSION:-2.51.0}"
DEST="${PERF_ANALYZER_DIR:-$VENV/perf_analyzer}"

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "install_perf_analyzer: the tritonclient wheel's perf_analyzer is for Linux x86_64 only; skipped" >&2
    exit 0
fi
if [ -x "$DEST/bin/perf_analyzer" ] && [ "$(cat "$DEST/VERSION" 2>/dev/null)" = "$VERSION" ]; then
    echo "perf_analyzer from tritonclient $VERSION already installed in $DEST"
    exit 0
fi

STAGING="$DEST.partial"
rm -rf "$STAGING"
mkdir -p "$STAGING/wheels" "$STAGING/lib" "$STAGING/bin" "$STAGING/libexec"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --dest "$STAGING/wheels" \
    "tritonclient==$VERSION" "nvidia-cuda-runtime-cu12>=12,<13"
# Only two files are taken from the wheels: the binary and libcudart.
"$PYTHON" - "$STAGING" "$VERSION" <<'PY'
import glob, os, sys, zipfile
staging, version = sys.argv[1], sys.argv[2]
wanted = {f"tritonclient-{version}.data/data/bin/perf_analyzer": "libexec/perf_analyzer",
          "nvidia/cuda_runtime/lib/libcudart.so.12": "lib/libcudart.so.12"}
for wheel in glob.glob(os.path.join(staging, "wheels", "*.whl")):
    with zipfile.ZipFile(wheel) as archive:
        for name in set(archive.namelist()) & set(wanted):
            with archive.open(name) as source, open(os.path.join(staging, wanted.pop(name)), "wb") as target:
                target.write(source.read())
if wanted:
    sys.exit(f"install_perf_analyzer: not found in the downloaded wheels: {sorted(wanted)}")
PY
chmod +x "$STAGING/libexec/perf_analyzer"

if ! ldconfig -p 2>/dev/null | grep -q "libb64.so.0d"; then
    # Debian's package, unpacked here rather than installed system-wide.
    (cd "$STAGING/wheels" && { apt-get download libb64-0d >/dev/null 2>&1 \
        || { [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null && apt-get download libb64-0d >/dev/null; }; }) || {
        echo "install_perf_analyzer: could not get Debian's libb64-0d (apt-get download libb64-0d failed)" >&2
        exit 1
    }
    dpkg-deb -x "$STAGING"/wheels/libb64-0d_*.deb "$STAGING/deb"
    cp "$STAGING"/deb/usr/lib/*/libb64.so.0d* "$STAGING/lib/"
    rm -rf "$STAGING/deb"
fi
rm -rf "$STAGING/wheels"

cat > "$STAGING/bin/perf_analyzer" <<'SH'
#!/usr/bin/env bash
# perf_analyzer from the tritonclient wheel, with the libraries it needs (install_perf_analyzer.sh).
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LD_LIBRARY_PATH="$HERE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$HERE/libexec/perf_analyzer" "$@"
SH
chmod +x "$STAGING/bin/perf_analyzer"
"$STAGING/bin/perf_analyzer" --version >/dev/null 2>&1 || "$STAGING/bin/perf_analyzer" --help >/dev/null 2>&1 || {
    echo "install_perf_analyzer: the installed perf_analyzer does not start:" >&2
    "$STAGING/bin/perf_analyzer" --help 2>&1 | head -5 >&2
    exit 1
}
echo "$VERSION" > "$STAGING/VERSION"
rm -rf "$DEST"
mv "$STAGING" "$DEST"
echo "installed perf_analyzer (tritonclient $VERSION) in $DEST"
