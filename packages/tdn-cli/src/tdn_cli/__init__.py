"""tdn_cli: The tdn command: benchmarks, training, evaluation, CP factor fitting.

Skeleton: the package installs and imports; its content is built in later issues.
"""

__version__ = "0.1.0"
