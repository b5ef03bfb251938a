"""Tests for medlite.data.contrast and ``PreprocessConfig.quantize``: contrast steps on the float image.

On 8-bit input the float versions must give exactly OpenCV's uint8 results (so they are the same operations);
on finer input they must keep the grey levels the 8-bit cut would merge.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from medlite.data.contrast import clahe_float, equalize_float, median_float
from medlite.data.preprocess import LEGACY_SETTINGS, PreprocessConfig, preprocess_image
from medlite.data.synthetic import generate_phantom


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    return generate_phantom("normal", 128, np.random.default_rng(0))[0]


@pytest.fixture(scope="module")
def phantom_u8(phantom: np.ndarray) -> np.ndarray:
    u8 = np.rint(phantom * 255).astype(np.uint8)
    u8[0, 0], u8[0, 1] = 0, 255  # the full range, so CLAHE's stretch to [min, max] is the identity
    return u8


def _float(u8: np.ndarray) -> np.ndarray:
    return u8.astype(np.float32) / np.float32(255.0)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.rint(x * 255.0).astype(np.uint8)


def test_equal_to_opencv_on_8bit_input(phantom_u8: np.ndarray) -> None:
    np.testing.assert_array_equal(_u8(equalize_float(_float(phantom_u8))), cv2.equalizeHist(phantom_u8))
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(phantom_u8)
    np.testing.assert_array_equal(_u8(clahe_float(_float(phantom_u8), 2.0, 8)), clahe)
    for ksize in (3, 5, 7, 9):  # 3 and 5 by OpenCV on float, 7 and 9 by SciPy
        np.testing.assert_array_equal(_u8(median_float(_float(phantom_u8), ksize)),
                                      cv2.medianBlur(phantom_u8, ksize))


def test_constant_image_is_left_alone() -> None:
    flat = np.full((16, 16), 0.25, np.float32)
    np.testing.assert_array_equal(equalize_float(flat), flat)
    np.testing.assert_array_equal(clahe_float(flat, 2.0, 8), flat)


@pytest.mark.parametrize("equalize", ["hist", "clahe"])
def test_equalising_the_float_image_keeps_grey_levels(phantom: np.ndarray, equalize: str) -> None:
    # 12-bit data read from a 16-bit container (a BitsStored=16 DICOM or a 16-bit PNG export): [0, 1/16]
    dark = (np.rint(500 + phantom * 1400) / 65535.0).astype(np.float32)
    levels = {q: np.unique(preprocess_image(dark, PreprocessConfig(size=128, equalize=equalize, quantize=q))).size
              for q in ("first", "last")}
    # round(x * 255) first leaves 8 levels to equalise (CLAHE's blending of tiles adds a few in between)
    assert np.unique(_u8(dark)).size <= 9 and levels["first"] < 20
    assert levels["last"] >= 200


def test_quantize_first_is_the_uint8_pipeline(phantom: np.ndarray) -> None:
    cfg = PreprocessConfig(size=128, equalize="hist", median_ksize=3, quantize="first")
    expected = cv2.equalizeHist(cv2.medianBlur(_u8(phantom), 3))  # 128 px in, 128 px out: no resize
    np.testing.assert_array_equal(preprocess_image(phantom, cfg), expected)
    plain = {q: preprocess_image(phantom, PreprocessConfig(size=128, resize="stretch", quantize=q))
             for q in ("first", "last")}
    np.testing.assert_array_equal(plain["first"], plain["last"])  # without contrast steps nothing changes


def test_from_stored_fills_the_settings_an_old_run_lacks() -> None:
    old = {"size": 64, "resize": "pad", "equalize": "clahe", "clahe_clip": 2.0, "clahe_grid": 8,
           "gaussian_sigma": 0.0, "median_ksize": 0, "channels": 1}
    cfg = PreprocessConfig.from_stored(old)
    assert (cfg.dicom_window, cfg.quantize) == ("none", "first") == tuple(LEGACY_SETTINGS.values())
    assert cfg.size == 64 and cfg.equalize == "clahe"
    new = PreprocessConfig(size=64, dicom_window="auto")
    assert PreprocessConfig.from_stored(new.model_dump(mode="json")) == new
    assert (PreprocessConfig().dicom_window, PreprocessConfig().quantize) == ("header", "last")
