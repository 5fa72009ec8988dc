"""PNG charts of the subcommands (matplotlib with the Agg backend: no display needed)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tdn_core._io import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window or need a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    plt = _pyplot()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    finally:
        plt.close(fig)
    return path


def loglog_lines(
    path: str | os.PathLike,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
) -> Path:
    """One log-log line per ``name -> (x, y)`` (e.g. time in ms against L); returns path."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (x, y) in series.items():
        ax.loglog(x, y, marker="o", label=name)
    xs = sorted({v for x, _ in series.values() for v in x})
    if xs:
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
        ax.minorticks_off()
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def parity(
    path: str | os.PathLike,
    panels: Sequence[tuple[str, str, Mapping[str, tuple[np.ndarray, np.ndarray]]]],
    title: str,
) -> Path:
    """Predicted against reference, one panel per ``(name, unit, {group: (ref, pred)})``,
    with the diagonal drawn; returns path."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), squeeze=False)
    for ax, (name, unit, groups) in zip(axes[0], panels, strict=True):
        values = [v for ref, pred in groups.values() for v in (ref, pred) if len(v)]
        lo, hi = (min(v.min() for v in values), max(v.max() for v in values)) if values else (0, 1)
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, zorder=0)
        for group, (ref, pred) in groups.items():
            ax.scatter(ref, pred, s=6, alpha=0.6, label=group, rasterized=True)
        ax.set(xlabel=f"reference {name} ({unit})", ylabel=f"predicted {name} ({unit})")
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(fontsize="small", markerscale=2)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def error_against_distance(
    path: str | os.PathLike,
    groups: Mapping[str, tuple[np.ndarray, np.ndarray]],
    title: str,
) -> Path:
    """Per-atom force error (eV/Å, log scale) against the distance to the nearest
    neighbour (Å), one colour per ``group: (nn, error)``: every atom as a dot, and the
    worst atom of each 0.05 Å bin as a line (the tail the dots hide); returns path."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for group, (nn, err) in groups.items():
        keep = np.isfinite(nn) & (err > 0)
        dots = ax.scatter(nn[keep], err[keep], s=2, alpha=0.15, rasterized=True)
        bins = np.floor(nn[keep] / 0.05).astype(int)
        edges = np.unique(bins)
        worst = [err[keep][bins == b].max() for b in edges]
        ax.step((edges + 0.5) * 0.05, worst, where="mid", color=dots.get_facecolor()[0][:3],
                label=f"{group} (line: worst per 0.05 Å)")  # fmt: skip
    ax.set_yscale("log")
    ax.set(
        xlabel="distance to the nearest neighbour (Å)",
        ylabel="per-atom force error |F_pred - F_ref| (eV/Å)",
        title=title,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", markerscale=3)
    fig.tight_layout()
    return _save(fig, path)
