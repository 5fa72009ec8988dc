#!/usr/bin/env bash
# Smoke test of the asv suite (benchmarks/asv_suite): every benchmark runs once, in the
# current environment (.venv with the working tree's editable packages); nothing is saved.
# CI calls it so the benchmarks cannot rot: asv exits 2 when a benchmark fails, and so
# does this script (a skip, NotImplementedError in setup, is not a failure).
# The accuracy track trains for 2 steps instead of its budget (TDN_ASV_SMOKE=1).
# Extra arguments go to `asv run`, e.g. --bench edge_product.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TDN_ASV_SMOKE=1
PY=${PYTHON:-.venv/bin/python}
"$PY" -c "import asv" 2>/dev/null || "$PY" -m pip install -q "asv==0.6.6"
"$PY" -m asv machine --yes --machine asv-quick >/dev/null
exec "$PY" -m asv run --quick --dry-run --python=same --machine asv-quick --show-stderr "$@"
