"""tdn_models: TDN networks with run-time backend choice, baselines and an ASE calculator.

>>> import torch
>>> from tdn_data import load_dataset
>>> from tdn_models import TDN
>>> model = TDN(lmax=1, channels=16, layers=1, backend="path_shared")
>>> sample = load_dataset("embedded-tiny")[0]
>>> out = model(sample)
>>> out["energy"].shape, out["forces"].shape == sample.pos.shape
(torch.Size([1]), True)
"""

from ._checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from ._layers import EquivariantLayerNorm, EquivariantLinear, Gate
from ._normalization import Normalization
from ._potential import GraphInputs, Potential
from ._radial import RADIAL_BASES, BesselBasis, GaussianBasis
from ._registry import MODELS, build_model, model_class, model_name
from ._repulsion import ZBLRepulsion
from ._structure import MIN_DISTANCE, StructureError, check_graphs, check_structure
from ._tdn import TDN
from ._training import potential_loss, train_steps
from .calculator import TDNCalculator

__version__ = "0.1.0"

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "MIN_DISTANCE",
    "MODELS",
    "RADIAL_BASES",
    "TDN",
    "BesselBasis",
    "CheckpointError",
    "EquivariantLayerNorm",
    "EquivariantLinear",
    "Gate",
    "GaussianBasis",
    "GraphInputs",
    "Normalization",
    "Potential",
    "StructureError",
    "TDNCalculator",
    "ZBLRepulsion",
    "build_model",
    "check_graphs",
    "check_structure",
    "load_checkpoint",
    "model_class",
    "model_name",
    "potential_loss",
    "read_checkpoint",
    "save_checkpoint",
    "train_steps",
]
