"""One uploaded file -> the float image as read, or the HTTP error that says why not.

The type comes from the bytes (magic numbers), never from the file name or the client's Content-Type; only
PNG, JPEG and DICOM are accepted (what a clinic exports; BMP/TIFF decoders are a larger attack surface for no
gain). The image size is read from the header (PNG IHDR, JPEG SOF, DICOM Rows/Columns) and checked against
the pixel limit *before* any pixel is decoded, so a small file declaring 20000 x 20000 pixels (a decompression
bomb) costs nothing. Decoding is :func:`medlite.data.imageio.decode_image`, the reader of training and
``medlite predict``: the same DICOM windowing, MONOCHROME1 inversion, 16-bit scaling and alpha handling.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medlite.data.imageio import decode_image, header_shape, sniff_format
from medlite.errors import DataError
from medlite.serve.multipart import UploadError

ACCEPTED = ("PNG", "JPEG", "DICOM")
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "DICOM": ".dcm"}


def sniff(data: bytes) -> str:
    """``"PNG"``, ``"JPEG"`` or ``"DICOM"`` from the first bytes; :class:`UploadError` 400 / 415 otherwise."""
    if not data:
        raise UploadError(400, "empty upload (0 bytes)")
    fmt = sniff_format(data[:132])
    if fmt not in ACCEPTED:
        seen = f"a {fmt} file" if fmt else "not an image"
        raise UploadError(415, f"unsupported file type ({seen}); send PNG, JPEG or DICOM (the type is read from "
                               "the file's bytes, not its name)")
    return fmt


def image_shape(data: bytes, fmt: str, label: str) -> tuple[int, int]:
    """(H, W) from the header without decoding pixels; 400 when the header is unreadable."""
    if fmt == "DICOM":
        from medlite.data.dicom import dicom_info  # pydicom loads with the first DICOM (start-up time)

        try:
            info = dicom_info(data, label)
        except DataError as err:
            raise UploadError(400, str(err)) from None
        return int(info.height), int(info.width)
    shape = header_shape(data)
    if shape is None:
        raise UploadError(400, f"{label}: corrupt {fmt} header (no image size found)")
    return shape


def decode_upload(data: bytes, label: str, *, max_pixels: int, dicom_window: str) -> tuple[np.ndarray, str]:
    """Decode one upload.

    Args:
        data: the file's bytes.
        label: how errors name the file (``"image 2"``: the upload's position, never its file name).
        max_pixels: the largest H x W decoded (413 beyond).
        dicom_window: the model contract's DICOM windowing mode.

    Returns:
        ``(float32 (H, W) image in [0, 1], format)``.

    Raises:
        UploadError: 400 empty / truncated / corrupt / unsupported DICOM, 413 too many pixels, 415 wrong type.
    """
    fmt = sniff(data)
    height, width = image_shape(data, fmt, label)
    if height * width > max_pixels:
        raise UploadError(413, f"{label}: {width} x {height} pixels is over the {max_pixels / 1e6:g}-megapixel "
                               "limit")
    try:
        return decode_image(data, Path(label), dicom_window=dicom_window), fmt
    except DataError as err:
        raise UploadError(400, str(err)) from None
    except (MemoryError, ValueError) as err:  # a decoder that gives up on odd data without a DataError
        raise UploadError(400, f"{label}: cannot decode the {fmt} data ({type(err).__name__})") from None
