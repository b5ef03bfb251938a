"""Cheap checks of an input image before the model sees it, each giving its reason in plain words.

A prediction for an input that fails one is ``rejected: <reason>`` (issue "Trustworthy outputs"); the
out-of-distribution gate (:mod:`medlite.metrics.ood`) handles what passes but is still unlike the training
data. The checks, in the order :func:`check_image` runs them:

1. **tiny image**: shorter side under :data:`MIN_SHORT_SIDE` pixels;
2. **extreme aspect ratio**: longer / shorter side above :data:`MAX_ASPECT_RATIO`;
3. **colour photograph**: at least :data:`COLOUR_MIN_FRACTION` of the pixels distinctly coloured;
4. **nearly constant image**: the central 98 % of the intensities span under :data:`MIN_INTENSITY_RANGE`.

:func:`read_image` returns grayscale, so the colour check needs the decoded channels:
:func:`read_for_checks` returns both from one file read; the gray image is exactly :func:`read_image`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from medlite.data.imageio import decode_image, image_info, load_bytes
from medlite.errors import DataError

__all__ = ["COLOUR_CHROMA", "COLOUR_MIN_FRACTION", "MAX_ASPECT_RATIO", "MIN_INTENSITY_RANGE", "MIN_SHORT_SIDE",
           "CheckedImage", "check_aspect_ratio", "check_colour", "check_constant", "check_image", "check_size",
           "read_for_checks"]

# A chest film shorter than 64 px maps ~35 cm onto 64 px (>= 5 mm per pixel): ribs and vessels (a few mm)
# and the lesions medlite classifies are no longer resolved, and such files are thumbnails or icons. Runs
# trained on smaller images (MedMNIST 28 px) pass their own input size as ``min_side``.
MIN_SHORT_SIDE = 64

# Detector and film formats of chest radiographs are 35x43, 43x43, 24x30 and 43x35 cm (ratios 1 to 1.25); a
# portrait phone photo is 2.2:1. Beyond 3:1 the image is a strip (a cropped report, a stitched long-leg or
# full-spine film), and letterboxing it to a square would leave two thirds of the model's input as padding.
MAX_ASPECT_RATIO = 3.0

# A pixel is "distinctly coloured" when its channels differ by >= 0.1 of the full scale (26 of 255 levels):
# gray saved as RGB, JPEG chroma noise included, stays within a few levels. Requiring 10 % of the pixels lets
# X-rays with coloured annotations (arrows, rulers, text: a few %) through; the colour photographs of
# scikit-image's sample data have 42-95 % (astronaut 42 %, rocket 79 %, coffee 92 %, chelsea 95 %).
COLOUR_CHROMA = 0.1
COLOUR_MIN_FRACTION = 0.10

# The model receives 256 gray levels (preprocessing quantises to uint8). If the central 98 % of the pixels
# span fewer than 4 of them, there is no anatomy to see at any window: a blank, black or saturated frame.
MIN_INTENSITY_RANGE = 4.0 / 255.0

_SAMPLE_PIXELS = 512 * 512  # statistics on a strided subsample: enough for 1 % quantiles, fast on 4k images


@dataclass(frozen=True)
class CheckedImage:
    """An image decoded for the checks.

    Attributes:
        gray: float32 (H, W) in [0, 1], exactly what :func:`medlite.data.imageio.read_image` returns.
        colour: float32 (H, W, 3) in [0, 1] (BGR for PNG/JPEG/BMP/TIFF, RGB for DICOM; alpha dropped), or
            ``None`` when the file stores one channel (gray, gray + alpha, any MONOCHROME DICOM).
    """

    gray: np.ndarray
    colour: np.ndarray | None = None


def _unit(img: np.ndarray, name: str = "image") -> np.ndarray:
    """uint8 / uint16 divided by the storage maximum, float as is: float32 (the intensity convention of imageio)."""
    if img.dtype in (np.uint8, np.uint16):
        return img.astype(np.float32) / float(np.iinfo(img.dtype).max)
    if img.dtype.kind == "f":
        return img.astype(np.float32)
    raise DataError(f"{name}: unsupported pixel type {img.dtype} (expected 8/16-bit unsigned integer or float)")


def _dicom_colour(data: bytes, path: Path) -> np.ndarray:
    # Only the pixel-module tags are parsed (never identifying attributes), as medlite.data.dicom does.
    from medlite.data.dicom import read_dataset  # here: pydicom loads only for DICOM files (start-up)

    arr = np.asarray(read_dataset(data, path, pixels=True).pixel_array)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise DataError(f"{path}: DICOM with 3 samples per pixel has pixel array shape {arr.shape}")
    return _unit(arr[:, :, :3], str(path))


def read_for_checks(path: str | Path, *, dicom_window: str = "header") -> CheckedImage:
    """Read an image file once and decode it as :func:`read_image` does, plus its colour channels if any.

    Args:
        path: a PNG, JPEG, BMP, TIFF or DICOM file.
        dicom_window: as :func:`read_image` (so that ``gray`` is the image the model is given).

    Raises:
        DataError: as :func:`medlite.data.imageio.read_image` (missing, empty, truncated, corrupt file).
    """
    path = Path(path)
    return checked_from_bytes(load_bytes(path), path, dicom_window=dicom_window)


def checked_from_bytes(buf: np.ndarray, path: Path, *, dicom_window: str = "header") -> CheckedImage:
    """:func:`read_for_checks` of a file's bytes already in memory (uint8 (N,) buffer; ``path`` names it in
    errors and gives its suffix): what the point-of-care server checks of an upload."""
    gray = decode_image(buf, path, dicom_window=dicom_window)
    info = image_info(path, buf.tobytes())
    if info.channels < 3:
        return CheckedImage(gray)
    if info.format == "DICOM":
        return CheckedImage(gray, _dicom_colour(buf.tobytes(), path))
    # A second decode, only for colour files; without EXIF rotation, which the chroma statistic ignores.
    raw = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 3 or raw.shape[2] < 3:  # e.g. a palette PNG that decodes to gray
        return CheckedImage(gray)
    return CheckedImage(gray, _unit(raw[:, :, :3], str(path)))


def _sample(img: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil(np.sqrt(img.shape[0] * img.shape[1] / _SAMPLE_PIXELS))))
    return img[::step, ::step]


def check_size(gray: np.ndarray, min_side: int = MIN_SHORT_SIDE) -> str | None:
    """``"tiny image (20 x 20 pixels; at least 64 on the shorter side needed)"`` or ``None``."""
    h, w = gray.shape[:2]
    if min(h, w) < min_side:
        return f"tiny image ({w} x {h} pixels; at least {min_side} on the shorter side needed)"
    return None


def check_aspect_ratio(gray: np.ndarray, max_ratio: float = MAX_ASPECT_RATIO) -> str | None:
    """``"extreme aspect ratio (6.0:1; a chest radiograph is at most 3:1)"`` or ``None``."""
    h, w = gray.shape[:2]
    ratio = max(h, w) / max(min(h, w), 1)
    if ratio > max_ratio:
        return f"extreme aspect ratio ({ratio:.1f}:1; a chest radiograph is at most {max_ratio:g}:1)"
    return None


def check_colour(colour: np.ndarray | None) -> str | None:
    """``"colour photograph (42 % of pixels distinctly coloured; X-rays are gray)"`` or ``None``.

    Args:
        colour: float (H, W, 3) in [0, 1] or uint8 (H, W, 3), any channel order; ``None`` (one channel)
            always passes.
    """
    if colour is None:
        return None
    c = _sample(np.asarray(colour))
    if c.ndim != 3 or c.shape[2] < 3:
        return None
    c = _unit(c[:, :, :3], "colour")
    fraction = float(np.mean(c.max(axis=2) - c.min(axis=2) >= COLOUR_CHROMA))
    if fraction >= COLOUR_MIN_FRACTION:
        return f"colour photograph ({100 * fraction:.0f} % of pixels distinctly coloured; X-rays are gray)"
    return None


def check_constant(gray: np.ndarray) -> str | None:
    """``"nearly constant image (the middle 98 % of pixels span 1 of 255 gray levels)"`` or ``None``."""
    lo, hi = np.quantile(_sample(gray), [0.01, 0.99])
    if hi - lo < MIN_INTENSITY_RANGE:
        levels = int(round(float(hi - lo) * 255))
        return f"nearly constant image (the middle 98 % of pixels span {levels} of 255 gray levels)"
    return None


def tiny_below(input_size: int) -> int:
    """The shorter side under which an image is too small for a model of ``input_size`` pixels: half the input
    (upscaling more than twice invents the detail the model reads), at most :data:`MIN_SHORT_SIDE`."""
    return min(MIN_SHORT_SIDE, max(8, input_size // 2))


def check_image(image: str | Path | np.ndarray | CheckedImage, *, min_side: int = MIN_SHORT_SIDE) -> str | None:
    """Run every check; the first failing one's reason, or ``None`` when the image may go to the model.

    Args:
        image: an image file (read with :func:`read_for_checks`), a :class:`CheckedImage`, or an array:
            float (H, W) in [0, 1] / uint8 (H, W) grayscale, or (H, W, 3/4) colour (alpha ignored).
        min_side: the smallest acceptable shorter side in pixels (:data:`MIN_SHORT_SIDE`; use a run's own
            input size when it trained on smaller images).

    Raises:
        DataError: an unreadable file, or an array that is not (H, W) or (H, W, 1/3/4).
    """
    if isinstance(image, str | Path):
        image = read_for_checks(image)
    elif not isinstance(image, CheckedImage):
        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim == 2:
            image = CheckedImage(_unit(arr))
        elif arr.ndim == 3 and arr.shape[2] in (3, 4):
            colour = _unit(arr[:, :, :3])
            image = CheckedImage(cv2.cvtColor(np.ascontiguousarray(colour), cv2.COLOR_RGB2GRAY), colour)
        else:
            raise DataError(f"image: expected an (H, W) or (H, W, 3/4) array, got shape {arr.shape}")
    gray = image.gray
    if gray.size == 0:
        raise DataError("image: has no pixels")
    for reason in (check_size(gray, min_side), check_aspect_ratio(gray), check_colour(image.colour),
                   check_constant(gray)):
        if reason is not None:
            return reason
    return None
