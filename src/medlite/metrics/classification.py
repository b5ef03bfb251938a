"""Classification metrics reported by every medlite run (METHODS.md §6 and §10 row 10; users' B.9, B.11).

Accuracy, balanced accuracy, macro-F1, one-vs-rest AUC, per-class P/R/F1/specificity/AUC, the confusion
matrix, expected calibration error (Guo et al., ICML 2017) and stratified percentile-bootstrap 95 % CIs
(Efron & Tibshirani 1993); binary tasks add threshold 0.5 and the Youden-optimal threshold (Youden 1950)
chosen on validation data, as 0.5 favours the majority class of imbalanced test sets (PneumoniaMNIST 390:234).

Conventions: a binary threshold ``t`` calls a sample positive iff ``p_positive > t`` (strict, as torchmetrics;
at 0.5 this is the arg-max prediction, ties going to class 0). ``per_class[c]["accuracy"]`` is the
one-vs-rest accuracy (TP + TN) / N; the HybridNet-XR paper's "class-wise accuracy" (class-``c`` images
classified as ``c``) is ``per_class[c]["recall"]``. Undefined ratios are 0 (scikit-learn's zero_division=0);
an undefined AUC (class absent, or every target) is None with a warning, and then ``auc_macro`` is None too
(scikit-learn and MedMNIST's evaluator give NaN there), with ``auc_macro_present`` the mean over the
classes that have one (``auc_classes``). Counts come from torchmetrics' integer confusion matrix and AUCs from
the Mann-Whitney statistic, both in float64 (torchmetrics' own ratios are float32), so point estimates equal
scikit-learn's and are computed like every bootstrap resample. AUCs rank the one-vs-rest log-odds of
:func:`medlite.metrics.auc.ovr_log_odds`, not ``p_k``, so saturated probabilities do not become ties.

Calibration: ``ece`` is the **top-label** ECE (the arg-max class's confidence against whether it is right;
torchmetrics' ``multiclass_calibration_error``); binary tasks add ``ece_positive_class`` (the positive
class's probability against the label; torchmetrics' ``binary_calibration_error``). The two differ and are
not interchangeable: compare a binary ``ece_positive_class`` with torchmetrics' BinaryCalibrationError and
``ece`` with its MulticlassCalibrationError.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import binary_roc, binary_stat_scores, multiclass_confusion_matrix

from medlite.errors import MedliteError
from medlite.metrics.auc import auc_summary, ovr_log_odds
from medlite.metrics.bootstrap import auc_from_counts, bootstrap_ci
from medlite.metrics.calibration import ECE_BINS, ReliabilityBins, confidence_bins, reliability_bins
from medlite.models.inputs import probs_from_logits

__all__ = ["ReliabilityBins", "auc_summary", "compute_metrics", "probs_from_logits", "reliability_bins",
           "roc_curves", "youden_threshold"]

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]

_ROW_SUM_TOL = 1e-2  # loose enough for float16 softmax, tight enough to reject multi-label sigmoid scores
_RANGE_TOL = 1e-6


def _as_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise MedliteError(f"{name}: cannot be read as an array ({err})") from None


def _check_probs(probs: ArrayLike, name: str) -> np.ndarray:
    """Validate class probabilities; return float64 (N, C) clipped to [0, 1]."""
    arr = _as_numpy(probs, name)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise MedliteError(f"{name}: expected class probabilities of shape (N, C >= 2), got {arr.shape}; "
                           f"convert single-logit outputs with probs_from_logits")
    if arr.shape[0] == 0:
        raise MedliteError(f"{name}: no samples (N == 0)")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise MedliteError(f"{name}: expected a float array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise MedliteError(f"{name}: {int(bad.sum())} rows contain NaN or inf (first: {int(np.argmax(bad))})")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        raise MedliteError(f"{name}: probabilities must lie in [0, 1], found [{lo:.4g}, {hi:.4g}]; "
                           f"convert logits with probs_from_logits")
    dev = np.abs(arr.sum(axis=1) - 1.0)
    if dev.max() > _ROW_SUM_TOL:
        row = int(np.argmax(dev))
        raise MedliteError(f"{name}: rows must sum to 1 (row {row} sums to {arr[row].sum():.4g}); "
                           f"convert logits with probs_from_logits")
    return np.clip(arr, 0.0, 1.0)


def _check_targets(targets: ArrayLike, n: int, num_classes: int, name: str) -> np.ndarray:
    """Validate class indices; return int64 (N,). (N, 1) is accepted because MedMNIST stores labels so."""
    arr = _as_numpy(targets, name)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.shape[0] != n:
        raise MedliteError(f"{name}: expected shape ({n},) to match the probabilities, got {arr.shape}")
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.number):
        raise MedliteError(f"{name}: expected integer class indices, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
        raise MedliteError(f"{name}: expected integer class indices, found non-integer values")
    arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= num_classes:
        raise MedliteError(f"{name}: class indices must lie in [0, {num_classes - 1}], "
                           f"found [{arr.min()}, {arr.max()}]")
    return arr


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """float64 num / den, 0 where den == 0 (scikit-learn's zero_division=0)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def _youden(scores: np.ndarray, y: np.ndarray, name: str) -> float:
    if y.min() == y.max():
        raise MedliteError(f"{name}: a Youden threshold needs both classes, found only class {int(y[0])}")
    fpr, tpr, thr = binary_roc(torch.from_numpy(scores), torch.from_numpy(y))
    k = int(torch.argmax(tpr - fpr))  # the first maximum is the highest threshold: fewest positive calls
    if float(tpr[k] - fpr[k]) <= 0.0:
        warnings.warn(f"{name}: Youden's J <= 0 at every threshold; the scores do not separate the classes",
                      UserWarning, stacklevel=3)
    if k == 0:  # torchmetrics prepends threshold 1.0 for the (0, 0) corner: nothing is called positive
        return float(scores.max())
    # binary_roc calls positive iff score >= thr[k] but medlite uses score > t: take the midpoint between
    # thr[k] and the next lower score, which also leaves a margin for unseen (test) scores
    cut = float(thr[k])
    lower = scores[scores < cut]
    return (cut + float(lower.max())) / 2 if lower.size else float(np.nextafter(cut, -np.inf))


def youden_threshold(probs_pos: ArrayLike, targets: ArrayLike) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1.

    Args:
        probs_pos: float (N,) probability of the positive class, in [0, 1].
        targets: int (N,) labels in {0, 1}; both must occur.

    Returns:
        ``t`` such that calling ``probs_pos > t`` positive maximises J on these data, placed midway between
        two adjacent distinct scores; ties in J go to the highest threshold.
    """
    scores = _as_numpy(probs_pos, "probs_pos")
    if scores.ndim != 1 or scores.dtype == bool or not np.issubdtype(scores.dtype, np.number):
        raise MedliteError(f"probs_pos: expected float probabilities of shape (N,), got {scores.dtype} "
                           f"{scores.shape}")
    # the (N, C) checks (N > 0, finite, in [0, 1]) applied to the equivalent two-column form
    scores = _check_probs(np.stack([1.0 - scores, scores], axis=1), "probs_pos")[:, 1]
    return _youden(scores, _check_targets(targets, scores.shape[0], 2, "targets"), "targets")


def _threshold_metrics(p_pos: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    # torchmetrics wants a threshold in [0, 1]; beyond it all calls are negative (or positive) anyway
    t = min(max(threshold, 0.0), 1.0)
    tp, fp, tn, fn = (int(v) for v in binary_stat_scores(torch.from_numpy(p_pos), torch.from_numpy(y), t)[:4])
    sens, spec = float(_ratio(tp, tp + fn)), float(_ratio(tn, tn + fp))
    return {"threshold": float(threshold), "accuracy": (tp + tn) / y.size, "sensitivity": sens,
            "specificity": spec, "balanced_accuracy": (sens + spec) / 2,
            "f1": float(_ratio(2 * tp, 2 * tp + fp + fn))}


def compute_metrics(probs: ArrayLike, targets: ArrayLike, class_names: Sequence[str], *,
                    val_probs: ArrayLike | None = None, val_targets: ArrayLike | None = None,
                    n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """All classification metrics of one evaluation, as a JSON-serialisable dict.

    Args:
        probs: float (N, C >= 2) class probabilities, rows summing to 1 (see :func:`probs_from_logits`).
        targets: int (N,) class indices in [0, C).
        class_names: C distinct names keying ``per_class``; for C == 2 class 1 is the positive class.
        val_probs: float (M, C) validation probabilities; only binary tasks use them (Youden threshold).
        val_targets: int (M,) validation class indices; given together with ``val_probs``.
        n_bootstrap: stratified bootstrap resamples for ``ci95``; 0 skips the CIs (they become None).
        seed: bootstrap seed; equal inputs and seed give equal CIs.

    Returns:
        ``accuracy``; ``balanced_accuracy`` (mean recall over the classes present in ``targets``);
        ``macro_f1`` (over classes present in targets or predictions, as scikit-learn); ``auc_macro``
        (one-vs-rest AUC averaged over all classes; for C == 2 the positive class's AUC; None when a class
        has none, i.e. is absent from ``targets`` or is every target); ``auc_macro_present`` (the average
        over the classes that have one, equal to ``auc_macro`` when all do; None when none does);
        ``auc_classes`` (the names of those classes; for C == 2 the positive class);
        ``per_class`` {name: {precision, recall, f1, specificity, auc, accuracy}}; ``confusion_matrix``
        (rows true, columns predicted); ``ece`` (top-label ECE, 15 equal-width confidence bins); ``ci95``
        {accuracy, auc_macro, auc_macro_present: [lo, hi] or None}; ``n``; and for C == 2
        ``ece_positive_class`` (ECE of the positive class's probability, torchmetrics' binary convention) and
        ``thresholds`` {"0.5", "youden": {threshold,
        accuracy, sensitivity, specificity, balanced_accuracy, f1}}, the Youden entry with ``chosen_on`` =
        "val" (or "test" without validation data), or None for a one-class test set without validation data.

    Raises:
        MedliteError: bad shapes, NaN or out-of-range probabilities, out-of-range targets, N == 0, wrong
            class names, only one of ``val_probs`` / ``val_targets``, or a bad ``n_bootstrap``.
    """
    p = _check_probs(probs, "probs")
    n, c = p.shape
    y = _check_targets(targets, n, c, "targets")
    names = [str(name) for name in class_names]
    if len(names) != c or len(set(names)) != c:
        raise MedliteError(f"class_names: expected {c} distinct names (one per column of probs), got {names}")
    if (val_probs is None) != (val_targets is None):
        raise MedliteError("val_probs / val_targets: give both or neither")
    if val_probs is not None:
        vp = _check_probs(val_probs, "val_probs")
        if vp.shape[1] != c:
            raise MedliteError(f"val_probs: expected {c} columns like probs, got {vp.shape[1]}")
        vy = _check_targets(val_targets, vp.shape[0], c, "val_targets")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int | np.integer) or n_bootstrap < 0:
        raise MedliteError(f"n_bootstrap: expected an integer >= 0, got {n_bootstrap!r}")

    cm = multiclass_confusion_matrix(torch.from_numpy(p), torch.from_numpy(y), c).numpy().astype(np.int64)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    fp, fn = predicted - tp, support - tp
    precision, recall, f1 = _ratio(tp, predicted), _ratio(tp, support), _ratio(2 * tp, 2 * tp + fp + fn)
    specificity = _ratio(n - support - fp, n - support)
    has_auc = (support > 0) & (support < n)
    if not has_auc.all():
        why = [f"{names[k]!r} ({'absent' if support[k] == 0 else 'all samples'})" for k in range(c)
               if not has_auc[k]]
        warnings.warn(f"targets: AUC undefined for class {', '.join(why)}; reported as null, and so is "
                      f"auc_macro (auc_macro_present averages the {int(has_auc.sum())} classes that have one)",
                      UserWarning, stacklevel=2)
    if n > 1 and np.count_nonzero(predicted) == 1 and np.count_nonzero(support) > 1:
        only = names[int(np.argmax(predicted))]
        warnings.warn(f"predictions: the model predicts {only!r} for all {n} images, so its accuracy is just that "
                      f"class's share (a collapsed model: check the learning rate, class balance and epochs)",
                      UserWarning, stacklevel=2)
    ones = np.ones((1, n), dtype=np.int64)
    scores = ovr_log_odds(p)
    auc = [float(auc_from_counts(scores[:, k], y == k, ones)[0]) if has_auc[k] else None for k in range(c)]
    auc_classes = ([1] if has_auc[1] else []) if c == 2 else [int(k) for k in np.flatnonzero(has_auc)]
    complete = bool(has_auc.all())
    present = float(np.mean([auc[k] for k in auc_classes])) if auc_classes else None
    ci = bootstrap_ci(p, y, auc_classes, int(n_bootstrap), seed, scores=scores)
    ci = {"accuracy": ci["accuracy"], "auc_macro": ci["auc_macro"] if complete else None,
          "auc_macro_present": ci["auc_macro"]}

    metrics: dict[str, Any] = {
        "n": int(n),
        "accuracy": float(tp.sum() / n),
        "balanced_accuracy": float(recall[support > 0].mean()),
        "macro_f1": float(f1[(tp + fp + fn) > 0].mean()),
        "auc_macro": present if complete else None,
        "auc_macro_present": present,
        "auc_classes": [names[k] for k in auc_classes],
        "ece": reliability_bins(p, y).ece,
        "ci95": ci,
        "per_class": {
            names[k]: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                       "specificity": float(specificity[k]), "auc": auc[k],
                       "accuracy": float((n - fp[k] - fn[k]) / n)}
            for k in range(c)
        },
        "confusion_matrix": cm.tolist(),
    }
    if c == 2:
        metrics["ece_positive_class"] = confidence_bins(p[:, 1], y == 1, ECE_BINS).ece
        youden: dict[str, Any] | None = None
        if val_probs is not None:
            cut = _youden(vp[:, 1], vy, "val_targets")
            youden = {**_threshold_metrics(p[:, 1], y, cut), "chosen_on": "val"}
        elif has_auc[1]:  # choosing on the test set itself is optimistic; chosen_on says so
            youden = {**_threshold_metrics(p[:, 1], y, _youden(p[:, 1], y, "targets")), "chosen_on": "test"}
        else:
            warnings.warn("targets: one-class test set and no validation data, so no Youden threshold",
                          UserWarning, stacklevel=2)
        metrics["thresholds"] = {"0.5": _threshold_metrics(p[:, 1], y, 0.5), "youden": youden}
    return metrics


def roc_curves(probs: ArrayLike, targets: ArrayLike,
               class_names: Sequence[str] | None = None) -> dict[str | int, tuple[np.ndarray, np.ndarray]]:
    """One-vs-rest ROC curves for plotting.

    Args:
        probs: float (N, C) class probabilities.
        targets: int (N,) class indices.
        class_names: optional C names used as keys (default: class indices).

    Returns:
        ``{class: (fpr, tpr)}``, float (K,) arrays from (0, 0) to (1, 1); for C == 2 only the positive
        class 1. Classes lacking positive or negative samples are left out with a warning.
    """
    p = _check_probs(probs, "probs")
    y = _check_targets(targets, p.shape[0], p.shape[1], "targets")
    if class_names is not None and len(class_names) != p.shape[1]:
        raise MedliteError(f"class_names: expected {p.shape[1]} names, got {len(class_names)}")
    keys: list[str | int] = list(class_names) if class_names is not None else list(range(p.shape[1]))
    curves: dict[str | int, tuple[np.ndarray, np.ndarray]] = {}
    for k in [1] if p.shape[1] == 2 else range(p.shape[1]):
        positive = y == k
        if positive.all() or not positive.any():
            warnings.warn(f"targets: no ROC curve for class {keys[k]!r}, it needs positives and negatives",
                          UserWarning, stacklevel=2)
            continue
        fpr, tpr, _ = binary_roc(torch.from_numpy(p[:, k]), torch.from_numpy(positive.astype(np.int64)))
        curves[keys[k]] = (fpr.numpy(), tpr.numpy())
    return curves
