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
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else None

    def call() -> None:
        fn()
        if sync is not None:
            sync(device)

    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)
