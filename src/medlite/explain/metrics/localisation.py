"""Localisation of saliency against lesion masks: the pointing game and the energy-based pointing game.

* Pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016): a hit when the
  saliency maximum falls inside the annotated region, with a tolerance (15 px at 224 px input in the original;
  here scaled with the image side, ``round(15 * S / 224)``, by dilating the mask with a disk).
* Energy-based pointing game (Wang et al., Score-CAM, CVPR-W 2020, official code): the share of the saliency
  mass inside the mask, ``sum_in(L) / sum_all(L)``; higher = better, and not decided by a single hot pixel.

Both are defined only for images with a non-empty mask (e.g. not for "Normal" phantoms); callers select those.
"""

from __future__ import annotations

import cv2
import numpy as np

from medlite.errors import MedliteError


def default_tolerance(side: int) -> int:
    """Pointing-game tolerance in pixels for an image of side ``side``: 15 px at 224 px, scaled."""
    return int(round(15 * side / 224))


def _check(saliency: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sal = np.asarray(saliency, dtype=np.float64)
    msk = np.asarray(masks) > 0
    if sal.ndim != 3 or sal.shape != msk.shape:
        raise MedliteError(f"saliency and masks must both be (B, H, W), got {sal.shape} and {msk.shape}")
    return np.nan_to_num(sal, nan=0.0), msk


def pointing_game(saliency: np.ndarray, masks: np.ndarray, tolerance: int | None = None) -> np.ndarray:
    """Hits of the pointing game.

    Args:
        saliency: float (B, H, W).
        masks: bool or 0/1 (B, H, W) lesion masks (non-empty).
        tolerance: pixels of slack around the mask; ``None`` = :func:`default_tolerance` of the image side.

    Returns:
        bool (B,): whether each map's maximum lies in its (dilated) mask. A constant map (no maximum) misses.
    """
    sal, msk = _check(saliency, masks)
    tol = default_tolerance(max(sal.shape[1:])) if tolerance is None else int(tolerance)
    if tol < 0:
        raise MedliteError(f"tolerance: must be >= 0, got {tol}")
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tol + 1, 2 * tol + 1)) if tol else None
    hits = np.zeros(len(sal), bool)
    for i, (s, m) in enumerate(zip(sal, msk, strict=True)):
        if s.max() <= s.min():
            continue
        region = cv2.dilate(m.astype(np.uint8), kernel) > 0 if kernel is not None else m
        hits[i] = bool(region.flat[int(np.argmax(s))])
    return hits


def energy_in_mask(saliency: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of the (non-negative) saliency mass inside each mask, float (B,); NaN for an all-zero map."""
    sal, msk = _check(saliency, masks)
    sal = np.clip(sal, 0.0, None)
    total = sal.sum(axis=(1, 2))
    inside = (sal * msk).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)
