"""tdn-core: Clebsch-Gordan tensors, CP factors, and interchangeable tensor-product backends.

>>> import torch, tdn_core
>>> tp = tdn_core.TensorProduct(2, 2, 2, channels=8, backend="path_shared")
>>> x, y, w = torch.randn(5, 9, 8), torch.randn(5, 9), torch.randn(5, 8)
>>> tp(x, y, w).shape
torch.Size([5, 9, 8])
"""

from ._autotune import AutoPolicy
from ._cg import cg_block, cg_tensor
from ._errors import (
    AllocationTooLarge,
    BackendUnavailable,
    FactorFileError,
    TDNError,
    UnsupportedDescriptor,
)
from ._factors import CPFactors, cp_factors, resolve_rank
from ._memory import check_fits
from ._spherical_harmonics import SphericalHarmonics, spherical_harmonics
from ._tensor_product import TensorProduct
from .backends import Backend, available_backends, get_backend, register_backend
from .conventions import dim, paths
from .descriptors import TPDescriptor

__version__ = "0.1.0"

__all__ = [
    "AllocationTooLarge",
    "AutoPolicy",
    "Backend",
    "BackendUnavailable",
    "CPFactors",
    "FactorFileError",
    "SphericalHarmonics",
    "TDNError",
    "TPDescriptor",
    "TensorProduct",
    "UnsupportedDescriptor",
    "available_backends",
    "cg_block",
    "cg_tensor",
    "check_fits",
    "cp_factors",
    "dim",
    "get_backend",
    "paths",
    "register_backend",
    "resolve_rank",
    "spherical_harmonics",
]
