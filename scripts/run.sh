#!/usr/bin/env bash
# Sets up (idempotent) and runs the main job: a short benchmark of every usable
# tensor-product backend on this machine (forward+backward, L = 1..4).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python benchmarks/bench_tp.py --lmax 1 2 3 4 --edges 2000 --repeats 5 "$@"
