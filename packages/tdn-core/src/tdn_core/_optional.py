"""One place that knows which optional package provides what, and how to install it."""

from __future__ import annotations

import importlib
import importlib.util

from ._errors import BackendUnavailable

#: module -> the pip extra of tdn-core that installs it
EXTRAS = {
    "e3nn": "e3nn",
    "cuequivariance": "cueq",
    "cuequivariance_torch": "cueq",
    "triton": "triton",
}


def missing(module: str) -> str | None:
    """None if ``module``'s package is installed, else a one-line reason with the install hint."""
    package = module.partition(".")[0]
    if importlib.util.find_spec(package) is not None:
        return None
    extra = EXTRAS.get(package)
    hint = f"pip install 'tdn-core[{extra}]'" if extra else f"pip install {package}"
    return f"needs {package}: {hint}"


def require(module: str, what: str = "this feature"):
    """Import ``module`` (dotted names allowed: ``"e3nn.o3"``) or raise BackendUnavailable
    naming the extra to install."""
    reason = missing(module)
    if reason is not None:
        raise BackendUnavailable(f"{what} {reason}")
    return importlib.import_module(module)
