"""Model names -> classes, for checkpoints and configs. Baselines import lazily."""

from __future__ import annotations

import importlib

from ._potential import Potential

#: name -> "module:Class"; the module is imported only when the model is built
MODELS = {
    "tdn": "tdn_models._tdn:TDN",
    "schnet": "tdn_models.baselines.schnet:SchNetPotential",
    "nequip": "tdn_models.baselines.nequip:NequIPPotential",
}


def model_class(name: str) -> type[Potential]:
    """The class registered as ``name``; ValueError listing the names otherwise."""
    if name not in MODELS:
        raise ValueError(f"model: unknown name {name!r}; registered: {sorted(MODELS)}")
    module, cls = MODELS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def model_name(model: Potential) -> str:
    """The registered name of ``model``'s class."""
    path = f"{type(model).__module__}:{type(model).__name__}"
    for name, target in MODELS.items():
        if target == path:
            return name
    raise ValueError(f"model: {type(model).__name__} is not a registered model ({sorted(MODELS)})")


def build_model(name: str, **config) -> Potential:
    """Build the registered model ``name`` with its constructor arguments ``config``."""
    return model_class(name)(**config)
