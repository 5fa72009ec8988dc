#!/usr/bin/env bash
# The one check to run on a GPU machine (about 8 minutes on one H100). It sets up (a CUDA
# torch already installed is kept), runs the GPU tests (cp_triton forward, backward and
# double backward against cp_eager, the fused conv, sparse's Triton kernel, compile),
# times the tensor products (cp_triton cp_eager path_shared cueq e3nn, E = 200k, C = 128,
# L = 1..6) and a TDN training step, checks every product's accuracy, and writes it all
# under one folder named after the card. Send us that folder's JSON.
#
#   bash scripts/gpu_check.sh                 # on the GPU machine -> gpu_check-<card>/
#   bash scripts/gpu_check.sh --dry-run       # the same steps, tiny, on a CPU (Triton's
#                                             # interpreter): checks the script itself
#   bash scripts/gpu_check.sh --out DIR       # another output folder
#
# It fails loudly (non-zero exit, the reason on stderr) on any failed test, on a product
# whose output or equivariance error exceeds its bound, or on a missing result.
set -euo pipefail
cd "$(dirname "$0")/.."

dry=0
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --out) out=${2:?--out needs a folder}; shift ;;
    -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# a CUDA torch installed system-wide is seen by the venv, and setup.sh then keeps it
[ -x .venv/bin/python ] || python3 -m venv --system-site-packages .venv
bash scripts/setup.sh
PY=.venv/bin/python
TDN=.venv/bin/tdn

if [ "$dry" = 1 ]; then
  export TRITON_INTERPRET=1 # before triton's first import: kernels run on the CPU
  device=cpu edges=64 channels=4 lmax="1 2" repeats=1 molecules=2 model_lmax="1"
  tests=(-m "not slow" -k "forward_and_backward or double_backward or conv_matches or layer_matches")
else
  if ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: torch sees no CUDA device here; on a CPU, run it with --dry-run" >&2
    exit 1
  fi
  device=cuda edges=200000 channels=128 lmax="1 2 3 4 5 6" repeats=7 molecules=16 model_lmax="1 2"
  tests=()
fi
card=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu-dry-run')")
out=${out:-gpu_check-$(echo "$card" | tr -c 'A-Za-z0-9._-' '_')}
mkdir -p "$out"
echo "gpu_check: $card -> $out/" >&2

"$PY" - "$out/machine.json" <<'EOF'
import json, platform, subprocess, sys, torch
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
info = {"card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "commit": commit or None}
json.dump(info, open(sys.argv[1], "w"), indent=1)
EOF

echo "gpu_check: 1/3 GPU tests" >&2
"$PY" -m pytest -q -p no:cacheprovider "${tests[@]}" \
  packages/tdn-core/tests/backends/test_cp_triton.py \
  packages/tdn-core/tests/backends/test_sparse_triton.py \
  $([ "$dry" = 1 ] || echo packages/tdn-models/tests/test_compile.py) \
  --junitxml "$out/tests.xml"

echo "gpu_check: 2/3 tensor products, E=$edges C=$channels L=$lmax" >&2
# shellcheck disable=SC2086  # the L list is meant to split
"$TDN" bench --backend cp_triton cp_eager path_shared cueq e3nn --device "$device" \
  --edges "$edges" --channels "$channels" --lmax $lmax --repeats "$repeats" \
  --json "$out/bench_tp.json" > "$out/bench_tp.txt"

echo "gpu_check: 3/3 TDN training step and inference" >&2
# shellcheck disable=SC2086
"$TDN" bench --model --backend cp_triton cp_eager --device "$device" --lmax $model_lmax \
  --molecules "$molecules" --repeats "$repeats" --json "$out/bench_model.json" > "$out/bench_model.txt"

"$PY" - "$out" "$dry" <<'EOF'
"""Every product ran (and on a GPU was timed), each as accurate as its factors certify."""
import json, sys
from pathlib import Path

out, dry = Path(sys.argv[1]), sys.argv[2] == "1"
rows = json.loads((out / "bench_tp.json").read_text())["results"]
bad = []
for r in rows:
    exact = not r.get("rank")
    err, eqv = r.get("output_rel_error"), r.get("equivariance_error")
    if err is None or eqv is None:
        bad.append(f"{r['backend']} L={r['L']}: no accuracy check")
    elif exact and max(err, eqv) > 1e-9:
        bad.append(f"{r['backend']} L={r['L']}: exact, yet error {err:.2e}, equivariance {eqv:.2e}")
    elif not exact and max(err, eqv) > r["bound"]:
        bad.append(f"{r['backend']} L={r['L']}: error {err:.3e}, equivariance {eqv:.3e}, "
                   f"beyond the certified bound {r['bound']:.3e}")
    if not dry and "forward_ms" not in r and r["backend"] in ("cp_triton", "cp_eager"):
        bad.append(f"{r['backend']} L={r['L']}: not timed")
if not any(r["backend"] == "cp_triton" for r in rows):
    bad.append("cp_triton: no result")
if bad:
    sys.exit("gpu_check: FAILED\n  " + "\n  ".join(bad))
print(f"gpu_check: passed ({len(rows)} products checked); send {out}/*.json")
EOF
