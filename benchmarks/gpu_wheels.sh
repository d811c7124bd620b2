#!/usr/bin/env bash
# Wheels for benchmarks/gpu_check.sh on a GPU machine without internet whose python3 has torch (CUDA),
# numpy, scipy, pandas, numba, h5py, onnx and friends but not the rest of sctranslator's dependencies.
# Run here (with internet) from the repository root; carry the .whl folder (about 20 MB) to that machine.
#   PYVER=3.12 bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> "$(git rev-parse --git-path info/exclude)"
# One version each (pins known to work together with numpy 2.x); --no-deps: name every missing one.
PACKAGES="zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 dask==2026.8.0 distributed==2026.8.0
partd==1.4.2 locket==1.0.0 tblib==3.2.2 zict==3.0.0 tornado==6.6.1 anndata==0.12.19 array-api-compat==1.16.0
legacy-api-wrap==1.5 natsort==8.4.0 session-info2==0.4.1 mudata==0.3.10"
python3 -m pip download --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $PACKAGES
ls -la .whl
