"""Unlabelled sources: plain image folders, split-aware use, errors, and the stacked image view."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from medlite.config import build_config
from medlite.data.unlabelled import UNLABELLED, StackedImages, load_unlabelled, open_unlabelled
from medlite.errors import DataError, MedliteError


def write_images(folder: Path, n: int, size: int = 40, seed: int = 0) -> list[Path]:
    """``n`` random 8-bit PNGs in ``folder`` (created)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"img{i:03d}.png")
        cv2.imwrite(str(paths[-1]), rng.integers(0, 256, (size, size), dtype=np.uint8))
    return paths


def test_plain_folder_in_any_layout_is_one_unlabelled_class(tmp_path: Path) -> None:
    write_images(tmp_path / "a", 3)
    write_images(tmp_path / "b" / "deeper", 2, seed=1)
    write_images(tmp_path, 1, seed=2)  # a loose file at the top counts too
    (tmp_path / "notes.txt").write_text("not an image")
    source = open_unlabelled(tmp_path)
    assert source.classes == [UNLABELLED]
    assert len(source) == 6 and {r.label for r in source.records} == {0}


def test_lesion_masks_beside_the_images_are_not_read_as_images(tmp_path: Path) -> None:
    """COVID-QU-Ex's layout: DIR/<class>/*.jpg with DIR/masks/<class>/*.png."""
    write_images(tmp_path / "COVID-19", 3)
    write_images(tmp_path / "Normal", 2, seed=1)
    write_images(tmp_path / "masks" / "COVID-19", 3, seed=2)
    source = open_unlabelled(tmp_path)
    assert len(source) == 5 and not any("masks" in r.name for r in source.records)


def test_unreadable_file_is_skipped_and_strict_makes_it_fatal(tmp_path: Path) -> None:
    write_images(tmp_path, 2)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    with pytest.warns(UserWarning, match="broken.png"):
        assert len(open_unlabelled(tmp_path)) == 2
    with pytest.raises(DataError, match="broken.png"):
        open_unlabelled(tmp_path, strict=True)


def test_load_uses_only_the_train_split_of_a_split_source(tmp_path: Path) -> None:
    for split, n in (("train", 4), ("test", 3)):
        for cls in ("x", "y"):
            write_images(tmp_path / split / cls, n, seed=n)
    cfg = build_config(None, size=32)
    images, use = load_unlabelled(tmp_path, cfg)
    assert images.shape == (14, 32, 32) and images.dtype == np.uint8
    assert len(use) == 8  # 2 classes x 4 training images; the test images stay unseen


def test_load_errors_name_the_option_and_the_source(tmp_path: Path) -> None:
    cfg = build_config(None, size=32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedliteError, match=r"^--unlabelled .*empty: .*no readable image"):
        load_unlabelled(tmp_path / "empty", cfg)
    write_images(tmp_path / "one", 1)
    with pytest.raises(MedliteError, match=r"^--target .*one: needs at least 2 readable images, found 1"):
        load_unlabelled(tmp_path / "one", cfg, option="--target")
    with pytest.raises(MedliteError, match="no such file"):
        load_unlabelled(tmp_path / "missing", cfg)


def test_stacked_images_index_across_arrays_without_copying() -> None:
    a = np.arange(2 * 4, dtype=np.uint8).reshape(2, 2, 2)
    b = np.arange(100, 100 + 3 * 4, dtype=np.uint8).reshape(3, 2, 2)
    stacked = StackedImages([a, b])
    assert len(stacked) == 5 and stacked.shape == (5, 2, 2)
    expected = np.concatenate([a, b])
    for i in range(5):
        np.testing.assert_array_equal(stacked[i], expected[i])
    assert np.shares_memory(stacked[3], b)
    with pytest.raises(IndexError):
        stacked[5]
    with pytest.raises(ValueError, match="different image shapes"):
        StackedImages([a, np.zeros((1, 3, 3), np.uint8)])
