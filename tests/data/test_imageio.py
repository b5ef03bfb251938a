"""Tests for medlite.data.imageio: formats, bit depths, colour handling and broken files."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from medlite.data.imageio import (
    IMAGE_SUFFIXES,
    check_image_file,
    decode_image,
    image_info,
    is_image_path,
    read_image,
    sniff_format,
)
from medlite.errors import DataError


def _write(path: Path, img: np.ndarray) -> Path:
    ok, buf = cv2.imencode(path.suffix, img)
    assert ok
    buf.tofile(path)  # tofile: cv2.imwrite cannot handle non-ASCII paths everywhere
    return path


@pytest.fixture
def ramp8() -> np.ndarray:
    return np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))  # (16, 64)


@pytest.fixture
def jpeg_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    return _write(tmp_path / "x.jpg", rng.integers(0, 255, (48, 40), dtype=np.uint8))


def test_png8_is_scaled_by_255(tmp_path: Path, ramp8: np.ndarray) -> None:
    out = read_image(_write(tmp_path / "a.png", ramp8))
    assert out.dtype == np.float32 and out.shape == (16, 64)
    np.testing.assert_allclose(out, ramp8 / 255.0, atol=1e-7)


def test_png16_is_scaled_by_65535_not_by_image_max(tmp_path: Path) -> None:
    img = np.full((8, 8), 4095, dtype=np.uint16)  # 12-bit data in 16-bit storage
    img[0, 0] = 0
    out = read_image(_write(tmp_path / "a.png", img))
    assert out.max() == pytest.approx(4095 / 65535)
    assert out.min() == 0.0


def test_rgba_becomes_gray_and_alpha_is_dropped(tmp_path: Path) -> None:
    bgra = np.zeros((4, 4, 4), dtype=np.uint8)
    bgra[..., 2] = 255  # pure red
    bgra[..., 3] = 0  # fully transparent: must not matter
    out = read_image(_write(tmp_path / "rgba.png", bgra))
    assert out.shape == (4, 4)
    np.testing.assert_allclose(out, 0.299, atol=2e-3)  # BT.601 red weight


def test_rgb_jpeg_bmp_tiff(tmp_path: Path, ramp8: np.ndarray) -> None:
    colour = np.dstack([ramp8, ramp8, ramp8])
    jpg = read_image(_write(tmp_path / "c.jpg", colour))
    assert jpg.shape == (16, 64) and abs(float(jpg.mean()) - ramp8.mean() / 255) < 0.02
    np.testing.assert_allclose(read_image(_write(tmp_path / "g.bmp", ramp8)), ramp8 / 255.0, atol=1e-7)
    tif16 = (ramp8.astype(np.uint16) * 257).astype(np.uint16)
    np.testing.assert_allclose(read_image(_write(tmp_path / "g.tiff", tif16)), ramp8 / 255.0, atol=1e-6)


def test_non_ascii_path(tmp_path: Path, ramp8: np.ndarray) -> None:
    folder = tmp_path / "röntgen bilder"
    folder.mkdir()
    out = read_image(_write(folder / "brustkorb_ä.png", ramp8))
    assert out.shape == ramp8.shape


def test_truncated_jpeg_is_refused(tmp_path: Path, jpeg_file: Path) -> None:
    data = jpeg_file.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError, match=r"cut\.jpg: truncated JPEG"):
        read_image(cut)
    assert check_image_file(cut) is not None and "truncated JPEG" in check_image_file(cut)


def test_truncated_png_is_refused(tmp_path: Path, ramp8: np.ndarray) -> None:
    data = _write(tmp_path / "ok.png", ramp8).read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[:-20])
    with pytest.raises(DataError, match="truncated PNG"):
        read_image(cut)
    assert "truncated PNG" in (check_image_file(cut) or "")


def test_truncated_bmp_is_refused(tmp_path: Path, ramp8: np.ndarray) -> None:
    data = _write(tmp_path / "ok.bmp", ramp8).read_bytes()
    cut = tmp_path / "cut.bmp"
    cut.write_bytes(data[:100])
    with pytest.raises(DataError, match="truncated BMP"):
        read_image(cut)
    assert "truncated BMP" in (check_image_file(cut) or "")


def test_empty_missing_and_non_image_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: empty file"):
        read_image(empty)
    assert check_image_file(empty) == "empty file (0 bytes)"
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    with pytest.raises(DataError, match=r"notes\.png: not a PNG/JPEG"):
        read_image(text)
    with pytest.raises(DataError, match="not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(DataError, match="is a folder"):
        read_image(tmp_path)


def test_corrupt_scan_data_fails_at_decode(tmp_path: Path) -> None:
    # header and end marker look right (passes the cheap check) but there is no decodable image
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9")
    assert check_image_file(bad) is None
    with pytest.raises(DataError, match=r"bad\.jpg: corrupt JPEG"):
        read_image(bad)


def test_misnamed_file_is_decoded_by_content(tmp_path: Path, ramp8: np.ndarray) -> None:
    data = _write(tmp_path / "real.png", ramp8).read_bytes()
    misnamed = tmp_path / "really_png.jpg"
    misnamed.write_bytes(data)
    np.testing.assert_allclose(read_image(misnamed), ramp8 / 255.0, atol=1e-7)


def test_image_info(tmp_path: Path, ramp8: np.ndarray, jpeg_file: Path) -> None:
    assert image_info(_write(tmp_path / "a.png", ramp8.astype(np.uint16))).bit_depth == 16
    info = image_info(_write(tmp_path / "b.png", np.dstack([ramp8] * 4)))
    assert (info.height, info.width, info.bit_depth, info.channels, info.format) == (16, 64, 8, 4, "PNG")
    info = image_info(jpeg_file)
    assert (info.height, info.width, info.bit_depth, info.channels, info.format) == (48, 40, 8, 1, "JPEG")
    info = image_info(_write(tmp_path / "c.bmp", np.dstack([ramp8] * 3)))
    assert (info.height, info.width, info.channels, info.format) == (16, 64, 3, "BMP")
    assert image_info(jpeg_file, data=jpeg_file.read_bytes()) == image_info(jpeg_file)


def test_reduced_decode_is_smaller(jpeg_file: Path) -> None:
    out = decode_image(jpeg_file.read_bytes(), jpeg_file, reduced=True)
    assert out.shape == (6, 5) and out.dtype == np.float32


def test_sniffing_and_suffixes(tmp_path: Path) -> None:
    assert sniff_format(b"\x89PNG\r\n\x1a\n") == "PNG"
    assert sniff_format(b"\xff\xd8\xff\xe0") == "JPEG"
    assert sniff_format(b"\x00" * 128 + b"DICM") == "DICOM"
    assert sniff_format(b"hello") is None
    assert {".png", ".jpg", ".jpeg", ".dcm"} <= set(IMAGE_SUFFIXES)
    readme = tmp_path / "README"
    readme.write_text("hello")
    assert not is_image_path(readme)
    assert is_image_path(tmp_path / "x.PNG")


def test_jpeg_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = np.zeros((20, 40), dtype=np.uint8)
    img[:, :10] = 255  # bright band on the left
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    # minimal EXIF APP1 segment: one IFD entry, Orientation (0x0112) = 6 (rotate 90 degrees clockwise)
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0) + b"\x00" * 4
    app1 = b"Exif\x00\x00" + tiff
    data = buf.tobytes()
    path = tmp_path / "rotated.jpg"
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:])
    out = read_image(path)
    assert out.shape == (40, 20)
    assert out[:10].mean() > 0.9 and out[-10:].mean() < 0.1  # the left band is now on top
