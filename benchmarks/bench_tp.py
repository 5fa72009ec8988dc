"""Times TDN's edge tensor product for every usable backend, side by side, in one run.

    python benchmarks/bench_tp.py                       # L = 1..6, E = 4000, C = 64, fp32
    python benchmarks/bench_tp.py --lmax 1 2 --edges 1000 --json out.json

This is ``tdn bench`` (``tdn_cli.bench``) under the script name the results and
``scripts/run.sh`` refer to; every ``tdn bench`` option works here too (``--backends``,
``--repeats``, ``--plot``, ``--mode``, ``--rank``, ``--device``...). Per backend and L:
forward and forward+backward medians (ms, after warm-up; gradients with respect to x, y
and the weight), speed ratios against the peers (path_shared, e3nn, cueq), for CP
backends the fraction of this machine's fp32 matmul rate their forward reaches on the
CP FLOP count 2E(d2 R + C(d1 R + d3 R + R)), and accuracy in float64: relative error
against the exact product, measured equivariance error, and the factor set's bound.
"""

from __future__ import annotations

import sys

from tdn_cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
