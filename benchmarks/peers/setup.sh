#!/usr/bin/env bash
# Creates the peers' virtualenvs (if missing) and installs MACE and NequIP into them.
# Idempotent: re-running after no change to this file only checks a stamp per venv.
#
# Two venvs, not one: mace-torch 0.3.16 pins e3nn==0.4.4 and nequip 0.19.1 needs
# e3nn>=0.6,<0.7, so neither can share an environment with the other (nor with the
# project's .venv, which has e3nn 0.5+ for the conformance tests). The harness needs
# nothing of this project inside them: score.py and the trainers use numpy, ASE and
# the peer package only; the data export runs in the project's .venv.
#
#     bash benchmarks/peers/setup.sh          # both
#     bash benchmarks/peers/setup.sh mace     # one
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
TORCH=${TDN_PEERS_TORCH:-torch==2.13.0}   # the CPU build on a CPU machine
declare -A PKGS=(
  [mace]="mace-torch==0.3.16"
  [nequip]="nequip==0.19.1"
)
want_all=$(sha256sum setup.sh | cut -d' ' -f1)

setup_one() {
  local name=$1 venv=".venv-$1"
  local vpy="$venv/bin/python" stamp="$venv/.tdn-peers-stamp"
  local module=${1}
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_all" ] && "$vpy" -c "import $module" 2>/dev/null; then
    return 0
  fi
  [ -x "$vpy" ] || "$PY" -m venv "$venv"
  local pip=("$vpy" -m pip install --disable-pip-version-check -q)
  if ! "$vpy" -c "import torch" 2>/dev/null; then
    echo "peers setup ($name): installing $TORCH" >&2
    "${pip[@]}" "$TORCH"
  fi
  echo "peers setup ($name): installing ${PKGS[$name]}" >&2
  "${pip[@]}" "${PKGS[$name]}" "$TORCH"
  "$vpy" -c "import $module, torch, ase; print('peers setup ($name):', '$module', $module.__version__, 'torch', torch.__version__, 'ase', ase.__version__)" >&2
  echo "$want_all" > "$stamp"
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(mace nequip)
for t in "${targets[@]}"; do
  [ -n "${PKGS[$t]:-}" ] || { echo "peers setup: unknown peer '$t' (expected: ${!PKGS[*]})" >&2; exit 2; }
  setup_one "$t"
done
