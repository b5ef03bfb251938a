"""Metrics of a model on one split of prepared data: the numbers behind ``metrics.json`` and its plots.

Used by the training workflow (test split of a finished run), ``medlite evaluate`` (own or other data),
paradigms that score a second model (dg's ``source_bn``) and the prototype baseline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from medlite.data.prepared import PreparedData
from medlite.errors import MedliteError
from medlite.metrics.calibration import Calibrator
from medlite.metrics.classification import compute_metrics
from medlite.metrics.plots import plot_confusion, plot_roc
from medlite.models.inputs import predict_logits, predict_proba


def score_split(model: nn.Module, data: PreparedData, split: str, in_chans: int,
                calibrator: Calibrator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """float64 (N, C) probabilities (calibrated by ``calibrator`` when given) of every image of ``split``
    (labelled or not) and int64 (N,) labels."""
    idx = data.indices(split, labelled_only=False)
    images = data.cached.images[idx] if len(idx) else np.zeros((0, 1, 1), np.uint8)
    if calibrator is None or len(idx) == 0:
        return predict_proba(model, images, in_chans=in_chans), data.cached.labels[idx]
    logits = np.asarray(predict_logits(model, images, in_chans=in_chans), dtype=np.float64)
    return calibrator.apply(logits), data.cached.labels[idx]


def evaluate_split(model: nn.Module, data: PreparedData, split: str, in_chans: int,
                   plot_dir: Path | None = None, calibrator: Calibrator | None = None) -> dict[str, Any]:
    """Metrics of ``model`` on one split, with the binary Youden threshold tuned on the validation split.

    Args:
        model: a zoo model in eval mode.
        data: prepared data (the run's own split, or another source).
        split: ``train``, ``val`` or ``test``.
        in_chans: channels the model expects.
        plot_dir: where to write ``roc_<split>.png`` and ``confusion_<split>.png``; ``None`` writes none.
        calibrator: the run's calibration (:mod:`medlite.workflows.trust`): probabilities, ECE and the binary
            threshold are then those of the calibrated model, as every predicting path serves it.

    Returns:
        :func:`~medlite.metrics.classification.compute_metrics` of the split.
    """
    probs, targets = score_split(model, data, split, in_chans, calibrator)
    if len(targets) == 0:
        raise MedliteError(f"the {split!r} split is empty; choose --split train/val/test with images in it")
    val_probs, val_targets = (None, None)
    if split != "val" and len(data.indices("val", labelled_only=False)):
        val_probs, val_targets = score_split(model, data, "val", in_chans, calibrator)
    metrics = compute_metrics(probs, targets, data.classes, val_probs=val_probs, val_targets=val_targets)
    if plot_dir is not None:
        plot_roc(probs, targets, data.classes, plot_dir / f"roc_{split}.png")
        plot_confusion(np.asarray(metrics["confusion_matrix"]), data.classes, plot_dir / f"confusion_{split}.png")
    return metrics
