"""Two pieces of the AUC report: the score AUCs rank, and the sentence that says what ``auc_macro`` covers.

**Ranking score.** A one-vs-rest AUC orders the samples by ``p_k``. A confident model's largest probability
rounds to 1.0 (float32 beyond a logit margin of about 17, float64 beyond 37), which turns distinct scores into
ties: a binary AUC of 0.968 on the logits read 0.950 from float32 probabilities at logit scale 40. The
probabilities of the *other* classes keep their precision there (``sigmoid(-40)`` is 4e-18, exactly
representable), so :func:`ovr_log_odds` ranks ``log p_k - log(sum of the other p_j)``: increasing in ``p_k``,
hence the same AUC wherever ``p_k`` itself is exact, and equal to the logit of a single-logit binary model.

**Macro AUC with an absent class.** A class missing from the labels (or making up all of them) has no AUC.
scikit-learn and MedMNIST's evaluator (which calls it per class) give NaN then (older scikit-learn raises);
medlite reports ``auc_macro = None``, the mean over the scored classes as ``auc_macro_present`` and their
names as ``auc_classes``, and :func:`auc_summary` says so wherever a summary prints it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def ovr_log_odds(p: np.ndarray) -> np.ndarray:
    """float64 (N, C) one-vs-rest ranking scores ``log p_k - log(sum_{j != k} p_j)`` (see the module docstring).

    Increasing in ``p_k`` (so AUCs are those of ``p_k``), but the sum of the other classes is added up from
    their own small, exact probabilities instead of ``1 - p_k``, which is 0 once ``p_k`` has rounded to 1.
    """
    rest = np.stack([np.delete(p, k, axis=1).sum(axis=1) for k in range(p.shape[1])], axis=1)
    with np.errstate(divide="ignore"):  # p_k = 0 -> -inf, rest = 0 -> +inf: still correctly ordered
        return np.log(p) - np.log(rest)


def auc_summary(metrics: Mapping[str, Any], digits: int = 3) -> str:
    """The macro AUC of a :func:`medlite.metrics.classification.compute_metrics` dict in words, saying so when a
    class has no AUC.

    ``"macro AUC 0.912"``; ``"macro AUC n/a (2 of 3 classes have an AUC, mean 0.874: a, b)"`` when a class is
    absent from the labels; ``"macro AUC n/a (no class has an AUC)"`` for a one-class test set.
    """
    value = metrics.get("auc_macro")
    if value is not None:
        return f"macro AUC {value:.{digits}f}"
    present, scored = metrics.get("auc_macro_present"), metrics.get("auc_classes") or []
    if present is None:
        return "macro AUC n/a (no class has an AUC)"
    total = len(metrics.get("per_class") or {}) or len(scored)
    return (f"macro AUC n/a ({len(scored)} of {total} classes have an AUC, mean {present:.{digits}f}: "
            f"{', '.join(map(str, scored))})")
