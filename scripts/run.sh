#!/usr/bin/env bash
# Sets up (idempotent) and runs the main job on this machine (a few minutes on a 2-core
# CPU):
#   1. `tdn bench`: every usable tensor-product backend, forward, forward+backward and
#      double backward,
#      L = 1..4, with errors and equivariance checks (table + runs/<stamp>/bench.png);
#   2. `tdn train`: a small TDN on the embedded dataset (cp_eager backend);
#   3. `tdn eval`: its energy/force MAE on the held-out test molecules, with a parity plot.
# Every run writes into a new folder runs/main-<UTC time>, so nothing earlier is replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="runs/main-$(date -u +%Y%m%dT%H%M%S)"
mkdir -p "$out"
tdn=.venv/bin/tdn
$tdn bench --backend all --lmax 1 2 3 4 --edges 2000 --repeats 5 \
  --json "$out/bench.json" --plot "$out/bench.png"
$tdn train name=main output_dir="$out/train"
$tdn eval "$out/train/checkpoints/best.pt" embedded --split test --max-samples 1000 \
  --plot "$out/parity.png" --json "$out/eval.json"
echo "main job: outputs in $out (bench.png, train/loss_curve.png, parity.png)"
