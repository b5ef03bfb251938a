"""Decode a single-frame DICOM radiograph to float32 grayscale in [0, 1], without touching patient data.

The pixel pipeline follows DICOM PS3.3 C.11 (and TorchXRayVision's ``read_xray_dcm``):

1. stored values, with unused high bits masked and signedness applied by pydicom;
2. the modality LUT (``RescaleSlope``/``RescaleIntercept`` or a Modality LUT Sequence);
3. the VOI transform chosen by ``dicom_window`` (:mod:`medlite.data.dicom_window`): ``"header"`` (default)
   applies the VOI LUT Sequence, else the first Window Center/Width, else the ``"auto"`` percentile window
   of the body; each maps the window onto [0, 1];
4. with ``dicom_window="none"`` instead: normalisation to [0, 1] by the **value range the header declares**
   (``BitsStored`` and signedness pushed through step 2), so a 12-bit image is divided by 4095 whatever its
   own minimum and maximum. Only when the data fall outside that range (a wrong header) does it fall back to
   the image's own min/max, with a warning;
5. ``MONOCHROME1`` (white = low values) inverted so that bone is always bright; ``RGB`` converted to gray
   (no VOI transform: windows are defined for monochrome images only).

Other photometric interpretations (palette colour, YBR) and multi-frame files raise
:class:`~medlite.errors.DataError`.

Privacy: files are parsed with pydicom's ``specific_tags`` so that only the image-pixel attributes listed
in :data:`PIXEL_TAGS` are read at all. Patient names, ids, dates and the like are skipped by the parser, and
so can never reach a return value, an exception message, a warning or a log line. pydicom's own exception
texts are not passed on for the same reason.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medlite.data.dicom_window import check_dicom_window, header_window_kind, window_to_unit
from medlite.data.records import ImageInfo
from medlite.errors import DataError

PIXEL_TAGS: tuple[str, ...] = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "PixelData",
)
"""The only data elements medlite ever reads from a DICOM file (the file meta group is always read too)."""

SUPPORTED_PHOTOMETRIC: tuple[str, ...] = ("MONOCHROME1", "MONOCHROME2", "RGB")


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as err:  # pragma: no cover - pydicom is a declared dependency
        raise DataError("reading DICOM files needs pydicom: pip install 'pydicom>=2.4'") from err
    return pydicom


def read_dataset(data: bytes, path: Path, *, pixels: bool) -> Any:
    """Parse only :data:`PIXEL_TAGS` (never identifying attributes) from the bytes of a DICOM file."""
    pydicom = _pydicom()
    tags = PIXEL_TAGS if pixels else PIXEL_TAGS[:-1]
    try:
        # Warnings raised while parsing may quote element values; none of the parsed elements identify a
        # patient, but keep pydicom's parser quiet anyway so nothing from the header is echoed.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(
                io.BytesIO(data), force=True, specific_tags=list(tags), stop_before_pixels=not pixels
            )
    except Exception as err:  # noqa: BLE001 - pydicom raises many types; their texts are not passed on
        raise DataError(f"{path}: not a readable DICOM file ({type(err).__name__} while parsing)") from err
    if "Rows" not in ds or "Columns" not in ds:
        raise DataError(f"{path}: no DICOM image found (Rows/Columns missing)")
    return ds


def _check_supported(ds: Any, path: Path) -> str:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise DataError(
            f"{path}: unsupported DICOM PhotometricInterpretation {photometric!r} "
            f"(supported: {', '.join(SUPPORTED_PHOTOMETRIC)})"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(
            f"{path}: multi-frame DICOM ({frames} frames) is not supported; export a single frame"
        )
    return photometric


def _stored_range(ds: Any) -> tuple[float, float]:
    """Smallest and largest value the header allows for the stored pixels."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _lut_range(descriptor: Any) -> tuple[float, float]:
    # LUT Descriptor = (entries, first mapped value, bits per entry); LUT outputs are unsigned.
    return 0.0, 2.0 ** int(descriptor[2]) - 1


def _modality_ends(ds: Any) -> tuple[float, float]:
    """The smallest and largest stored value after the modality LUT, in that order (decreasing for a negative
    rescale slope); pydicom's apply_windowing maps below/above the window onto these."""
    if ds.get("ModalityLUTSequence"):
        return _lut_range(ds.ModalityLUTSequence[0].LUTDescriptor)
    lo, hi = _stored_range(ds)
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return lo, hi


def _modality_range(ds: Any) -> tuple[float, float]:
    """Value range after the modality LUT (mirrors pydicom's apply_windowing)."""
    lo, hi = _modality_ends(ds)
    return min(lo, hi), max(lo, hi)


def _to_unit(values: np.ndarray, lo: float, hi: float, path: Path) -> np.ndarray:
    """Scale to [0, 1] by the declared range [lo, hi]; fall back to the data range if it does not hold."""
    vmin, vmax = float(values.min()), float(values.max())
    if vmin < lo - 1e-6 or vmax > hi + 1e-6 or hi <= lo:
        warnings.warn(
            f"{path}: DICOM pixel values [{vmin:g}, {vmax:g}] fall outside the range its header declares "
            f"[{lo:g}, {hi:g}]; normalised by the image's own min/max instead",
            UserWarning,
            stacklevel=4,
        )
        lo, hi = vmin, vmax
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - lo) / (hi - lo)).astype(np.float32)


def decode_dicom(data: bytes, path: str | Path, *, dicom_window: str = "header") -> np.ndarray:
    """Decode the bytes of a single-frame DICOM file.

    Args:
        data: the complete file contents.
        path: the file's path, for error messages only.
        dicom_window: ``"header"`` (the file's VOI LUT or window, else ``"auto"``), ``"auto"`` (a percentile
            window of the body) or ``"none"`` (the declared value range); see :mod:`medlite.data.dicom_window`.

    Returns:
        float32 (H, W) in [0, 1], bright = dense (MONOCHROME1 inverted).

    Raises:
        DataError: unreadable file, no pixel data, compressed data without a decoder plugin, multi-frame
            data or an unsupported photometric interpretation.
    """
    path = Path(path)
    check_dicom_window(dicom_window)
    _pydicom()  # the install hint, before the submodule import below could fail
    from pydicom.pixels import apply_modality_lut

    ds = read_dataset(data, path, pixels=True)
    if "PixelData" not in ds:
        raise DataError(f"{path}: DICOM file has no PixelData element")
    photometric = _check_supported(ds, path)
    try:
        arr = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - decoder plugins raise assorted types
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and syntax.is_compressed:
            hint = f"{syntax.name}; compressed DICOM may need pylibjpeg or gdcm installed"
        else:
            hint = "the pixel data do not match Rows/Columns/BitsAllocated; truncated file?"
        raise DataError(f"{path}: cannot decode DICOM pixel data ({type(err).__name__}: {hint})") from err
    if photometric == "RGB":
        lo, hi = _stored_range(ds)
        gray = cv2.cvtColor(arr.astype(np.float32), cv2.COLOR_RGB2GRAY)
        return _to_unit(gray, lo, hi, path)
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a 2-D grayscale DICOM image, got pixel array shape {arr.shape}")
    values = apply_modality_lut(arr, ds).astype(np.float64)
    if dicom_window == "none":
        out = _to_unit(values, *_modality_range(ds), path)
    else:
        # pydicom's windowing reads these as attributes; give files lacking them the defaults used above
        ds.BitsStored = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
        ds.PixelRepresentation = int(ds.get("PixelRepresentation", 0) or 0)
        out = window_to_unit(values, ds, dicom_window, _modality_ends(ds), path)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out


def read_dicom(path: str | Path, *, dicom_window: str = "header") -> np.ndarray:
    """Read a DICOM file; see :func:`decode_dicom` for the conventions.

    Returns:
        float32 (H, W) in [0, 1].
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or type(err).__name__})") from err
    return decode_dicom(data, path, dicom_window=dicom_window)


def dicom_info(data: bytes, path: str | Path) -> ImageInfo:
    """Rows, columns, BitsStored, SamplesPerPixel and the VOI transform offered (``ImageInfo.window``) of a
    DICOM file, without decoding its pixels."""
    path = Path(path)
    ds = read_dataset(data, path, pixels=False)
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    return ImageInfo(int(ds.Rows), int(ds.Columns), bits, samples, "DICOM",
                     window=header_window_kind(ds) if samples == 1 else None)
