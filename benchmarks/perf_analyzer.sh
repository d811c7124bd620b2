#!/usr/bin/env bash
# Triton's perf_analyzer on an exported repository of MODEL (demo, or a checkpoint / bundle path),
# beside in-process onnxruntime on the same cells: benchmarks/perf_analyzer.py says what it measures.
#   benchmarks/perf_analyzer.sh demo [--cells-per-request 8] [--concurrency 1 2 4 8] [--threads N]
# Installs what it needs first: tritonserver (scripts/install_tritonserver.sh) and perf_analyzer from
# the tritonclient 2.51.0 wheel (scripts/install_perf_analyzer.sh) into $VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
    echo "usage: benchmarks/perf_analyzer.sh MODEL [options of benchmarks/perf_analyzer.py]" >&2
    exit 2
fi
VENV="${VENV:-.venv}"
export VENV
scripts/install_tritonserver.sh >&2
scripts/install_perf_analyzer.sh >&2  # into $PERF_ANALYZER_DIR when set
exec "$VENV/bin/python" benchmarks/perf_analyzer.py "$@"
