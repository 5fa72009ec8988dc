"""Where backends are found: a static table of built-ins plus the ``tdn.backends``
entry-point group for third parties. Nothing is imported until it is asked for.
"""

from __future__ import annotations

import functools
import importlib
import logging
import warnings
from importlib.metadata import entry_points

from .._errors import BackendUnavailable
from .._optional import missing
from ._base import Backend

log = logging.getLogger("tdn_core")

ENTRY_POINT_GROUP = "tdn.backends"

#: name -> "module:Class". Requirements live on the class (``Backend.requires``).
BUILTIN: dict[str, str] = {
    "cg": "tdn_core.backends.cg:CGBackend",
    "path_shared": "tdn_core.backends.path_shared:PathSharedBackend",
    "sparse": "tdn_core.backends.sparse:SparseBackend",
    "cp_eager": "tdn_core.backends.cp_eager:CPEagerBackend",
    "cp_triton": "tdn_core.backends.cp_triton:CPTritonBackend",
    "e3nn": "tdn_core.backends.e3nn_peer:E3nnBackend",
    "cueq": "tdn_core.backends.cueq_peer:CueqBackend",
}

_registered: dict[str, type[Backend] | str] = {}


def register_backend(name: str, backend: type[Backend] | str) -> None:
    """Register a backend class (or a lazy "module:Class" path) under ``name``.

    Third-party packages normally use the ``tdn.backends`` entry-point group instead;
    this function is for code that defines a backend at run time.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty str, got {name!r}")
    if name in BUILTIN:
        raise ValueError(f"name: {name!r} is a built-in backend and cannot be replaced")
    _registered[name] = backend
    available_backends.cache_clear()


@functools.cache
def _plugins() -> dict[str, str]:
    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTIN:
            warnings.warn(
                f"ignoring plugin backend {ep.name!r}: the name is built-in", stacklevel=2
            )
            continue
        found[ep.name] = ep.value
    return found


def registered_names() -> list[str]:
    return [*BUILTIN, *_plugins(), *(n for n in _registered if n not in _plugins())]


def _load(name: str) -> type[Backend]:
    target = _registered.get(name) or BUILTIN.get(name) or _plugins().get(name)
    if target is None:
        raise ValueError(
            f"backend: unknown name {name!r}; registered backends: {', '.join(registered_names())}"
        )
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
    if not (isinstance(target, type) and issubclass(target, Backend)):
        raise TypeError(f"backend {name!r} resolves to {target!r}, not a Backend subclass")
    return target


def unavailable_reason(name: str) -> str | None:
    """None if backend ``name`` can run here, else why not. Unknown names raise ValueError."""
    try:
        cls = _load(name)
    except ValueError:
        raise
    except Exception as exc:  # a broken plugin must not break the registry
        return f"{name}: failed to load ({type(exc).__name__}: {exc})"
    for module in cls.requires:
        reason = missing(module)
        if reason is not None:
            return f"{name}: {reason}"
    problem = cls.environment_problem()
    return None if problem is None else f"{name}: {problem}"


@functools.cache
def available_backends() -> dict[str, str | None]:
    """Every registered backend -> None if usable here, else the reason it is not."""
    return {name: unavailable_reason(name) for name in registered_names()}


def get_backend(name: str | type[Backend]) -> type[Backend]:
    """The backend class for ``name``; raises BackendUnavailable if it cannot run here."""
    if isinstance(name, type) and issubclass(name, Backend):
        return name
    if not isinstance(name, str):
        raise TypeError(f"backend: expected a name or a Backend subclass, got {name!r}")
    reason = unavailable_reason(name)
    if reason is not None:
        raise BackendUnavailable(reason)
    return _load(name)
