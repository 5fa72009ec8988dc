"""Wall-clock medians after warm-up: these machines are shared and noisy."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_ms(
    fn: Callable[[], object], repeats: int, warmup: int = 2, device: torch.device | None = None
) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls, in ms.

    On a CUDA ``device`` every call is followed by a synchronization, so the time covers
    the kernels and not only their launch.
    """
    return interleaved_medians_ms([fn], repeats, warmup, device)[0]


def interleaved_medians_ms(
    fns: list[Callable[[], object]],
    repeats: int,
    warmup: int = 2,
    device: torch.device | None = None,
) -> list[float]:
    """Median wall time (ms) of each of ``fns``, called in turn ``repeats`` times: when
    the machine's load changes during the run, every function sees the same load, so
    ratios between them stay meaningful. Warm-up and synchronization as :func:`median_ms`.
    """
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else None

    def call(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync(device)
        return time.perf_counter() - t0

    for _ in range(warmup):
        for fn in fns:
            call(fn)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times, strict=True):
            t.append(call(fn))
    return [1e3 * statistics.median(t) for t in times]
