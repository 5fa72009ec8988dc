"""tdn_cli: the ``tdn`` command.

Subcommands (``tdn <subcommand> --help`` shows each one's options and examples):

* ``tdn bench``: tensor-product backends against the peers (path_shared, e3nn, cueq):
  forward and forward+backward medians, speed ratios, error against the exact product,
  measured equivariance error and the factor set's bound; ``--model`` times the network.
* ``tdn train``: training from a Hydra configuration (``conf/``).
* ``tdn eval``: energy and force MAE/RMSE of a checkpoint per split, per-element force
  errors, parity plots.
* ``tdn fit-cp``: fit and store a CP factor set; prints its error and bound.
* ``tdn data generate|inspect|convert``: the dataset generator, dataset summaries,
  format conversion (extxyz, PubChemQCR LMDB).
* ``tdn md`` / ``tdn relax``: ASE dynamics or a relaxation with a checkpoint.

Bad input (a missing file, an unknown backend, a bad value) prints one line,
``tdn <subcommand>: error: ...``, and exits with status 2; long work shows a progress
bar on stderr; charts are written as PNG files. In Python: ``tdn_cli.main.main(argv)``.
"""

__version__ = "0.1.0"
