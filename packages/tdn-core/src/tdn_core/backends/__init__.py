"""Tensor-product backends: the contract, the registry, and one module per backend."""

from ._base import Backend
from ._registry import available_backends, get_backend, register_backend, registered_names

__all__ = ["Backend", "available_backends", "get_backend", "register_backend", "registered_names"]
