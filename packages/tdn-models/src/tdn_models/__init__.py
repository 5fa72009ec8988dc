"""tdn_models: TDN networks with run-time backend choice, baselines and an ASE calculator.

Skeleton: the package installs and imports; its content is built in later issues.
"""

__version__ = "0.1.0"
