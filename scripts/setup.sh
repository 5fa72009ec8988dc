#!/usr/bin/env bash
# Creates .venv (if missing) and installs the four packages, editable, with the dev extras.
# Idempotent: re-running after no change to any pyproject.toml only checks a stamp.
#
# torch: on a CPU machine this pins the CPU build (torch==2.13.0). A GPU user installs the
# torch build for their CUDA into .venv first; the setup then keeps it:
#     python3 -m venv .venv && .venv/bin/pip install torch   # your CUDA build
#     bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python

stamp=.venv/.tdn-setup-stamp
want=$(cat packages/*/pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VPY" -c "import tdn_core" 2>/dev/null; then
  exit 0
fi

pip_install() { "$VPY" -m pip install --disable-pip-version-check -q "$@"; }

if ! "$VPY" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch 2.13.0 (CPU build)" >&2
  pip_install "torch==2.13.0"
fi
echo "setup: installing tdn-core, tdn-data, tdn-models, tdn-cli (editable) and dev tools" >&2
pip_install \
  -e "packages/tdn-core[e3nn,cueq,triton,test]" \
  -e "packages/tdn-data[generate,qm9,test]" \
  -e "packages/tdn-models[e3nn,test]" \
  -e packages/tdn-cli \
  "ruff==0.17.6" "pytest>=8" "asv==0.6.6"
echo "$want" > "$stamp"
