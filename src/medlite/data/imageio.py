"""Read one image file (PNG, JPEG, BMP, TIFF, DICOM) as a float32 grayscale array in [0, 1].

Everything in medlite that touches an image file goes through :func:`read_image`, so the intensity convention
is fixed in one place:

* 8-bit files are divided by 255 and 16-bit files by 65535 (the *storage* maximum, not the image maximum),
  so a 12-bit radiograph saved in a 16-bit PNG stays dark rather than being stretched per image;
* colour images are converted to gray with OpenCV's BT.601 weights and an **alpha channel is dropped**
  (X-ray exports rarely carry a meaningful alpha; compositing on black or white would invent intensities);
* DICOM is recognised by its suffix (``.dcm``/``.dicom``) or by the ``DICM`` magic at byte 128 whatever the
  name, and decoded by :mod:`medlite.data.dicom`, windowed as ``dicom_window`` says (default ``"header"``: the
  file's VOI LUT or window, else a percentile window of the body; see :mod:`medlite.data.dicom_window`).

Broken files raise :class:`~medlite.errors.DataError` naming the file and the problem. Truncation is
checked explicitly (JPEG end-of-image marker after the last scan, PNG ``IEND`` chunk, BMP declared size)
because some OpenCV builds decode a truncated JPEG partially with only a log line on stderr.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from medlite.data.records import ImageInfo
from medlite.errors import DataError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
"""Lower-case file suffixes treated as images (files without one are still sniffed for DICOM)."""

DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")

_TAIL_BYTES = 4096  # how much of a file's end the cheap check reads to find an end marker


def sniff_format(head: bytes) -> str | None:
    """The image format from a file's first 132 bytes (magic numbers), or ``None`` when none matches."""
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[128:132] == b"DICM":
        return "DICOM"
    return None


def _looks_like_raw_dicom(head: bytes) -> bool:
    # DICOM written without the 128-byte preamble (old ACR-NEMA style) starts directly with a group 0x0002
    # (file meta) or 0x0008 (identifying) element tag in little endian.
    return head[:2] in (b"\x02\x00", b"\x08\x00")


def _format_of(data: bytes | np.ndarray, path: Path) -> str | None:
    head = bytes(data[:132])
    fmt = sniff_format(head)
    if fmt is None and path.suffix.lower() in DICOM_SUFFIXES:
        fmt = "DICOM"  # trust the suffix; pydicom (force=True) has the final word
    return fmt


def _truncation_problem(fmt: str, data: bytes, *, whole: bool, file_size: int) -> str | None:
    """Why ``data`` (the whole file, or only its tail if not ``whole``) looks truncated, or ``None``."""
    if fmt == "JPEG":
        # Entropy-coded scan data cannot contain FFD9 (0xFF is byte-stuffed), so the end-of-image marker must
        # follow the last start-of-scan marker FFDA. With only the tail at hand, the tail must contain it.
        start = data.rfind(b"\xff\xda") if whole else 0
        if data.find(b"\xff\xd9", max(start, 0)) == -1:
            return "truncated JPEG (no end-of-image marker FFD9)"
    elif fmt == "PNG":
        if data.rfind(b"IEND") == -1:
            return "truncated PNG (no IEND chunk)"
    elif fmt == "BMP" and whole:
        declared = int.from_bytes(data[2:6], "little")
        if declared > file_size:
            return f"truncated BMP ({file_size} of {declared} bytes)"
    return None


def check_image_file(path: str | Path) -> str | None:
    """Cheaply check that ``path`` can be an image: non-empty, known magic bytes, not visibly truncated.

    Reads at most the first 132 and last 4096 bytes, so listing thousands of files stays fast; a file that
    passes can still fail to decode later (corrupt scan data).

    Args:
        path: an image file.

    Returns:
        ``None`` when the file looks readable, otherwise a short reason such as ``"empty file (0 bytes)"``.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file (0 bytes)"
        with open(path, "rb") as fh:
            head = fh.read(132)
            fmt = _format_of(head, path)
            if fmt is None:
                return "not a PNG/JPEG/BMP/TIFF/DICOM file (unknown magic bytes)"
            if fmt == "DICOM":
                if head[128:132] != b"DICM" and not _looks_like_raw_dicom(head):
                    return "not a DICOM file (no DICM header)"
                return None
            if fmt == "BMP":
                declared = int.from_bytes(head[2:6], "little")
                return f"truncated BMP ({size} of {declared} bytes)" if declared > size else None
            fh.seek(max(size - _TAIL_BYTES, 0))
            tail = fh.read()
    except OSError as err:
        return f"cannot be read ({err.strerror or type(err).__name__})"
    return _truncation_problem(fmt, tail, whole=False, file_size=size)


def load_bytes(path: Path) -> np.ndarray:
    """The raw bytes of an image file as uint8 (N,), with a one-line DataError when missing, a folder or unreadable."""
    if not path.exists():
        raise DataError(f"{path}: image file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an image file")
    try:
        # np.fromfile + imdecode instead of cv2.imread: cv2.imread cannot open non-ASCII paths on Windows.
        return np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or type(err).__name__})") from err


def _to_unit_gray(img: np.ndarray, name: str) -> np.ndarray:
    """OpenCV's decoded array (H, W[, C]) of any dtype -> float32 (H, W) in [0, 1]."""
    if img.dtype == np.uint8 or img.dtype == np.uint16:
        out = img.astype(np.float32) / float(np.iinfo(img.dtype).max)
    elif np.issubdtype(img.dtype, np.floating):
        out = img.astype(np.float32)
        if not np.isfinite(out).all():
            raise DataError(f"{name}: floating-point image contains NaN or infinity")
        lo, hi = float(out.min()), float(out.max())
        if lo < 0.0 or hi > 1.0:  # float TIFFs have no fixed range: only then fall back to the image range
            out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    else:
        raise DataError(f"{name}: unsupported pixel type {img.dtype} (expected 8/16-bit integer or float)")
    if out.ndim == 3:
        channels = out.shape[2]
        if channels == 1:
            out = out[:, :, 0]
        elif channels == 2:  # gray + alpha: keep gray, drop alpha
            out = out[:, :, 0]
        elif channels == 3:
            out = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)
        elif channels == 4:  # alpha dropped, see the module docstring
            out = cv2.cvtColor(out, cv2.COLOR_BGRA2GRAY)
        else:
            raise DataError(f"{name}: unsupported number of channels ({channels})")
    return np.clip(out, 0.0, 1.0, out=out)


def decode_image(
    data: bytes | np.ndarray, path: str | Path, *, reduced: bool = False, dicom_window: str = "header"
) -> np.ndarray:
    """Decode the bytes of an image file.

    Args:
        data: the complete file contents (bytes or a uint8 array).
        path: the file's path, used for the DICOM suffix rule and in error messages only.
        reduced: decode JPEGs at 1/8 scale (a fast integrity check used by inspection); other formats
            decode at full size.
        dicom_window: for DICOM, ``"header"``, ``"auto"`` or ``"none"`` (see :mod:`medlite.data.dicom_window`);
            other formats ignore it.

    Returns:
        float32 (H, W) grayscale in [0, 1].

    Raises:
        DataError: empty, unknown, truncated or undecodable data, naming ``path``.
    """
    path = Path(path)
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    if buf.size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    fmt = _format_of(buf, path)
    if fmt is None:
        raise DataError(f"{path}: not a PNG/JPEG/BMP/TIFF/DICOM file (unknown magic bytes)")
    if fmt == "DICOM":
        from medlite.data.dicom import decode_dicom  # here: pydicom loads only when a DICOM is read (start-up)

        return decode_dicom(buf.tobytes(), path, dicom_window=dicom_window)
    problem = _truncation_problem(fmt, buf.tobytes(), whole=True, file_size=int(buf.size))
    if problem is not None:
        raise DataError(f"{path}: {problem}")
    if fmt == "JPEG":
        # JPEG has no alpha, so ANYDEPTH|ANYCOLOR keeps what IMREAD_UNCHANGED keeps (gray stays gray, 12-bit
        # stays 16-bit) but, unlike it, applies the EXIF orientation, as every image viewer does.
        flags = cv2.IMREAD_REDUCED_GRAYSCALE_8 if reduced else cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    else:
        flags = cv2.IMREAD_UNCHANGED
    try:
        img = cv2.imdecode(buf, flags)
    except cv2.error as err:
        raise DataError(f"{path}: corrupt {fmt} data ({str(err).strip().splitlines()[-1]})") from err
    if img is None or img.size == 0:
        raise DataError(f"{path}: corrupt {fmt} data (OpenCV could not decode it)")
    return _to_unit_gray(img, str(path))


def read_image(path: str | Path, *, dicom_window: str = "header") -> np.ndarray:
    """Read an image file as grayscale.

    Args:
        path: a PNG (8/16-bit), JPEG, BMP, TIFF or DICOM file; non-ASCII paths work.
        dicom_window: for DICOM, ``"header"`` (the file's VOI LUT Sequence, else its first Window
            Center/Width, else ``"auto"``), ``"auto"`` (0.5-99.5th percentile window of the body) or ``"none"``
            (the BitsStored range); see :mod:`medlite.data.dicom_window`. Other formats ignore it.

    Returns:
        float32 (H, W) in [0, 1]; integer data divided by the storage maximum (255, 65535), DICOM windowed;
        colour converted to gray, alpha dropped.

    Raises:
        DataError: the file is missing, empty, not an image, truncated or corrupt.
    """
    path = Path(path)
    return decode_image(load_bytes(path), path, dicom_window=dicom_window)


def _png_info(data: bytes) -> tuple[int, int, int, int]:
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    bit_depth, color_type = data[24], data[25]
    # colour type -> samples per pixel (palette images expand to colour when decoded)
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(color_type, 0)
    return height, width, bit_depth, channels


def _jpeg_info(data: bytes) -> tuple[int, int, int, int] | None:
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length field
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        # SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not SOFs.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and pos + 10 <= n:
            precision = data[pos + 4]
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return height, width, precision, data[pos + 9]
        if marker == 0xDA:  # start of scan reached without a frame header
            return None
        pos += 2 + length
    return None


def header_shape(data: bytes) -> tuple[int, int] | None:
    """(H, W) in pixels from a PNG or JPEG header, without decoding any pixel; ``None`` for other formats or
    a header that cannot be parsed. A server checks it against a pixel limit before decoding (a small file
    can declare a huge image: a decompression bomb)."""
    head = bytes(data[:132])
    fmt = sniff_format(head)
    parsed = None
    if fmt == "PNG" and len(data) >= 26 and data[12:16] == b"IHDR":
        parsed = _png_info(bytes(data[:26]))
    elif fmt == "JPEG":
        parsed = _jpeg_info(bytes(data))
    if parsed is None or parsed[0] <= 0 or parsed[1] <= 0:
        return None
    return int(parsed[0]), int(parsed[1])


def image_info(path: str | Path, data: bytes | None = None) -> ImageInfo:
    """Height, width, stored bit depth, channels and format of an image file.

    PNG and JPEG sizes come from their headers (no pixel decoding); BMP and TIFF are decoded; DICOM reads
    only the image-pixel module attributes.

    Args:
        path: the image file.
        data: the file's bytes when the caller has already read them (avoids a second read).

    Raises:
        DataError: the file is missing, empty, or not a recognised image.
    """
    path = Path(path)
    raw = bytes(load_bytes(path)) if data is None else data
    if len(raw) == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    fmt = _format_of(raw, path)
    if fmt is None:
        raise DataError(f"{path}: not a PNG/JPEG/BMP/TIFF/DICOM file (unknown magic bytes)")
    if fmt == "DICOM":
        from medlite.data.dicom import dicom_info  # here: pydicom loads only for DICOM files (start-up)

        return dicom_info(raw, path)
    parsed = None
    if fmt == "PNG" and len(raw) >= 26:
        parsed = _png_info(raw)
    elif fmt == "JPEG":
        parsed = _jpeg_info(raw)
    if parsed is not None:
        return ImageInfo(*parsed, format=fmt)
    try:
        img = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is None:
        raise DataError(f"{path}: corrupt {fmt} data (OpenCV could not decode it)")
    channels = 1 if img.ndim == 2 else int(img.shape[2])
    return ImageInfo(int(img.shape[0]), int(img.shape[1]), img.dtype.itemsize * 8, channels, fmt)


def is_image_path(path: str | Path) -> bool:
    """Whether ``path`` should be treated as an image: an image suffix, or DICOM magic under any name."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"
