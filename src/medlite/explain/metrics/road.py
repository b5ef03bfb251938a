"""ROAD, Remove And Debias (Rong, Leemann, Borisov, Kasneci, Kasneci, "A Consistent and Efficient Evaluation
Strategy for Attribution Methods", ICML 2022, arXiv:2202.00449).

Removing pixels by setting them to a constant leaks the *shape* of the removed region to the model, which
then scores the mask rather than the evidence. ROAD fills removed pixels by **noisy linear imputation**: each
removed pixel equals the weighted mean of its 8 neighbours (weight 1/6 for the 4 edge neighbours, 1/12 for the
4 diagonal ones; neighbours outside the image are left out and the rest renormalised), with removed neighbours
themselves unknown, so all removed pixels are solved together as one sparse linear system
(``scipy.sparse.linalg.spsolve``), and N(0, noise^2) noise is added to the filled values.

Scores, as in the authors' code used by pytorch-grad-cam: for each percentile p in 10, 20, ..., 90 the p %
most relevant (MoRF) or least relevant (LeRF) pixels are removed and the explained class's probability is
recorded. ``combined = (mean_p LeRF - mean_p MoRF) / 2``: higher = more faithful (removing what the map calls
important hurts, removing what it calls unimportant does not). Imputation here runs on the single-channel
[0, 1] intensity image (noise std 0.01 on that scale) before the model's normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import spsolve

from medlite.errors import MedliteError
from medlite.explain.metrics.faithfulness import Scorer, saliency_rank

# (row offset, column offset, weight) of the 8 neighbours, from the ROAD reference implementation.
NEIGHBOUR_WEIGHTS: tuple[tuple[int, int, float], ...] = (
    (-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12),
    (0, -1, 1 / 6), (0, 1, 1 / 6),
    (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12),
)
ROAD_PERCENTILES: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def noisy_linear_impute(image: np.ndarray, removed: np.ndarray, noise: float = 0.01,
                        rng: np.random.Generator | None = None) -> np.ndarray:
    """Fill removed pixels with the neighbour-weighted mean of their 8-neighbourhood (+ Gaussian noise).

    Args:
        image: float (H, W) intensities.
        removed: bool (H, W), True where the pixel is removed; at least one pixel must remain.
        noise: standard deviation of the noise added to every filled value (0 = none).
        rng: random generator for the noise (default: a fresh unseeded one).

    Returns:
        float32 (H, W): ``image`` with the removed pixels replaced.
    """
    img = np.asarray(image, dtype=np.float64)
    gone = np.asarray(removed, dtype=bool)
    if gone.shape != img.shape or img.ndim != 2:
        raise MedliteError(f"image and removed must be (H, W) of one shape, got {img.shape} and {gone.shape}")
    idx = np.flatnonzero(gone)
    if idx.size == 0:
        return img.astype(np.float32)
    if idx.size == gone.size:
        raise MedliteError("removed: every pixel is removed; nothing to impute from")
    h, w = img.shape
    variable = np.full(gone.size, -1, np.int64)
    variable[idx] = np.arange(idx.size)
    rows, cols = np.divmod(idx, w)
    diag = np.zeros(idx.size)  # sum of the weights of neighbours inside the image
    rhs = np.zeros(idx.size)  # weighted sum of known neighbour values
    a_rows, a_cols, a_vals = [], [], []
    flat_img, flat_gone = img.ravel(), gone.ravel()
    for dr, dc, weight in NEIGHBOUR_WEIGHTS:
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        eq = np.flatnonzero(inside)
        neighbour = r[inside] * w + c[inside]
        diag[eq] += weight
        unknown = flat_gone[neighbour]
        a_rows.append(eq[unknown])
        a_cols.append(variable[neighbour[unknown]])
        a_vals.append(np.full(int(unknown.sum()), -weight))
        np.add.at(rhs, eq[~unknown], weight * flat_img[neighbour[~unknown]])
    eye = np.arange(idx.size)
    system = coo_matrix((np.concatenate([diag, *a_vals]), (np.concatenate([eye, *a_rows]),
                                                           np.concatenate([eye, *a_cols]))),
                        shape=(idx.size, idx.size)).tocsc()
    solution = np.atleast_1d(spsolve(system, rhs))
    if noise > 0:
        solution = solution + noise * (rng or np.random.default_rng()).standard_normal(idx.size)
    out = img.copy().ravel()
    out[idx] = solution
    return out.reshape(h, w).astype(np.float32)


def road_scores(scorer: Scorer, images: torch.Tensor, saliency: torch.Tensor, targets: torch.Tensor, *,
                percentiles: Sequence[int] = ROAD_PERCENTILES, noise: float = 0.01, seed: int = 0
                ) -> dict[str, torch.Tensor]:
    """ROAD MoRF / LeRF probabilities and the combined score of a batch.

    Args:
        scorer: ``(N, 1, H, W)`` intensities in [0, 1] -> (N, K) probabilities (see ``model_scorer``).
        images: float (B, H, W) intensities in [0, 1].
        saliency: float (B, H, W), higher = more important.
        targets: int64 (B,) explained classes.
        percentiles: percentages of pixels removed, each in (0, 100).
        noise: imputation noise std on the [0, 1] scale.
        seed: seed of the imputation noise (image ``i`` uses ``seed + i``).

    Returns:
        ``{"morf": (B, P), "lerf": (B, P), "combined": (B,)}`` float tensors.
    """
    if images.ndim != 3 or saliency.shape != images.shape or targets.shape != images.shape[:1]:
        raise MedliteError("images (B, H, W), saliency (B, H, W) and targets (B,) must agree")
    if not percentiles or any(not 0 < p < 100 for p in percentiles):
        raise MedliteError(f"percentiles: need values in (0, 100), got {list(percentiles)}")
    ranks = saliency_rank(saliency.cpu()).numpy()
    n_pixels = ranks.shape[1]
    morf, lerf = [], []
    for i, (img, rank) in enumerate(zip(images.float().cpu().numpy(), ranks, strict=True)):
        rng = np.random.default_rng(seed + i)
        filled = []
        for order in ("morf", "lerf"):
            for p in percentiles:
                k = int(round(n_pixels * p / 100))
                gone = rank < k if order == "morf" else rank >= n_pixels - k
                filled.append(noisy_linear_impute(img, gone.reshape(img.shape), noise, rng))
        probs = scorer(torch.from_numpy(np.stack(filled))[:, None])[:, int(targets[i])]
        morf.append(probs[: len(percentiles)])
        lerf.append(probs[len(percentiles) :])
    morf_t, lerf_t = torch.stack(morf), torch.stack(lerf)
    return {"morf": morf_t, "lerf": lerf_t, "combined": (lerf_t.mean(1) - morf_t.mean(1)) / 2}
