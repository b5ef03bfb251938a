"""DICOM windowing (the VOI transform, PS3.3 C.11.2): which grey values of a radiograph become [0, 1].

A radiograph stores 10-16 bit values of which a reader looks at a part; a model trained on 8-bit exports
(PNG/JPEG written through a viewer) saw that part. Three modes, chosen by ``--dicom-window`` and stored in the
run's ``preprocess`` section so that training, ``predict``, ``explain`` and the ONNX contract apply the same:

``header`` (default)
    the file's own VOI transform: the first item of the VOI LUT Sequence when present, else the first
    Window Center / Window Width (``VOILUTFunction`` LINEAR, LINEAR_EXACT or SIGMOID, by pydicom), else
    ``auto``. An unusable header window (width < 1, a flat LUT) falls back to ``auto`` with a warning.
``auto``
    a robust percentile window of the body: after the modality LUT, pixels equal to the image's minimum or
    maximum (collimator blanking, padding, burned-in text at full scale) are set aside, and the window runs from
    the 0.5th to the 99.5th percentile (:data:`AUTO_PERCENTILES`) of the rest, values outside clipped.
``none``
    no VOI transform: values divided by the range the header declares (``BitsStored``, signedness and the
    rescale pushed through), as medlite did before windowing existed. A 12-bit image with ``BitsStored = 16``
    then occupies 1/16 of [0, 1].

A window's output is scaled to [0, 1] by the range the windowing maps onto (the modality range, as pydicom's
``apply_windowing`` defines it: bottom of the window -> 0, top -> 1, also for a negative rescale slope); a VOI
LUT's by the smallest and largest entry of its LUT Data, because many files declare 16 bits per entry for LUTs
whose entries stop at 4095. MONOCHROME1 inversion comes after this step (:mod:`medlite.data.dicom`). Nothing
here reads or reports a header value other than the VOI attributes.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medlite.errors import MedliteError

DicomWindow = Literal["header", "auto", "none"]
DICOM_WINDOWS: tuple[str, ...] = ("header", "auto", "none")
"""The values of ``--dicom-window`` / ``PreprocessConfig.dicom_window``."""

AUTO_PERCENTILES: tuple[float, float] = (0.5, 99.5)
"""Percentiles of the body's values that bound the ``auto`` window."""

_MIN_BODY_SHARE = 0.01  # below this share of pixels strictly between min and max, the whole image is the body

WINDOW_KINDS: tuple[str, ...] = ("voi_lut", "window", "none")
"""What a header offers: a VOI LUT Sequence, a Window Center/Width pair, or no VOI transform."""


def check_dicom_window(mode: str) -> str:
    """``mode`` if it is one of :data:`DICOM_WINDOWS`, else a one-line :class:`MedliteError`."""
    if mode not in DICOM_WINDOWS:
        raise MedliteError(f"dicom_window: expected one of {', '.join(DICOM_WINDOWS)}, got {mode!r}")
    return mode


def header_window_kind(ds: Any) -> str:
    """Which VOI transform the dataset carries: ``"voi_lut"``, ``"window"`` or ``"none"`` (see :data:`WINDOW_KINDS`).

    A VOI LUT Sequence counts only with both LUT Descriptor and LUT Data (pydicom's rule), a window only with
    both Window Center and Window Width.
    """
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        return "voi_lut"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return "none"


def planned_window(kind: str, mode: str) -> str:
    """What ``mode`` does to a file whose header offers ``kind``: ``"voi_lut"``, ``"window"``, ``"auto"`` or
    ``"none"``."""
    check_dicom_window(mode)
    if mode == "header":
        return "auto" if kind == "none" else kind
    return mode


def auto_window(values: np.ndarray) -> tuple[float, float] | None:
    """The ``auto`` window ``(lo, hi)`` of modality values (any shape): percentiles of the body, see the module doc.

    Returns ``(min, max)`` of all values when the percentiles coincide (a nearly flat image), and ``None`` for a
    constant image (which the caller scales by its declared range instead).
    """
    flat = np.asarray(values, dtype=np.float64).ravel()
    vmin, vmax = float(flat.min()), float(flat.max())
    body = flat[(flat > vmin) & (flat < vmax)]
    if body.size < _MIN_BODY_SHARE * flat.size:
        body = flat
    lo, hi = (float(q) for q in np.percentile(body, AUTO_PERCENTILES))
    if hi > lo:
        return lo, hi
    return (vmin, vmax) if vmax > vmin else None


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float32 (values - lo) / (hi - lo) clipped to [0, 1]; ``hi < lo`` maps decreasingly, ``hi == lo`` to 0."""
    if hi == lo:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _voi_lut(values: np.ndarray, ds: Any) -> np.ndarray | None:
    """The VOI LUT Sequence applied and scaled to [0, 1], or ``None`` when its LUT is flat."""
    from pydicom.pixels import apply_voi_lut

    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
    # A LUT is indexed by integers (pydicom warns on floats). Clipping to the LUT's input range first also keeps
    # pydicom's uint16 index array from wrapping around for values beyond it.
    index = np.clip(np.rint(values), first, first + entries - 1).astype(np.int64)
    lut = apply_voi_lut(np.arange(first, first + entries, dtype=np.int64), ds, prefer_lut=True)
    lo, hi = float(lut.min()), float(lut.max())
    if hi <= lo:
        return None
    return _scale(apply_voi_lut(index, ds, prefer_lut=True).astype(np.float64), lo, hi)


def _window(values: np.ndarray, ds: Any, window_range: tuple[float, float]) -> np.ndarray | None:
    """The first Window Center/Width applied and scaled to [0, 1], or ``None`` when pydicom rejects it."""
    from pydicom.pixels import apply_windowing

    try:
        windowed = apply_windowing(values, ds)
    except (ValueError, TypeError, AttributeError, IndexError):
        return None
    return _scale(np.asarray(windowed, dtype=np.float64), *window_range)


def window_to_unit(values: np.ndarray, ds: Any, mode: str, window_range: tuple[float, float],
                   path: str | Path) -> np.ndarray:
    """Apply ``mode`` (``"header"`` or ``"auto"``) to modality values and scale them to [0, 1].

    Args:
        values: float64 (H, W) pixel values after the modality LUT.
        ds: the pydicom dataset (its VOI attributes; ``BitsStored``/``PixelRepresentation`` must be set).
        mode: ``"header"`` or ``"auto"`` (``"none"`` is the caller's plain range scaling).
        window_range: the values pydicom's ``apply_windowing`` gives below and above the window: the smallest
            and largest stored value through the rescale (so decreasing for a negative slope), or the Modality
            LUT's output range.
        path: for warnings only.

    Returns:
        float32 (H, W) in [0, 1], bright = high value (MONOCHROME1 is inverted by the caller).
    """
    plan = planned_window(header_window_kind(ds), check_dicom_window(mode))
    out = None
    if plan == "voi_lut":
        out = _voi_lut(values, ds)
    elif plan == "window":
        out = _window(values, ds, window_range)
    if out is None and plan != "auto":
        what = "VOI LUT (flat)" if plan == "voi_lut" else "Window Center/Width (rejected by pydicom)"
        warnings.warn(f"{path}: unusable DICOM {what}; used the auto percentile window instead", UserWarning,
                      stacklevel=4)
    if out is None:
        window = auto_window(values)
        out = _scale(values, *(window or (min(window_range), max(window_range))))
    return out
