"""tdn_data: Dataset readers, graph construction and the embedded relaxation dataset for TDN.

Skeleton: the package installs and imports; its content is built in later issues.
"""

__version__ = "0.1.0"
