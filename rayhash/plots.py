"""PNG plots of retrieval results: PR curves, P@N curves and an mAP bar chart.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, so no global backend or
figure state), rendered to memory and written through :mod:`rayhash.storage`, so a local
path or an ``s3://`` URI both work.
"""

from __future__ import annotations

import io
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from rayhash import storage

logger = logging.getLogger(__name__)


def _new_axes(title: str, xlabel: str, ylabel: str, size=(6.0, 4.5)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig, path: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    storage.write_bytes_atomic(path, buf.getvalue())
    logger.info("wrote %s", path)


def _floats(values, what: str) -> np.ndarray:
    # None marks an undefined point (e.g. precision where nothing is retrieved): a gap.
    try:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a sequence of numbers (or None), got {values!r:.80}") from None


def _check_curves(curves: Mapping, what: str) -> None:
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError(f"{what} must be a non-empty dict of label -> curve, got {type(curves).__name__}.")


def plot_pr_curves(curves: Mapping[str, Mapping], path: str, title: str = "Precision-recall by Hamming radius") -> None:
    """One line per label; each curve is ``{"precision": [...], "recall": [...]}`` as
    :func:`rayhash.metrics.evaluate_codes` returns under ``pr_curve``."""
    _check_curves(curves, "curves")
    fig, ax = _new_axes(title, "recall", "precision")
    for label, curve in curves.items():
        if not {"precision", "recall"} <= set(curve):
            raise ValueError(f"PR curve {label!r} needs 'precision' and 'recall' lists, got keys {sorted(curve)}.")
        precision = _floats(curve["precision"], f"{label} precision")
        recall = _floats(curve["recall"], f"{label} recall")
        if precision.shape != recall.shape:
            raise ValueError(f"PR curve {label!r}: {len(precision)} precision values but {len(recall)} recall values.")
        ax.plot(recall, precision, marker=".", markersize=3, label=str(label))
    ax.set(xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_precision_at_n(curves: Mapping[str, Sequence[float]], path: str, title: str = "Precision at N") -> None:
    """One line per label; ``curves[label][i]`` is P@(i + 1)."""
    _check_curves(curves, "curves")
    fig, ax = _new_axes(title, "N (items retrieved)", "precision")
    for label, values in curves.items():
        values = _floats(values, f"P@N of {label}")
        ax.plot(np.arange(1, len(values) + 1), values, label=str(label))
    ax.set(ylim=(0, 1.02))
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_map_table(rows: Iterable[Mapping], path: str, title: str = "mAP@1000") -> None:
    """Bars of mAP by method (groups) and code length (bars), from rows of
    ``{"method", "nbits", "map"}``: one row per run; runs that share a method and nbits
    (seeds) give the bar's mean and, as an error bar, their sample standard deviation."""
    runs: dict[tuple[str, int], list[float]] = defaultdict(list)
    for row in rows:
        if not {"method", "nbits", "map"} <= set(row):
            raise ValueError(f"each row needs 'method', 'nbits' and 'map', got keys {sorted(row)}.")
        runs[(str(row["method"]), int(row["nbits"]))].append(float(row["map"]))
    if not runs:
        raise ValueError("rows is empty: there is nothing to plot.")
    methods = list(dict.fromkeys(m for m, _ in runs))  # first-seen order
    bits = sorted({b for _, b in runs})
    fig, ax = _new_axes(title, "method", "mAP", size=(max(6.0, 1.6 * len(methods)), 4.5))
    width = 0.8 / len(bits)
    for j, nbits in enumerate(bits):
        xs, means, spreads = [], [], []
        for i, method in enumerate(methods):
            values = runs.get((method, nbits))
            if values:
                xs.append(i + (j - (len(bits) - 1) / 2) * width)
                means.append(np.mean(values))
                spreads.append(np.std(values, ddof=1) if len(values) > 1 else 0.0)
        bars = ax.bar(xs, means, width, yerr=spreads, capsize=3, label=f"{nbits} bits")
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(range(len(methods)), methods)
    ax.set(ylim=(0, 1.05))
    ax.legend(fontsize=8)
    _save(fig, path)
