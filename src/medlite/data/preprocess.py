"""The chest X-ray preprocessing pipeline: grayscale, resize, denoise, equalise, to uint8.

Each image goes through :func:`preprocess_image` once; :mod:`medlite.data.cache` stores the results as a uint8
memmap so epochs only read bytes (DESIGN.md: "preprocess once into a uint8 memmap cache").

Each image goes through :func:`preprocess_image` once and is stored as a row of a uint8 ``(N, S, S)`` memmap,
so epochs only read bytes (DESIGN.md: "preprocess once into a uint8 memmap cache"). The cache key covers the
source fingerprint (file list, sizes, mtimes) and the settings: any change makes a new cache, the same data
and settings reopen the old one in milliseconds.

Pipeline order:

0. (before this module) the file is decoded by :func:`medlite.data.imageio.read_image`, DICOM windowed as
   ``dicom_window`` says; the setting lives here so that it travels with the rest of the contract;
1. grayscale float (H, W) in [0, 1] ((H, W, 3/4) arrays are treated as RGB(A) and converted);
2. geometry (``resize``): ``stretch`` ignores the aspect ratio, ``crop`` resizes the central square, ``pad``
   scales the longest side to S (letterboxed in step 6); ``INTER_AREA`` when shrinking, else
   ``INTER_LINEAR``;
3. denoising: median filter, then Gaussian blur (sizes in *output* pixels);
4. equalisation (global histogram or CLAHE), after denoising because it stretches contrast and would amplify
   the noise, and outlier pixels would skew its histogram;
5. uint8 quantisation, round(x * 255). With ``quantize="last"`` (the default) steps 3-4 run on the float
   image (:mod:`medlite.data.contrast`), so equalisation spreads every grey level the image has; with
   ``quantize="first"`` this step comes right after step 2 and steps 3-4 are OpenCV's uint8 versions (the
   pipeline of runs written before the setting existed, see :meth:`PreprocessConfig.from_stored`);
6. ``pad`` only: letterbox to S x S with the median of the content's border pixels (the X-ray's own
   background, not a black or white frame). Last, so neither filters nor histograms see the artificial border.

Channels are not stored (the cache is single-channel); :func:`medlite.paradigms.task.normalise_batch` repeats the
channel for 3-channel models.
"""


from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medlite.data.contrast import clahe_float, equalize_float, gaussian_float, median_float
from medlite.errors import DataError, MedliteError

LEGACY_SETTINGS: dict[str, Any] = {"dicom_window": "none", "quantize": "first"}
"""What a stored ``preprocess`` section without these settings was run with: medlite read DICOM without a VOI
transform and quantised before the contrast steps until they were added. :meth:`PreprocessConfig.from_stored`
fills them in, so an old run directory or exported model keeps preprocessing like the data it was trained on."""


class PreprocessConfig(BaseModel):
    """Settings of the preprocessing pipeline (see the module docstring for the order of the steps).

    Attributes:
        size: output side ``S`` in pixels.
        resize: ``"pad"`` (keep aspect, letterbox), ``"crop"`` (central square) or ``"stretch"``.
        equalize: ``"none"``, ``"hist"`` (global histogram equalisation) or ``"clahe"``.
        clahe_clip: CLAHE contrast limit (OpenCV ``clipLimit``).
        clahe_grid: CLAHE tiles per side.
        gaussian_sigma: Gaussian blur sigma in output pixels; 0 disables it.
        median_ksize: median filter aperture in output pixels, odd >= 3; 0 disables it.
        channels: channels the model receives; applied at tensor time by
            :func:`medlite.paradigms.task.normalise_batch`, not stored in the cache.
        dicom_window: how DICOM files are windowed when read: ``"header"`` (VOI LUT Sequence, else first
            Window Center/Width, else ``"auto"``), ``"auto"`` (0.5-99.5th percentile window of the body) or
            ``"none"`` (the BitsStored range); see :mod:`medlite.data.dicom_window`. Other formats ignore it.
        quantize: ``"last"``: denoising and equalisation on the float image, one uint8 cut at the end;
            ``"first"``: cut to uint8 right after resizing (runs made before this setting).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(224, ge=8, le=4096)
    resize: Literal["pad", "crop", "stretch"] = "pad"
    equalize: Literal["none", "hist", "clahe"] = "none"
    clahe_clip: float = Field(2.0, gt=0)
    clahe_grid: int = Field(8, ge=1, le=64)
    gaussian_sigma: float = Field(0.0, ge=0)
    median_ksize: int = Field(0, ge=0)
    channels: Literal[1, 3] = 1
    dicom_window: Literal["header", "auto", "none"] = "header"
    quantize: Literal["last", "first"] = "last"

    @classmethod
    def from_stored(cls, section: Mapping[str, Any]) -> PreprocessConfig:
        """The settings of a stored run (``run.json``, ``config.yaml``, an ONNX contract): settings the section
        lacks take :data:`LEGACY_SETTINGS`, what medlite did when it was written, not today's defaults."""
        return cls(**{**LEGACY_SETTINGS, **dict(section)})

    def __init__(self, **data: Any) -> None:
        # pydantic's ValidationError spans several lines; users get one line naming the field instead.
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise MedliteError(_one_line(err)) from None

    @field_validator("median_ksize")
    @classmethod
    def _odd_aperture(cls, value: int) -> int:
        if value != 0 and (value < 3 or value % 2 == 0):
            raise ValueError("must be odd and >= 3 (or 0 to switch the median filter off)")
        return value


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "config"
    more = f" (and {err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(PreprocessConfig.model_fields)
        return f"preprocess: unknown setting {field!r} (allowed: {allowed}){more}"
    msg = first["msg"].removeprefix("Value error, ")
    return f"preprocess: {field}={first.get('input')!r} is invalid: {msg}{more}"


# --------------------------------------------------------------------------------------------- pipeline
def _as_gray(img: np.ndarray) -> np.ndarray:
    """float32 (H, W) in [0, 1] from float [0, 1] or uint8 input, (H, W, 1/3/4) included."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    elif not np.issubdtype(img.dtype, np.floating):
        raise DataError(f"image has dtype {img.dtype}; expected float in [0, 1] or uint8")
    img = np.ascontiguousarray(img, dtype=np.float32)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] in (3, 4):
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY if img.shape[2] == 3 else cv2.COLOR_RGBA2GRAY)
    if img.ndim != 2 or min(img.shape) < 1:
        raise DataError(f"image has shape {img.shape}; expected a grayscale (H, W) array")
    if not np.isfinite(img).all():
        raise DataError("image contains NaN or infinite values")
    return np.clip(img, 0.0, 1.0)


def _fit(img: np.ndarray, size: int, mode: str, *, nearest: bool = False) -> np.ndarray:
    """Crop/resize ``img`` for ``mode``: (S, S) for crop/stretch, longest side S for pad."""
    h, w = img.shape
    if mode == "crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        img = img[top:top + side, left:left + side]
        h = w = side
    if mode == "pad":
        scale = size / max(h, w)
        th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    else:
        th = tw = size
    if (th, tw) == (h, w):
        return np.ascontiguousarray(img)
    shrink = th <= h and tw <= w
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(img), (tw, th), interpolation=interp)


def _letterbox(img: np.ndarray, size: int, value: int | None = None) -> np.ndarray:
    """Centre ``img`` on an S x S canvas filled with ``value`` (default: median of img's border pixels)."""
    h, w = img.shape
    if value is None:
        value = int(np.median(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])))
    top, left = (size - h) // 2, (size - w) // 2
    return cv2.copyMakeBorder(img, top, size - h - top, left, size - w - left, cv2.BORDER_CONSTANT,
                              value=value)


def preprocess_image(img: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Run the preprocessing pipeline on one image.

    Args:
        img: float (H, W) with values in [0, 1] (uint8 and (H, W, 1/3/4) arrays are accepted too).
        cfg: pipeline settings.

    Returns:
        uint8 (S, S) with S = ``cfg.size``.

    Raises:
        DataError: the array is not a 2-D grayscale image or holds NaN/inf.
    """
    content = _fit(_as_gray(img), cfg.size, cfg.resize)
    out = _contrast_float(content, cfg) if cfg.quantize == "last" else _contrast_uint8(content, cfg)
    if cfg.resize == "pad":
        out = _letterbox(out, cfg.size)
    return out


def _contrast_float(content: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Denoise and equalise float32 (h, w) in [0, 1], then quantise: uint8 (h, w)."""
    x = content
    if cfg.median_ksize:
        x = median_float(x, cfg.median_ksize)
    if cfg.gaussian_sigma > 0:
        x = gaussian_float(x, cfg.gaussian_sigma)
    if cfg.equalize == "hist":
        x = equalize_float(x)
    elif cfg.equalize == "clahe":
        x = clahe_float(x, cfg.clahe_clip, cfg.clahe_grid)
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _contrast_uint8(content: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """``quantize="first"``: quantise float32 (h, w), then OpenCV's uint8 denoising and equalisation."""
    out = np.rint(content * 255.0).astype(np.uint8)
    if cfg.median_ksize:
        out = cv2.medianBlur(out, cfg.median_ksize)
    if cfg.gaussian_sigma > 0:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=cfg.gaussian_sigma)
    if cfg.equalize == "hist":
        out = cv2.equalizeHist(out)
    elif cfg.equalize == "clahe":
        clahe = cv2.createCLAHE(clipLimit=cfg.clahe_clip, tileGridSize=(cfg.clahe_grid, cfg.clahe_grid))
        out = clahe.apply(out)
    return out


def preprocess_mask(mask: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Apply the pipeline's geometry (not its intensity steps) to a lesion mask.

    Args:
        mask: bool or 0/1 (H, W), same shape as the image it belongs to.
        cfg: pipeline settings.

    Returns:
        uint8 (S, S) with values 0/1, nearest-neighbour resized and zero-padded exactly like the image.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DataError(f"mask has shape {mask.shape}; expected (H, W)")
    fitted = _fit((mask > 0).astype(np.uint8), cfg.size, cfg.resize, nearest=True)
    return _letterbox(fitted, cfg.size, 0) if cfg.resize == "pad" else fitted
