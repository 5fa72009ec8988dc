"""Versioned, atomically written checkpoints of a :class:`Potential`.

A checkpoint is one ``torch.save`` file holding only tensors, plain containers, strings
and numbers, so :func:`load_checkpoint` reads it with ``torch.load(weights_only=True)``
and never runs code from the file. Its top-level dict (format ``tdn-checkpoint``,
version :data:`CHECKPOINT_VERSION`):

- ``format``, ``version``: what this is and which layout; a reader refuses newer versions.
- ``model``, ``config``: the registered model name and constructor arguments
  (:func:`build_model` rebuilds it).
- ``dtype``: the parameters' dtype when saved (``"float64"``...).
- ``state_dict``: the weights (the same under every backend) and normalization buffers.
- ``normalization``: the fitted E0 (eV per element), shift (eV) and scale (eV/Å) again as
  plain numbers, for humans and tools that do not load torch tensors.
- ``tensor_products``: per tdn-core product (in module order) its name, lmaxes, group,
  rank, the backend it ran on and, under a CP backend, the factor set's rank,
  rel_error, bound and method. Loading checks the factors resolved now against these, so
  a model trained with one CP approximation is never silently run with another.
- ``versions``: python, torch and tdn package versions that wrote the file.
- ``extra``: the caller's plain data (training step, metrics...).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import pickle
import platform
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from tdn_core import TDNError, available_backends
from tdn_core._io import atomic_write

from ._potential import Potential
from ._registry import build_model, model_class, model_name

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]

#: the ``format`` field of every checkpoint
CHECKPOINT_FORMAT = "tdn-checkpoint"
#: bump when the layout or the meaning of a field changes; readers refuse newer files
CHECKPOINT_VERSION = 1
#: stored and current CP factor sets must agree in rel_error to this relative tolerance
_FACTOR_RTOL = 1e-6
_REQUIRED = ("model", "config", "dtype", "state_dict", "tensor_products")


class CheckpointError(TDNError, ValueError):
    """A checkpoint is unreadable, of another format or version, or does not fit here."""


# --------------------------------------------------------------------------- save


def _versions() -> dict[str, str]:
    # plain str: torch.__version__ is a str subclass that weights_only loading rejects
    out = {"python": platform.python_version(), "torch": str(torch.__version__)}
    for dist in ("tdn-core", "tdn-data", "tdn-models"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError unless ``value`` is something ``weights_only`` loading accepts."""
    if value is None or isinstance(value, str | bool | int | float | torch.Tensor):
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise TypeError(f"{where}: keys must be str or int, got {type(k).__name__}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(
        f"{where}: {type(value).__name__} cannot be stored in a checkpoint (only tensors, "
        "str, numbers, bool, None, lists and dicts load without running code); convert it"
    )


def _product_metadata(model: Potential) -> list[dict]:
    """Per tensor product: descriptor fields, backend, and the CP factor set in use."""
    out = []
    names = {id(m): n for n, m in model.named_modules()}
    for tp in model.tensor_products():
        d = tp.descriptor
        factors = tp.factors
        out.append(
            {
                "name": names[id(tp)],
                "lmax_in": d.lmax_in,
                "lmax_sh": d.lmax_sh,
                "lmax_out": d.lmax_out,
                "group": d.group,
                "rank": d.rank,
                "backend": tp.backend,
                "factors": None
                if factors is None
                else {
                    "rank": int(factors.rank),
                    "rel_error": float(factors.rel_error),
                    "bound": float(factors.bound),
                    "method": str(factors.method),
                },
            }
        )
    return out


def _normalization_numbers(model: Potential) -> dict:
    norm = model.normalization
    e0 = norm.element_energies.detach().double().cpu()
    return {
        "element_energies": {int(z): float(e0[z]) for z in torch.nonzero(e0).flatten()},
        "shift": float(norm.shift),
        "scale": float(norm.scale),
        "units": {"element_energies": "eV", "shift": "eV", "scale": "eV/Å"},
    }


def save_checkpoint(
    path: str | os.PathLike, model: Potential, *, extra: dict | None = None
) -> Path:
    """Write ``model`` to ``path`` atomically; returns the path.

    The file is written to a temp file in the same directory, flushed to disk (fsync) and
    renamed over ``path``, so a crash or kill leaves the previous file or the new one,
    never a part. Tensors are saved from the CPU, so the file loads on any machine.

    Args:
        path: destination file (conventionally ``*.pt``); its directory must exist.
        model: a registered :class:`Potential` (see ``tdn_models.MODELS``).
        extra: plain data to keep alongside (step, metrics...): tensors, str, numbers,
            bool, None, and lists/dicts of them.

    Raises:
        TypeError: ``model`` is not a Potential or ``extra`` holds other objects.
        ValueError: ``model``'s class is not registered.
    """
    if not isinstance(model, Potential):
        raise TypeError(f"model: expected a tdn_models.Potential, got {type(model).__name__}")
    extra = {} if extra is None else extra
    if not isinstance(extra, dict):
        raise TypeError(f"extra: expected a dict or None, got {type(extra).__name__}")
    _check_plain(extra, "extra")
    _check_plain(model.config, "model.config")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"path: directory {str(path.parent)!r} does not exist")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model_name(model),
        "config": dict(model.config),
        "dtype": str(model.dtype).removeprefix("torch."),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "normalization": _normalization_numbers(model),
        "tensor_products": _product_metadata(model),
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "extra": extra,
    }
    # temp file, fsync, rename: a kill leaves the old checkpoint or the new one
    atomic_write(path, lambda f: torch.save(payload, f))
    return path


# --------------------------------------------------------------------------- load


def read_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> dict:
    """The raw checkpoint dict at ``path``, validated for format and version.

    Tensors are mapped to ``device``. Use :func:`load_checkpoint` to get a model; this is
    for tools that only inspect metadata.

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: unreadable, truncated or not a TDN checkpoint, or written by a
            newer tdn-models.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no checkpoint file at {str(path)!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: noise here
            ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        # never pass on torch's advice to load with weights_only=False: for a file of
        # unknown origin that means running whatever code it holds
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(e))
        holds = f"objects of {found.group(1)}" if found else "no torch.save data we can read"
        raise CheckpointError(
            f"checkpoint {str(path)!r}: not a TDN checkpoint: it holds {holds}, and tdn "
            "loads only tensors and plain data (a pickle of anything else could run code)"
        ) from None
    except Exception as e:  # zip and EOF errors: a truncated or corrupted file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"checkpoint {str(path)!r}: unreadable (truncated, corrupted, or not a "
            f"torch.save file): {type(e).__name__}: {reason[:200]}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r}: not a TDN checkpoint (expected format "
            f"{CHECKPOINT_FORMAT!r}, got {got!r}); write one with tdn_models.save_checkpoint"
        )
    version = ckpt.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"checkpoint {str(path)!r}: invalid format version {version!r}")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: format version {version} was written by a newer "
            f"tdn-models (this one reads up to version {CHECKPOINT_VERSION}); upgrade "
            "tdn-models to load it"
        )
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r}: incomplete, missing {missing}")
    if not isinstance(ckpt["state_dict"], dict) or not all(
        isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values()
    ):
        raise CheckpointError(f"checkpoint {str(path)!r}: state_dict is not a dict of tensors")
    return ckpt


def _legacy_defaults(name: str) -> dict:
    """The model class's ``LEGACY_CONFIG`` (empty for an unknown name: build_model names it)."""
    try:
        return dict(getattr(model_class(name), "LEGACY_CONFIG", {}))
    except ValueError:
        return {}


def _choose_backend(path: Path, ckpt: dict, backend: str | None) -> str | None:
    """The backend to run on: ``backend`` if given, else the one the model was saved with."""
    stored = {tp["backend"] for tp in ckpt["tensor_products"]}
    if not stored:
        if backend is not None:
            raise CheckpointError(
                f"backend: {ckpt['model']!r} has no tdn-core tensor products, so backend "
                f"{backend!r} cannot apply; pass backend=None"
            )
        return None
    name = backend if backend is not None else ckpt["config"].get("backend")
    if name is None or (backend is None and len(stored) > 1):
        name = sorted(stored)[0]
    usable = available_backends()
    if name == "auto":  # chosen again here: the fastest one on this machine
        return name
    if name not in usable:
        raise CheckpointError(
            f"backend: unknown backend {name!r}; registered: {sorted(usable)} (or 'auto')"
        )
    if usable[name] is not None:
        others = sorted(k for k, why in usable.items() if why is None)
        how = "saved with" if backend is None else "asked for"
        raise CheckpointError(
            f"checkpoint {str(path)!r}: the model was {how} backend {name!r}, which is "
            f"unavailable here ({usable[name]}); pass backend= one of {others} "
            "(the weights are the same under every backend)"
        )
    return name


def _check_factors(path: Path, ckpt: dict, model: Potential) -> None:
    """Each product's CP factors resolved now must match the stored rank and rel_error."""
    tps = model.tensor_products()
    stored = ckpt["tensor_products"]
    if len(stored) != len(tps):
        raise CheckpointError(
            f"checkpoint {str(path)!r}: stores {len(stored)} tensor products but the rebuilt "
            f"model has {len(tps)}; was it written by another version of the model code?"
        )
    for meta, tp in zip(stored, tps, strict=True):
        saved = meta.get("factors")
        if saved is None:  # trained under an exact backend: no CP approximation to match
            continue
        now = tp.factors
        if now is None:  # runs on an exact backend now: no CP approximation is used
            continue
        d = tp.descriptor
        same_rank = int(now.rank) == int(saved["rank"])
        err_now, err_saved = float(now.rel_error), float(saved["rel_error"])
        same_error = math.isclose(err_now, err_saved, rel_tol=_FACTOR_RTOL, abs_tol=1e-15)
        if not (same_rank and same_error):
            raise CheckpointError(
                f"checkpoint {str(path)!r}: tensor product {meta.get('name')!r} "
                f"(lmax=({d.lmax_in}, {d.lmax_sh}, {d.lmax_out}), group {d.group}) was "
                f"trained with CP factors of rank {saved['rank']} and rel_error "
                f"{err_saved:.6g}, but the factors resolved here have rank {now.rank} and "
                f"rel_error {err_now:.6g}; the model would run with another approximation. "
                "Use the tdn-core version (and factor cache) it was trained with, or load "
                "it with an exact backend (backend='path_shared')"
            )


def load_checkpoint(
    path: str | os.PathLike,
    *,
    backend: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[Potential, dict]:
    """Rebuild the model saved at ``path``; returns ``(model, info)``, model in eval mode.

    Args:
        path: a file written by :func:`save_checkpoint`.
        backend: run the tensor products on this backend (the weights are shared by all
            backends). None: the backend the model was saved with; if that one is
            unavailable here (e.g. ``cp_triton`` without triton), CheckpointError lists
            the usable ones.
        device: where the tensors go (``map_location``): a checkpoint saved on a GPU loads
            on the CPU.
        dtype: parameter dtype; None keeps the saved one. Normalization buffers stay
            float64.

    Returns:
        the model and ``info``: every checkpoint field except ``state_dict`` (model,
        config, dtype, normalization, tensor_products, versions, created, extra...).

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: unreadable or foreign file, newer format version, unavailable
            backend, mismatching CP factors, or weights that do not fit the model.
    """
    path = Path(path)
    ckpt = read_checkpoint(path, device=device)
    name = _choose_backend(path, ckpt, backend)
    # options added after a checkpoint was written take the value it was trained with
    config = {**_legacy_defaults(ckpt["model"]), **ckpt["config"]}
    if name is not None and "backend" in config:
        config["backend"] = name
        if name != "auto" and config.get("backend_policy") is not None:
            config["backend_policy"] = None  # the policy only applies to "auto"
    try:
        model = build_model(ckpt["model"], **config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: cannot rebuild model {ckpt['model']!r} from its "
            f"config ({e})"
        ) from e
    if name not in (None, "auto") and model.backend != name:
        model.set_backend(name)
    _check_factors(path, ckpt, model)

    if dtype is None:
        dtype = getattr(torch, str(ckpt["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"checkpoint {str(path)!r}: unknown dtype {ckpt['dtype']!r}")
    model.to(device=device, dtype=dtype)
    # .to(dtype) also cast the float64 normalization buffers; load them back at float64
    model.normalization.to(dtype=torch.float64)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: weights do not fit model {ckpt['model']!r}: {e}"
        ) from None
    model.eval()
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model, info
