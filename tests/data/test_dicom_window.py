"""Tests for DICOM windowing (medlite.data.dicom_window) on files written with pydicom.

Expected values are computed here from the DICOM formulas (PS3.3 C.11.2.1.2: LINEAR window) and numpy, not by
calling medlite; grey-level counts are those of the preprocessed uint8 image the model sees.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

pydicom = pytest.importorskip("pydicom")
from dicom_writer import SECRETS, write_dicom  # noqa: E402

from medlite.cli.render import format_inspection  # noqa: E402
from medlite.data.cache import build_cache  # noqa: E402
from medlite.data.imageio import image_info, read_image  # noqa: E402
from medlite.data.inspect import inspect_source  # noqa: E402
from medlite.data.preprocess import PreprocessConfig, preprocess_image  # noqa: E402
from medlite.data.sources import open_source  # noqa: E402
from medlite.data.synthetic import generate_phantom  # noqa: E402
from medlite.errors import MedliteError  # noqa: E402

WINDOW = (1100.0, 800.0)  # centre, width: stored values 700-1500


@pytest.fixture(scope="module")
def body() -> np.ndarray:
    """float (128, 128) chest phantom in about [0.04, 0.8]."""
    return generate_phantom("normal", 128, np.random.default_rng(0))[0]


def _stored(body: np.ndarray, lo: float, hi: float, dtype: type = np.uint16) -> np.ndarray:
    return np.rint(lo + body * (hi - lo)).astype(dtype)


def _linear(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR window onto [0, 1]."""
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _levels(image: np.ndarray, **settings: object) -> int:
    """Distinct grey levels of the preprocessed uint8 image."""
    return int(np.unique(preprocess_image(image, PreprocessConfig(size=128, **settings))).size)


def test_window_is_the_same_at_12_14_and_16_bits(tmp_path: Path, body: np.ndarray) -> None:
    pixels = _stored(body, 500, 1900)  # 12-bit values; the header claims 12, 14 or 16 stored bits
    header, plain = {}, {}
    for bits in (12, 14, 16):
        path = write_dicom(tmp_path / f"b{bits}.dcm", pixels, bits_stored=bits, window=WINDOW)
        header[bits] = read_image(path)
        plain[bits] = read_image(path, dicom_window="none")
        np.testing.assert_allclose(header[bits], _linear(pixels.astype(float), *WINDOW), atol=1e-6)
        np.testing.assert_allclose(plain[bits], pixels / (2.0**bits - 1), atol=1e-6)
    assert np.array_equal(header[12], header[16]) and np.array_equal(header[12], header[14])
    levels_header = _levels(header[16])
    levels_plain = {bits: _levels(plain[bits]) for bits in plain}
    # 1400 stored values over 1/16 of the 16-bit range are at most 1900/65535 * 255 + 1 = 8.4 uint8 levels
    assert levels_plain[16] <= 9 < levels_plain[14] < levels_plain[12] < levels_header
    assert levels_header >= 200


def test_monochrome1_is_inverted_after_windowing(tmp_path: Path, body: np.ndarray) -> None:
    pixels = _stored(body, 500, 1900)
    for window in (WINDOW, None):  # header window, and auto
        m2 = read_image(write_dicom(tmp_path / "m2.dcm", pixels, window=window))
        m1 = read_image(write_dicom(tmp_path / "m1.dcm", pixels, window=window, photometric="MONOCHROME1"))
        np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    expected = 1.0 - _linear(pixels.astype(float), *WINDOW)
    np.testing.assert_allclose(read_image(tmp_path / "m1.dcm", dicom_window="header"), 1.0 - m2, atol=1e-6)
    m1_window = read_image(write_dicom(tmp_path / "m1w.dcm", pixels, window=WINDOW, photometric="MONOCHROME1"))
    np.testing.assert_allclose(m1_window, expected, atol=1e-6)


def test_voi_lut_sequence_wins_over_window_and_gets_integers(
    tmp_path: Path, body: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    pixels = _stored(body, 500, 1900)
    first, entries = 600, 1200
    # a gamma curve whose entries stop at 4095 although the descriptor declares 16 bits per entry
    lut = np.rint(4095 * (np.arange(entries) / (entries - 1)) ** 0.5).astype(np.uint16)
    # slope/intercept make pydicom's modality output float64: the LUT must still be indexed with integers
    path = write_dicom(tmp_path / "lut.dcm", pixels, window=WINDOW, voi_lut=(first, 16, lut), slope=1.0,
                       intercept=0.0)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom warns "VOI LUT on a float input array" for floats
        out = read_image(path)
    assert not [r for r in caplog.records if "float" in r.getMessage()]
    expected = lut[np.clip(pixels.astype(np.int64) - first, 0, entries - 1)] / 4095.0
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert image_info(path).window == "voi_lut"
    assert _levels(out) >= 200


def test_signed_pixels(tmp_path: Path, body: np.ndarray) -> None:
    pixels = _stored(body, -900, 700, dtype=np.int16)  # PixelRepresentation 1, 12 bits: -2048..2047
    path = write_dicom(tmp_path / "signed.dcm", pixels, window=(0.0, 1000.0))
    np.testing.assert_allclose(read_image(path), _linear(pixels.astype(float), 0.0, 1000.0), atol=1e-6)
    np.testing.assert_allclose(read_image(path, dicom_window="none"), (pixels + 2048.0) / 4095.0, atol=1e-6)
    auto = read_image(path, dicom_window="auto")
    assert auto.min() == 0.0 and auto.max() == 1.0 and _levels(auto) >= 200


def test_no_window_means_auto_percentile_window_of_the_body(tmp_path: Path, body: np.ndarray) -> None:
    pixels = np.zeros((160, 160), np.uint16)  # collimator blanking at 0 around the body
    pixels[16:144, 16:144] = _stored(body, 500, 1900)
    pixels[20:24, 20:40] = 4095  # a burned-in marker at full scale
    path = write_dicom(tmp_path / "nowin.dcm", pixels)
    assert image_info(path).window == "none"
    inner = pixels[(pixels > 0) & (pixels < 4095)].astype(float)
    lo, hi = np.percentile(inner, [0.5, 99.5])
    expected = np.clip((pixels - lo) / (hi - lo), 0.0, 1.0)
    auto = read_image(path, dicom_window="auto")
    np.testing.assert_allclose(auto, expected, atol=1e-6)
    np.testing.assert_array_equal(read_image(path), auto)  # header falls back to auto
    plain = read_image(path, dicom_window="none")
    assert _levels(plain[16:144, 16:144]) < 100 < 200 <= _levels(auto[16:144, 16:144])


def test_first_of_several_windows(tmp_path: Path, body: np.ndarray) -> None:
    pixels = _stored(body, 500, 1900)
    several = write_dicom(tmp_path / "several.dcm", pixels, window=([1100.0, 3000.0], [800.0, 100.0]))
    np.testing.assert_allclose(read_image(several), _linear(pixels.astype(float), *WINDOW), atol=1e-6)


def test_unusable_window_falls_back_to_auto(tmp_path: Path, body: np.ndarray) -> None:
    pixels = _stored(body, 500, 1900)
    path = write_dicom(tmp_path / "bad.dcm", pixels, window=(1100.0, 0.0))  # LINEAR needs width >= 1
    with pytest.warns(UserWarning, match="unusable DICOM Window Center/Width") as caught:
        out = read_image(path)
    np.testing.assert_array_equal(out, read_image(path, dicom_window="auto"))
    for record in caught:
        for secret in SECRETS:
            assert secret not in str(record.message)


def test_bad_mode_is_one_line(tmp_path: Path, body: np.ndarray) -> None:
    path = write_dicom(tmp_path / "a.dcm", _stored(body, 500, 1900))
    with pytest.raises(MedliteError, match="dicom_window: expected one of header, auto, none, got 'voi'"):
        read_image(path, dicom_window="voi")
    with pytest.raises(MedliteError, match="dicom_window"):
        PreprocessConfig(dicom_window="voi")


@pytest.fixture
def dicom_folder(tmp_path: Path, body: np.ndarray) -> Path:
    """Two classes: a file with a VOI LUT, one with a window, one without, and a PNG."""
    import cv2

    root = tmp_path / "src"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    pixels = _stored(body, 500, 1900)
    lut = np.rint(4095 * (np.arange(1200) / 1199) ** 0.5).astype(np.uint16)
    write_dicom(root / "a" / "lut.dcm", pixels, voi_lut=(600, 16, lut))
    write_dicom(root / "a" / "win.dcm", pixels, window=WINDOW, bits_stored=16)
    write_dicom(root / "b" / "plain.dcm", pixels)
    cv2.imwrite(str(root / "b" / "x.png"), np.rint(body * 255).astype(np.uint8))
    return root


def test_inspect_reports_what_the_mode_does(dicom_folder: Path) -> None:
    source = open_source(dicom_folder)
    header = inspect_source(source)["dicom_window"]
    assert header == {"mode": "header", "applied": {"auto": 1, "voi_lut": 1, "window": 1}}
    assert inspect_source(source, dicom_window="none")["dicom_window"] == {"mode": "none", "applied": {"none": 3}}
    out = io.StringIO()
    Console(file=out, width=250).print(format_inspection(inspect_source(source)))
    assert ("--dicom-window header: auto percentile window (no window in the header): 1, VOI LUT sequence: 1, "
            "header window centre/width: 1") in out.getvalue()


def test_cache_reads_with_the_configured_window(dicom_folder: Path, tmp_path: Path) -> None:
    source = open_source(dicom_folder)
    cached = {}
    for mode in ("header", "none"):
        cfg = PreprocessConfig(size=64, dicom_window=mode)
        cached[mode] = build_cache(source, cfg, tmp_path / "cache", progress=False)
        for row, index in enumerate(cached[mode].record_indices):
            path = source.records[int(index)].item
            expected = preprocess_image(read_image(path, dicom_window=mode), cfg)
            np.testing.assert_array_equal(cached[mode].images[row], expected)
    assert cached["header"].key != cached["none"].key
    win = [r.name for r in source.records].index("a/win.dcm")  # BitsStored 16: nearly black without the window
    assert np.unique(cached["none"].images[win]).size <= 10 < 200 <= np.unique(cached["header"].images[win]).size
