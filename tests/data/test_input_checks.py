"""Cheap input checks before the model: colour photograph, nearly constant, tiny, extreme aspect ratio."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from dicom_writer import write_dicom

from medlite.data.imageio import read_image
from medlite.data.input_checks import (
    CheckedImage,
    check_aspect_ratio,
    check_colour,
    check_constant,
    check_image,
    check_size,
    read_for_checks,
)
from medlite.data.synthetic import generate_phantoms
from medlite.errors import DataError


@pytest.fixture(scope="module")
def phantoms() -> np.ndarray:
    return generate_phantoms("chestx6", per_class=3, size=128, seed=0).images


def test_astronaut_is_a_colour_photograph(tmp_path: Path) -> None:
    rgb = skimage.data.astronaut()
    assert check_image(rgb).startswith("colour photograph (42 % of pixels")
    cv2.imwrite(str(tmp_path / "astronaut.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "astronaut.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    for name in ("astronaut.png", "astronaut.jpg"):
        assert check_image(tmp_path / name).startswith("colour photograph")
    bgra = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)  # an alpha channel changes nothing
    cv2.imwrite(str(tmp_path / "astronaut-alpha.png"), bgra)
    assert check_image(tmp_path / "astronaut-alpha.png").startswith("colour photograph")


def test_colour_dicom_is_checked_and_monochrome_never_is(tmp_path: Path) -> None:
    write_dicom(tmp_path / "rgb.dcm", skimage.data.astronaut()[:256, :256], photometric="RGB", bits_stored=8)
    assert check_image(tmp_path / "rgb.dcm").startswith("colour photograph")
    mono = (skimage.data.camera().astype(np.uint16) * 16)
    write_dicom(tmp_path / "mono.dcm", mono)
    checked = read_for_checks(tmp_path / "mono.dcm")
    assert checked.colour is None
    np.testing.assert_array_equal(checked.gray, read_image(tmp_path / "mono.dcm"))


def test_gray_stored_as_colour_passes(tmp_path: Path, phantoms: np.ndarray) -> None:
    gray = phantoms[0]
    cv2.imwrite(str(tmp_path / "gray3.jpg"), np.dstack([gray] * 3))  # JPEG chroma noise included
    checked = read_for_checks(tmp_path / "gray3.jpg")
    assert checked.colour is not None and checked.colour.shape == (128, 128, 3)
    assert check_image(checked) is None
    np.testing.assert_array_equal(checked.gray, read_image(tmp_path / "gray3.jpg"))
    # a few coloured annotation pixels (an arrow) do not make an X-ray a photograph
    annotated = np.dstack([gray] * 3)
    cv2.arrowedLine(annotated, (20, 20), (60, 60), (0, 0, 255), 2)
    assert check_colour(annotated) is None


def test_read_for_checks_gray_is_read_image(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    checked = read_for_checks(tmp_path / "a.png")
    np.testing.assert_array_equal(checked.gray, read_image(tmp_path / "a.png"))
    assert checked.colour.dtype == np.float32 and checked.colour.max() <= 1.0
    with pytest.raises(DataError, match="not found"):
        read_for_checks(tmp_path / "missing.png")


def test_constant_image() -> None:
    assert check_image(np.full((256, 256), 0.5, np.float32)).startswith("nearly constant image")
    noisy = np.random.default_rng(0).integers(120, 123, (256, 256)).astype(np.uint8)  # 3 gray levels
    assert check_constant(noisy.astype(np.float32) / 255) is not None
    assert check_image(noisy).startswith("nearly constant image (the middle 98 % of pixels span 2 of 255 gray levels)")
    black_with_a_dot = np.zeros((256, 256), np.float32)
    black_with_a_dot[100:102, 100:102] = 1.0  # 0.006 % of the pixels: still nothing to see
    assert check_constant(black_with_a_dot) is not None


def test_tiny_image() -> None:
    tiny = np.random.default_rng(0).random((20, 20)).astype(np.float32)
    assert check_image(tiny) == "tiny image (20 x 20 pixels; at least 64 on the shorter side needed)"
    assert check_image(tiny, min_side=16) is None  # a run trained on smaller images sets its own bound
    assert check_size(np.zeros((64, 64))) is None


def test_extreme_aspect_ratio() -> None:
    wide = np.random.default_rng(0).random((100, 600)).astype(np.float32)  # 600 x 100
    assert check_image(wide) == "extreme aspect ratio (6.0:1; a chest radiograph is at most 3:1)"
    assert check_image(wide.T).startswith("extreme aspect ratio")
    assert check_aspect_ratio(np.zeros((100, 300))) is None  # exactly 3:1 passes


def test_phantoms_pass_every_check(tmp_path: Path, phantoms: np.ndarray) -> None:
    for img in phantoms:
        assert check_image(img) is None
        assert check_image(img.astype(np.float32) / 255) is None
    cv2.imwrite(str(tmp_path / "phantom.png"), phantoms[1])
    assert check_image(tmp_path / "phantom.png") is None
    portrait = cv2.resize(phantoms[2], (300, 370))  # a 35 x 43 cm film's proportions
    assert check_image(portrait) is None


def test_order_and_arrays() -> None:
    # a tiny colour image is reported as tiny: the size check comes first
    assert check_image(skimage.data.astronaut()[:20, :20]).startswith("tiny image")
    checked = CheckedImage(np.full((100, 100), 0.2, np.float32), colour=None)
    assert check_image(checked).startswith("nearly constant")
    with pytest.raises(DataError, match="expected an"):
        check_image(np.zeros((4, 4, 2)))
    with pytest.raises(DataError, match="unsupported pixel type"):
        check_image(np.zeros((100, 100), np.int32))
