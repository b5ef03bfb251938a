"""Images for display, torch-free: windowing, saliency maps put back on the original geometry, overlays.

Shared by the explainers (``medlite explain``), the ONNX class activation maps (:mod:`medlite.deploy.cam`) and
the point-of-care server; it lives in the data layer so that the torch-free paths can use it.

A map is computed on the preprocessed S x S model input. :func:`to_original_geometry` undoes the
preprocessing's geometry (``resize`` of :class:`~medlite.data.preprocess.PreprocessConfig`):

* ``pad``: the image was scaled so its longest side is S and letterboxed; the letterbox band is cut off and
  the content scaled back to (H, W);
* ``crop``: the central min(H, W) square was scaled to S; the map is scaled back into that square and the rest
  of the image (never seen by the model) gets 0;
* ``stretch``: the map is scaled back to (H, W).

:func:`overlay` windows the grayscale base for display (percentile stretch, so 12/16-bit images and dark
scans look right), colours the map with a named matplotlib colormap and alpha-blends the two into RGB uint8
(pytorch-grad-cam #469).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from medlite.errors import MedliteError
from medlite.utils.atomic import atomic_write

RESIZE_MODES = ("pad", "crop", "stretch")


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    shrink = width <= img.shape[1] and height <= img.shape[0]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(img, dtype=np.float32), (width, height), interpolation=interp)


def to_original_geometry(saliency: np.ndarray, shape: tuple[int, int], resize: str) -> np.ndarray:
    """Put a map computed on the S x S model input back on the original image.

    Args:
        saliency: float (S, S) map on the preprocessed input.
        shape: (H, W) of the original image.
        resize: the preprocessing's ``resize`` mode: ``"pad"``, ``"crop"`` or ``"stretch"``.

    Returns:
        float32 (H, W); for ``crop`` the pixels outside the central square are 0.
    """
    sal = np.asarray(saliency, dtype=np.float32)
    if sal.ndim != 2 or sal.shape[0] != sal.shape[1]:
        raise MedliteError(f"saliency: expected a square (S, S) map, got shape {sal.shape}")
    if resize not in RESIZE_MODES:
        raise MedliteError(f"resize: {resize!r} is not one of {', '.join(RESIZE_MODES)}")
    size = sal.shape[0]
    h, w = int(shape[0]), int(shape[1])
    if resize == "stretch":
        return _resize(sal, w, h)
    if resize == "pad":
        # Same arithmetic as preprocess._fit / _letterbox: content th x tw centred on the S x S canvas.
        scale = size / max(h, w)
        th, tw = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = (size - th) // 2, (size - tw) // 2
        return _resize(sal[top : top + th, left : left + tw], w, h)
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    out = np.zeros((h, w), np.float32)
    out[top : top + side, left : left + side] = _resize(sal, side, side)
    return out


def window(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Display windowing: float32 (H, W) in [0, 1] from the ``low``..``high`` intensity percentiles.

    Args:
        image: (H, W) or (1, H, W) grayscale in any dtype and range.
        low / high: percentiles mapped to black and white.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2:
        raise MedliteError(f"image: expected a grayscale (H, W) or (1, H, W) array, got shape {img.shape}")
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return np.zeros(img.shape, np.float32)
    lo, hi = np.percentile(finite, [low, high])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(img.shape, np.float32)
    return np.clip((np.nan_to_num(img, nan=lo) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def colorize(saliency: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """RGB uint8 (H, W, 3) of a map in [0, 1] (values outside are clipped) with a matplotlib colormap name."""
    import matplotlib

    if colormap not in matplotlib.colormaps:
        raise MedliteError(f"colormap: unknown matplotlib colormap {colormap!r} (e.g. jet, inferno, turbo)")
    rgba = matplotlib.colormaps[colormap](np.clip(np.nan_to_num(saliency), 0.0, 1.0))
    return np.round(rgba[..., :3] * 255.0).astype(np.uint8)


def overlay(image: np.ndarray, saliency: np.ndarray, colormap: str = "jet",
            alpha: float = 0.45) -> np.ndarray:
    """Blend a colour-mapped saliency map over a windowed grayscale image.

    Args:
        image: grayscale (H, W) or (1, H, W), any dtype and intensity range.
        saliency: float (H, W) in [0, 1], same size as ``image``.
        colormap: matplotlib colormap name.
        alpha: weight of the heatmap in [0, 1] (0 = image only).

    Returns:
        RGB uint8 (H, W, 3).
    """
    base = window(image)
    sal = np.asarray(saliency, dtype=np.float32)
    if sal.shape != base.shape:
        raise MedliteError(f"saliency has shape {sal.shape} but the image is {base.shape}; "
                           "map it back with to_original_geometry first")
    if not 0.0 <= alpha <= 1.0:
        raise MedliteError(f"alpha: must be in [0, 1], got {alpha}")
    gray = np.repeat(base[..., None] * 255.0, 3, axis=2)
    blended = (1.0 - alpha) * gray + alpha * colorize(sal, colormap).astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write RGB uint8 (H, W, 3) or grayscale uint8 (H, W) as PNG, atomically (parent folders created)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise MedliteError(f"image: expected uint8 (H, W) or (H, W, 3), got {arr.dtype} {arr.shape}")
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if arr.ndim == 3 else arr)
    if not ok:
        raise MedliteError(f"{path}: PNG encoding failed")
    with atomic_write(path, "wb") as handle:
        handle.write(encoded.tobytes())
    return Path(path)
