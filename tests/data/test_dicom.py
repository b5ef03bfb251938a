"""Tests for medlite.data.dicom: bit depth, rescale, MONOCHROME1, VOI, refusals, and no patient data out.

Windowing itself is tested in test_dicom_window.py; the range tests here use ``dicom_window="none"``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from dicom_writer import PATIENT_ID, SECRETS, write_dicom  # noqa: E402

from medlite.data import dicom  # noqa: E402
from medlite.data.imageio import check_image_file, image_info, read_image  # noqa: E402
from medlite.errors import DataError  # noqa: E402


@pytest.fixture
def pixels12() -> np.ndarray:
    img = np.zeros((8, 10), dtype=np.uint16)
    img[:, :5] = 1000
    img[:, 5:] = 2000  # never reaches 4095: per-image min/max would stretch this
    return img


def _assert_no_phi(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def test_12bit_uses_bits_stored_range(tmp_path: Path, pixels12: np.ndarray) -> None:
    out = read_image(write_dicom(tmp_path / "a.dcm", pixels12), dicom_window="none")
    assert out.dtype == np.float32 and out.shape == (8, 10)
    np.testing.assert_allclose(out[0, :5], 1000 / 4095, atol=1e-6)
    np.testing.assert_allclose(out[0, 5:], 2000 / 4095, atol=1e-6)


def test_monochrome1_is_inverted(tmp_path: Path, pixels12: np.ndarray) -> None:
    out = read_image(write_dicom(tmp_path / "m1.dcm", pixels12, photometric="MONOCHROME1"), dicom_window="none")
    np.testing.assert_allclose(out[0, :5], 1 - 1000 / 4095, atol=1e-6)
    assert out[0, 0] > out[0, 9]  # low stored value = white in MONOCHROME1


def test_rescale_slope_intercept(tmp_path: Path, pixels12: np.ndarray) -> None:
    out = read_image(write_dicom(tmp_path / "r.dcm", pixels12, slope=2.0, intercept=-1024.0), dicom_window="none")
    # modality range [-1024, 2 * 4095 - 1024]; the linear rescale keeps the relative position
    lo, hi = -1024.0, 2 * 4095 - 1024.0
    np.testing.assert_allclose(out[0, 5], (2 * 2000 - 1024 - lo) / (hi - lo), atol=1e-6)
    out_neg = read_image(write_dicom(tmp_path / "n.dcm", pixels12, slope=-1.0, intercept=4095.0),
                         dicom_window="none")
    np.testing.assert_allclose(out_neg[0, 5], (4095 - 2000) / 4095, atol=1e-6)


def test_header_window_is_the_default(tmp_path: Path, pixels12: np.ndarray) -> None:
    path = write_dicom(tmp_path / "w.dcm", pixels12, window=(1500.0, 1000.0))
    windowed = read_image(path)
    plain = read_image(path, dicom_window="none")
    np.testing.assert_allclose(plain[0, 5], 2000 / 4095, atol=1e-6)  # none: no window applied
    assert windowed[0, 0] == pytest.approx(0.0, abs=1e-6)  # 1000 is at the window's bottom edge
    assert windowed[0, 5] == pytest.approx(1.0, abs=1e-6)  # 2000 is at its top edge


def test_sniffed_without_suffix(tmp_path: Path, pixels12: np.ndarray) -> None:
    path = write_dicom(tmp_path / "IM0001", pixels12)
    assert check_image_file(path) is None
    np.testing.assert_allclose(read_image(path, dicom_window="none")[0, 0], 1000 / 4095, atol=1e-6)
    info = image_info(path)
    assert (info.height, info.width, info.bit_depth, info.channels, info.format) == (8, 10, 12, 1, "DICOM")
    assert info.window == "none"
    _assert_no_phi(repr(info))


def test_rgb_becomes_gray(tmp_path: Path) -> None:
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    out = read_image(write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB", bits_stored=8))
    assert out.shape == (4, 6)
    np.testing.assert_allclose(out, 0.299, atol=2e-3)


def test_unsupported_photometric_and_multiframe_are_refused(tmp_path: Path, pixels12: np.ndarray) -> None:
    ybr = write_dicom(tmp_path / "ybr.dcm", pixels12, photometric="PALETTE COLOR")
    with pytest.raises(DataError, match="unsupported DICOM PhotometricInterpretation 'PALETTE COLOR'") as e1:
        read_image(ybr)
    frames = np.stack([pixels12, pixels12])
    multi = write_dicom(tmp_path / "multi.dcm", frames, frames=2)
    with pytest.raises(DataError, match=r"multi\.dcm: multi-frame DICOM \(2 frames\)") as e2:
        read_image(multi)
    _assert_no_phi(str(e1.value), str(e2.value))


def test_corrupt_dicom(tmp_path: Path, pixels12: np.ndarray) -> None:
    data = write_dicom(tmp_path / "ok.dcm", pixels12).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 60])  # pixel data cut short
    with pytest.raises(DataError, match=r"cut\.dcm") as err:
        read_image(cut)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 7)
    with pytest.raises(DataError, match=r"junk\.dcm") as err2:
        read_image(junk)
    _assert_no_phi(str(err.value), str(err2.value))


def test_out_of_range_falls_back_to_image_range() -> None:
    values = np.array([[-10.0, 5000.0]])
    with pytest.warns(UserWarning, match="outside the range"):
        out = dicom._to_unit(values, 0.0, 4095.0, Path("x.dcm"))
    np.testing.assert_allclose(out, [[0.0, 1.0]])


def test_no_patient_data_anywhere(
    tmp_path: Path, pixels12: np.ndarray, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    path = write_dicom(tmp_path / "phi.dcm", pixels12, photometric="MONOCHROME1", window=(1500.0, 1000.0))
    assert PATIENT_ID.encode() in path.read_bytes()  # the identifiers really are in the file
    texts = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = read_image(path)  # header window
        texts.append(repr(image_info(path)))
        ds = dicom.read_dataset(path.read_bytes(), path, pixels=True)
    assert "PatientName" not in ds and "PatientID" not in ds and "PatientBirthDate" not in ds
    texts.append(repr(ds))
    texts += [str(w.message) for w in caught]
    texts += [r.getMessage() for r in caplog.records]
    captured = capsys.readouterr()
    texts += [captured.out, captured.err]
    assert out.shape == (8, 10)
    _assert_no_phi(*texts)
