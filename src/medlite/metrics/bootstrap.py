"""Vectorised stratified bootstrap of accuracy and one-vs-rest AUC (percentile 95 % intervals).

A resample is represented by how often each sample occurs in it (an int64 count matrix), so accuracy and the
rank-based (Mann-Whitney) AUC of 1,000 resamples need one sort of the scores, not 1,000.
"""

from __future__ import annotations

import numpy as np

BOOT_CELLS = 1 << 21  # resamples x samples held at once by the bootstrap (16 MiB of int64 counts)


def _stratified_counts(y: np.ndarray, rows: int, rng: np.random.Generator) -> np.ndarray:
    """int64 (rows, N): how often each sample occurs in each resample; every class keeps its size."""
    n = y.size
    picks = np.empty((rows, n), dtype=np.int64)
    start = 0
    for k in np.unique(y):
        members = np.flatnonzero(y == k)
        picks[:, start:start + members.size] = members[rng.integers(0, members.size, (rows, members.size))]
        start += members.size
    flat = (np.arange(rows, dtype=np.int64)[:, None] * n + picks).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n)


def _accuracy_from_counts(correct: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """float (B,) accuracy of B resamples; ``correct`` (N,) 0/1, ``counts`` (B, N) sample multiplicities."""
    return counts @ correct.astype(np.float64) / counts.sum(axis=1)


def auc_from_counts(scores: np.ndarray, positive: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """float (B,) Mann-Whitney AUC of B resamples (ties count 1/2, equal to the trapezoidal ROC AUC).

    ``counts`` (B, N) are sample multiplicities (all ones: the AUC of the data themselves). Sorting once and
    counting, for each positive, the resampled negatives scored below it with cumulative sums makes a
    resample O(N) instead of the O(N log N) of re-ranking it. NaN where a resample lacks a class.
    """
    neg, pos = np.flatnonzero(~positive), np.flatnonzero(positive)
    order = neg[np.argsort(scores[neg], kind="stable")]
    lo = np.searchsorted(scores[order], scores[pos], side="left")
    hi = np.searchsorted(scores[order], scores[pos], side="right")
    cum = np.zeros((counts.shape[0], order.size + 1))
    np.cumsum(counts[:, order], axis=1, out=cum[:, 1:])
    below = cum[:, lo] + 0.5 * (cum[:, hi] - cum[:, lo])  # weighted negatives under each positive, ties 1/2
    w_pos = counts[:, pos]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w_pos * below).sum(axis=1) / (w_pos.sum(axis=1) * cum[:, -1])


def bootstrap_ci(p: np.ndarray, y: np.ndarray, auc_classes: list[int], n_bootstrap: int,
                 seed: int, *, scores: np.ndarray | None = None) -> dict[str, list[float] | None]:
    """Stratified percentile bootstrap. Resampling within each class keeps the test prevalence fixed and every
    AUC defined in every resample (a plain resample of a small test set can lose a rare class).

    ``p`` (N, C) gives the arg-max predictions; AUCs rank ``scores`` (N, C), default ``p`` (metrics passes the
    one-vs-rest log-odds, which do not saturate). ``auc_macro`` is the interval of the mean over ``auc_classes``.
    """
    scores = p if scores is None else scores
    if n_bootstrap == 0:
        return {"accuracy": None, "auc_macro": None}
    rng = np.random.default_rng(seed)
    correct = p.argmax(axis=1) == y
    acc, auc = np.empty(n_bootstrap), np.full(n_bootstrap, np.nan)
    chunk = max(1, BOOT_CELLS // y.size)
    for start in range(0, n_bootstrap, chunk):
        counts = _stratified_counts(y, min(chunk, n_bootstrap - start), rng)
        part = slice(start, start + counts.shape[0])
        acc[part] = _accuracy_from_counts(correct, counts)
        if auc_classes:
            auc[part] = np.mean([auc_from_counts(scores[:, k], y == k, counts) for k in auc_classes], axis=0)
    acc_ci, auc_ci = ([float(q) for q in np.percentile(v, [2.5, 97.5])] for v in (acc, auc))
    return {"accuracy": acc_ci, "auc_macro": auc_ci if auc_classes else None}
