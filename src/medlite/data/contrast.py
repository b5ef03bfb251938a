"""Denoising and contrast equalisation on the float image, before it is quantised to uint8.

OpenCV's ``equalizeHist`` takes only uint8 and its CLAHE bins 8-bit images into 256 grey levels, so running
them after ``round(x * 255)`` first throws away every level the 8-bit cut merges: a 12-bit radiograph that
occupies a sixteenth of [0, 1] (``BitsStored = 16`` headers, 16-bit PNG exports) keeps 16 levels, and
equalising afterwards cannot bring the others back. These versions see the float image:

* median filter and Gaussian blur on float32 (OpenCV for median apertures 3 and 5, SciPy's exact median above,
  both replicating the border like ``cv2.medianBlur``);
* global equalisation by rank: ``equalizeHist``'s mapping ``(cdf(v) - cdf(v_min)) / (N - count(v_min))``
  evaluated on the distinct float values instead of 256 bins, so distinct inputs stay distinct;
* CLAHE by OpenCV on the float image stretched to its own [min, max] and quantised for that step only.
  CLAHE maps each pixel through the clipped cumulative histogram of its tiles, a rank transform that does not
  depend on the input scale, so the stretch changes nothing but where the 256 bins of OpenCV's clip limit
  (``clahe_clip``, defined on them) fall: on the values present rather than on [0, 1] (the same choice as
  scikit-image's ``equalize_adapthist``).

Every function takes and returns float32 (H, W) in [0, 1].
"""

from __future__ import annotations

import cv2
import numpy as np


def median_float(img: np.ndarray, ksize: int) -> np.ndarray:
    """Median filter with an odd aperture ``ksize`` >= 3 (replicated border)."""
    img = np.ascontiguousarray(img, dtype=np.float32)
    if ksize <= 5:
        return cv2.medianBlur(img, ksize)  # OpenCV's float median supports apertures 3 and 5 only
    from scipy.ndimage import median_filter

    return median_filter(img, size=ksize, mode="nearest")


def gaussian_float(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` pixels (OpenCV picks the kernel size)."""
    return cv2.GaussianBlur(np.ascontiguousarray(img, dtype=np.float32), (0, 0), sigmaX=sigma)


def equalize_float(img: np.ndarray) -> np.ndarray:
    """Global histogram equalisation on exact values: ``cv2.equalizeHist``'s mapping without 8-bit binning.

    A constant image is returned unchanged (as ``equalizeHist`` does).
    """
    values, inverse, counts = np.unique(img, return_inverse=True, return_counts=True)
    if values.size < 2:
        return np.asarray(img, dtype=np.float32)
    cdf = np.cumsum(counts)
    out = (cdf[inverse.reshape(img.shape)] - cdf[0]) / float(img.size - cdf[0])
    return out.astype(np.float32)


def clahe_float(img: np.ndarray, clip: float, grid: int) -> np.ndarray:
    """OpenCV CLAHE (``clipLimit=clip``, ``grid`` x ``grid`` tiles) of the image stretched to its own range."""
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.asarray(img, dtype=np.float32)
    u8 = np.rint((img - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    clahe = cv2.createCLAHE(clipLimit=clip, tileGridSize=(grid, grid))
    return clahe.apply(u8).astype(np.float32) / np.float32(255.0)
