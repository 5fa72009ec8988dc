"""Training-step and inference throughput of TDN per backend, on embedded-dataset batches.

    python benchmarks/bench_models.py                          # L = 1 2 4, all backends
    python benchmarks/bench_models.py --lmax 1 --backends cp_eager path_shared --json out.json

This is ``tdn bench --model`` (``tdn_cli.bench`` and ``tdn_cli._bench_model``). The
batch: the 16 smallest molecules of the embedded dataset's training split (one snapshot
each), the closest we have to the paper's reference measurement (16 small molecules,
138 atoms). Model: 128 channels, 4 blocks, 4 heads, 4.5 Å cutoff, 128 Gaussians,
conservative forces (-dE/dpos): the reference implementation's defaults.

* training step: forward with forces (graph kept), energy+force loss, backward, Adam step;
* inference: energy and forces (autograd, no graph kept).

Medians after warm-up, ms, and atoms per second. All backends run in one process on
one machine, so their ratios are comparable; absolute times on a shared machine are not.
"""

from __future__ import annotations

import sys

from tdn_cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--model", *sys.argv[1:]]))
