"""Plots of a run: learning curves, ROC curves, confusion matrix. PNG files written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlite.metrics.classification import roc_curves
from medlite.utils.atomic import atomic_write


def _figure(width: float = 5.0, height: float = 4.0):  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless: never needs a display
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=110)


def save_figure(fig: Any, path: Path) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def plot_history(rows: Sequence[dict[str, str]], path: Path) -> Path:
    """Loss (left axis) and validation accuracy / AUC (right axis) per epoch from ``history.csv`` rows."""
    fig, ax = _figure(6.0, 4.0)
    epochs = [int(r["epoch"]) + 1 for r in rows]

    def series(key: str) -> list[float]:
        return [float(r[key]) if r.get(key) else np.nan for r in rows]

    for key, style in (("train_loss", "-"), ("val_loss", "--")):
        if any(r.get(key) for r in rows):
            ax.plot(epochs, series(key), style, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    right = ax.twinx()
    for key, colour in (("val_acc", "tab:green"), ("val_auc", "tab:red")):
        if any(r.get(key) for r in rows):
            right.plot(epochs, series(key), color=colour, label=key)
    right.set_ylabel("validation score")
    right.set_ylim(0.0, 1.02)
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    ax.legend(handles, labels, loc="center right", fontsize=8)
    ax.set_title("learning curves")
    return save_figure(fig, path)


def plot_roc(probs: np.ndarray, targets: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """One-vs-rest ROC curve per class (for two classes, the positive class only)."""
    fig, ax = _figure()
    for name, (fpr, tpr) in roc_curves(probs, targets, class_names=list(classes)).items():
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC (one-vs-rest)")
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """Confusion matrix with counts and row-normalised shading (rows = true class)."""
    fig, ax = _figure(1.2 + 0.7 * len(classes), 1.0 + 0.6 * len(classes))
    totals = matrix.sum(axis=1, keepdims=True).clip(min=1)
    ax.imshow(matrix / totals, cmap="Blues", vmin=0.0, vmax=1.0)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(int(value)),
            ha="center",
            va="center",
            color="white" if value / totals[i, 0] > 0.5 else "black",
            fontsize=8,
        )
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    return save_figure(fig, path)
