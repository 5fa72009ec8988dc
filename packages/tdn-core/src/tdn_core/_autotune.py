"""``backend="auto"``: the fastest usable backend for a product, measured on first use.

Like cuDNN's benchmark mode: the first time a (descriptor, dtype, device, thread count)
is asked for, every registered backend that can compute it here is timed on a short
forward+backward (the training pattern) and the timings are cached per machine in
``<cache>/autotune.json`` (written atomically). The cache is keyed by a fingerprint of
the CPU (or GPU), torch's and tdn-core's versions: when any of them changes, the
timings are measured again. An :class:`AutoPolicy` then picks among the timed
backends: exact ones only (the default), or also CP backends whose certified
equivariance bound is at most ``max_bound``. The choice is logged; the layer's
``backend`` attribute names it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import platform
import time
from collections.abc import Callable, Mapping
from importlib import resources
from importlib.metadata import PackageNotFoundError, version

import torch

from ._errors import UnsupportedDescriptor
from ._factors import cp_factors, default_cache_dir
from ._io import atomic_write
from .backends._registry import available_backends, get_backend
from .descriptors import TPDescriptor

log = logging.getLogger("tdn_core")

#: edges of the timed problem (channels and degrees are the descriptor's): about a batch
#: of 16 small molecules
AUTOTUNE_EDGES = 4000
#: edges of the probe every candidate runs first (after a warm-up call that may build
#: kernels); one over ``GIVE_UP_FACTOR`` times the fastest probe is not timed further
PROBE_EDGES = 256
GIVE_UP_FACTOR = 5.0
#: timed calls per backend (median), after one warm-up call
AUTOTUNE_REPEATS = 5

CACHE_NAME = "autotune.json"


@dataclasses.dataclass(frozen=True)
class AutoPolicy:
    """Which backends ``backend="auto"`` may choose.

    Args:
        exact: only exact backends (True, the default), or also CP ones (False).
        max_bound: with ``exact=False``, the largest certified equivariance bound a CP
            factor set may have (``CPFactors.bound``; e.g. 0.05).
    """

    exact: bool = True
    max_bound: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.exact, bool):
            raise ValueError(f"policy.exact: expected True or False, got {self.exact!r}")
        if self.exact and self.max_bound is not None:
            raise ValueError(
                f"policy.max_bound: only applies with exact=False (got {self.max_bound!r} "
                "with exact=True)"
            )
        if not self.exact:
            b = self.max_bound
            ok = isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b)
            if not ok or b <= 0:
                raise ValueError(
                    "policy.max_bound: expected a positive number (the largest certified "
                    f"equivariance bound CP may have) with exact=False, got {b!r}"
                )

    @classmethod
    def coerce(cls, policy: AutoPolicy | Mapping | None) -> AutoPolicy:
        """An AutoPolicy from itself, a mapping of its fields (a config) or None (default)."""
        if policy is None:
            return cls()
        if isinstance(policy, cls):
            return policy
        if isinstance(policy, Mapping):  # a dict, or a config node
            policy = dict(policy)
            unknown = set(policy) - {"exact", "max_bound"}
            if unknown:
                raise ValueError(
                    f"policy: unknown key {sorted(unknown)[0]!r}; expected 'exact', 'max_bound'"
                )
            return cls(**policy)
        raise ValueError(f"policy: expected an AutoPolicy, a dict or None, got {policy!r}")

    def allows(self, name: str, desc: TPDescriptor) -> bool:
        """Whether backend ``name`` may compute ``desc`` under this policy."""
        if get_backend(name).exact:
            return True
        if self.exact:
            return False
        bound = cp_factors(desc.lmax_in, desc.lmax_sh, desc.lmax_out, desc.rank, desc.group).bound
        return bound <= self.max_bound


def candidates(desc: TPDescriptor, dtype: torch.dtype, device: torch.device) -> list[str]:
    """Registered backends that can run ``desc`` here with compiled code (not an
    interpreter): the ones auto times."""
    names = []
    for name, reason in available_backends().items():
        if reason is not None:
            continue
        cls = get_backend(name)
        if device.type not in cls.fast_devices:
            continue
        if cls.check(desc) is None and cls.check_placement(dtype, device) is None:
            names.append(name)
    return names


def choose(timings_ms: dict[str, float], allowed: Callable[[str], bool]) -> str:
    """The fastest allowed backend of ``timings_ms`` (name -> ms; inf: not measured)."""
    usable = {n: t for n, t in timings_ms.items() if allowed(n) and math.isfinite(t)}
    if not usable:
        raise UnsupportedDescriptor(
            f"backend 'auto': no backend the policy allows ran this product (timed: "
            f"{', '.join(sorted(timings_ms)) or 'none'})"
        )
    return min(usable, key=usable.__getitem__)


def select_backend(
    desc: TPDescriptor,
    dtype: torch.dtype,
    device: torch.device,
    policy: AutoPolicy | dict | None = None,
    edges: int = AUTOTUNE_EDGES,
) -> str:
    """The backend ``backend="auto"`` runs ``desc`` on (measuring it on first use), tuned
    for batches of ``edges`` edges (the fastest can change with the size: at L = 6 in uvu
    on the 2-core dev CPU, path_shared won at 1,000 edges and sparse at 4,000)."""
    policy = AutoPolicy.coerce(policy)
    device = torch.device(device)
    allowed = [n for n in candidates(desc, dtype, device) if policy.allows(n, desc)]
    timings = cached_timings(desc, dtype, device, allowed, edges)
    name = choose(timings, lambda n: n in allowed)
    log.info(
        "backend 'auto' chose %r for %s (%s; forward+backward ms: %s)",
        name,
        _case_key(desc, dtype, device, edges),
        policy,
        ", ".join(f"{n} {t:.3g}" for n, t in sorted(timings.items(), key=lambda kv: kv[1])),
    )
    return name


def cached_timings(
    desc: TPDescriptor,
    dtype: torch.dtype,
    device: torch.device,
    names: list[str],
    edges: int = AUTOTUNE_EDGES,
) -> dict[str, float]:
    """name -> forward+backward ms of each of ``names``, from the cache or measured now
    (those not cached yet: the cache grows as policies ask for more)."""
    path = default_cache_dir() / CACHE_NAME
    fingerprint = machine_fingerprint(device)
    cache = _read(path)
    if cache.get("fingerprint") != fingerprint:
        cache = {"fingerprint": fingerprint, "cases": {}}
    timings = cache["cases"].setdefault(_case_key(desc, dtype, device, edges), {})
    missing = [n for n in names if n not in timings]
    if missing:
        best = min(timings.values(), default=math.inf)
        timings.update(measure(desc, dtype, device, missing, best, edges))
        text = json.dumps(cache, indent=1, sort_keys=True).encode()
        atomic_write(path, lambda f: f.write(text))
    return {n: timings[n] for n in names}


def measure(
    desc: TPDescriptor,
    dtype: torch.dtype,
    device: torch.device,
    names: list[str],
    best: float = math.inf,
    edges: int = AUTOTUNE_EDGES,
) -> dict[str, float]:
    """Median forward+backward ms of each of ``names`` on ``edges`` Gaussian edges.

    Each first runs a probe of ``PROBE_EDGES`` edges; one whose probe takes over
    ``GIVE_UP_FACTOR`` times the fastest probe is recorded as inf, not timed, and so is
    one whose first full call takes that many times ``best`` (the fastest full timing
    already known, ms). The rest are timed in turn, call by call."""
    from . import TensorProduct  # the layer, built the way users build it

    products = {
        name: TensorProduct(
            desc.lmax_in, desc.lmax_sh, desc.lmax_out, desc.channels, backend=name,
            mode=desc.mode, rank=desc.rank, group=desc.group, path_weights=desc.path_weights,
        ).to(dtype=dtype, device=device)
        for name in names
    }  # fmt: skip
    probe, full = (_timer(desc, dtype, device, n) for n in (min(PROBE_EDGES, edges), edges))
    probes = {}
    for name, tp in products.items():
        probe(tp)  # warm-up: may build kernels or fit nothing but load them
        probes[name] = probe(tp)
    fastest = min(probes.values())
    timings: dict[str, float] = {}
    finalists = {}
    for name, tp in products.items():
        timings[name] = math.inf  # unless timed below
        if probes[name] > GIVE_UP_FACTOR * fastest:
            continue
        first = full(tp)  # warm-up at the full size
        if first * 1e3 <= GIVE_UP_FACTOR * best:
            finalists[name] = (tp, first)
    if finalists:
        # called in turn, so that every finalist sees the same load of a shared machine;
        # at least AUTOTUNE_REPEATS rounds, more for fast ones (~0.2 s of the fastest)
        quickest = min(first for _, first in finalists.values())
        rounds = max(AUTOTUNE_REPEATS, min(50, int(0.2 / max(quickest, 1e-6))))
        runs: dict[str, list[float]] = {name: [] for name in finalists}
        for _ in range(rounds):
            for name, (tp, _) in finalists.items():
                runs[name].append(full(tp))
        for name, times in runs.items():
            timings[name] = 1e3 * sorted(times)[len(times) // 2]
    return timings


def _timer(desc: TPDescriptor, dtype: torch.dtype, device: torch.device, edges: int):
    """A function timing (s) one forward+backward of a product on ``edges`` edges."""
    from .testing import random_inputs

    gen = torch.Generator().manual_seed(0)
    inputs = [
        t.to(device).requires_grad_(True) for t in random_inputs(desc, edges, dtype, generator=gen)
    ]

    def call(tp) -> float:
        t0 = time.perf_counter()
        torch.autograd.grad(tp(*inputs).square().sum(), inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    return call


def machine_fingerprint(device: torch.device) -> str:
    """What the timings depend on besides the product: CPU or GPU model, threads, torch,
    tdn-core's version and its source (a checkout's code changes without a version bump:
    timings of an older kernel must not choose for a newer one)."""
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        from .backends._cpu_kernels import _cpu_id

        hardware = _cpu_id()
    try:
        ours = version("tdn-core")
    except PackageNotFoundError:
        ours = "unknown"
    parts = (platform.machine(), hardware, torch.__version__, ours, str(torch.get_num_threads()))
    return hashlib.sha256("\0".join((*parts, _source_digest())).encode()).hexdigest()[:16]


@functools.cache
def _source_digest() -> str:
    """sha256 of tdn-core's Python and C++ sources."""
    root = resources.files(__package__)
    digest = hashlib.sha256()
    stack = [root]
    while stack:
        for entry in sorted(stack.pop().iterdir(), key=lambda e: e.name):
            if entry.is_dir():
                if entry.name != "__pycache__":
                    stack.append(entry)
            elif entry.name.endswith((".py", ".cpp")):
                digest.update(entry.name.encode() + b"\0" + entry.read_bytes())
    return digest.hexdigest()


def _case_key(desc: TPDescriptor, dtype: torch.dtype, device: torch.device, edges: int) -> str:
    return f"{desc.to_json()}|{str(dtype).removeprefix('torch.')}|{device.type}|E={edges}"


def _read(path) -> dict:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # absent or damaged: measured again, never trusted
    ok = isinstance(cache, dict) and isinstance(cache.get("cases"), dict)
    return cache if ok else {}
