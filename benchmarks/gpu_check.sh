#!/usr/bin/env bash
# The GPU check, in one command on a machine with a GPU and no internet (see docs/howto/gpu.md):
#   bash benchmarks/gpu_check.sh            # full-size model on the GPU, one markdown table, < 8 minutes
#   bash benchmarks/gpu_check.sh --dry-run  # the same code paths on CPU with a narrow model
# It checks what the machine has (torch with CUDA, the package's dependencies) and says what is missing
# instead of trying the network. Missing Python packages can travel as wheels in ./.whl (made on a
# machine with internet by benchmarks/gpu_wheels.sh); they are installed into a private folder.
# The table also goes to $OUT/gpu_check.md when OUT is set, else to ./gpu_check.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUDGET=${SCT_GPU_CHECK_BUDGET:-420}  # seconds for the measurements; the whole script stays under 8 minutes
export PYTHONUNBUFFERED=1 ORT_DISABLE_TELEMETRY=1
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT  # the temporary folder goes, however the check ends
export NUMBA_CACHE_DIR="$TMP/numba" SCTRANSLATOR_CACHE="$TMP/cache" MPLCONFIGDIR="$TMP/mpl" XDG_CACHE_HOME="$TMP/xdg"

echo "== environment"
"$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda, '| available', torch.cuda.is_available())" \
  || { echo "gpu_check: python3 has no torch; install a CUDA build of torch (pip install torch) and run again"; exit 2; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

missing() {
  "$PY" - <<'PYEOF'
import importlib.util
need = ["numpy", "pandas", "scipy", "numba", "zarr", "dask", "anndata", "mudata", "h5py", "safetensors", "onnx",
        "onnxscript", "tqdm", "yaml", "distributed"]
print(" ".join(name for name in need if importlib.util.find_spec(name) is None))
PYEOF
}
MISSING=$(missing)
if [ -n "$MISSING" ]; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    echo "== installing carried wheels for: $MISSING"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$TMP/site" .whl/*.whl \
      || { echo "gpu_check: installing the wheels in .whl failed"; exit 2; }
    export PYTHONPATH="$TMP/site${PYTHONPATH:+:$PYTHONPATH}"
    MISSING=$(missing)
  fi
fi
if [ -n "$MISSING" ]; then
  echo "gpu_check: missing Python packages: $MISSING"
  echo "  with internet: pip install -e '.[distributed]'; without: run benchmarks/gpu_wheels.sh on a machine with"
  echo "  internet and bring the .whl folder along"
  exit 2
fi
# The package from this checkout (no install needed; nothing is fetched).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import sctranslator, sys; print('sctranslator', sctranslator.__version__, 'from', sctranslator.__file__)" || exit 2

echo "== benchmark (budget ${BUDGET} s)"
DEST=${OUT:-.}/gpu_check.md
timeout --kill-after=10 $((BUDGET + 40)) "$PY" benchmarks/bench_gpu.py --budget-s "$BUDGET" --out "$DEST" "$@"
status=$?
[ $status -eq 124 ] && echo "gpu_check: the benchmark ran past its time limit and was stopped"
rm -rf "$TMP"
exit $status
