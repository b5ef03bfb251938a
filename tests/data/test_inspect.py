"""Tests for medlite.data.inspect: counts, image properties, duplicates, unreadable files, rendering."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from rich.console import Console

from medlite.cli.render import format_inspection
from medlite.data.inspect import inspect_source
from medlite.data.records import Record, Source
from medlite.data.sources import open_source


def _write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, img)
    assert ok
    buf.tofile(path)
    return path


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls, n in (("normal", 3), ("pneumonia", 2)):
            for i in range(n):
                _write(tmp_path / split / cls / f"{i}.png", rng.integers(0, 255, (20, 16), dtype=np.uint8))
    _write(tmp_path / "train" / "normal" / "big16.png", np.full((40, 30), 9000, dtype=np.uint16))
    _write(tmp_path / "train" / "normal" / "rgb.jpg", rng.integers(0, 255, (20, 16, 3), dtype=np.uint8))
    # exact copy across splits (leakage) and an empty file (skipped at discovery)
    shutil.copy(tmp_path / "train" / "normal" / "0.png", tmp_path / "test" / "pneumonia" / "copy.png")
    (tmp_path / "train" / "pneumonia" / "zero.png").write_bytes(b"")
    # passes the cheap check (magic + end marker) but does not decode
    (tmp_path / "test" / "normal" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(300) + b"\xff\xd9")
    return tmp_path


def test_inspect_folder(messy_folder: Path) -> None:
    with pytest.warns(UserWarning, match="skipped 1"):
        src = open_source(messy_folder)
    summary = inspect_source(src)
    json.dumps(summary)  # JSON-serialisable
    assert summary["kind"] == "folder" and summary["classes"] == ["normal", "pneumonia"]
    assert summary["counts"] == {"normal": 9, "pneumonia": 5}
    assert summary["split_counts"] == {
        "train": {"normal": 5, "pneumonia": 2},
        "test": {"normal": 4, "pneumonia": 3},
    }
    assert summary["total"] == 14
    assert summary["image_size"] == {
        "min": "20x16",
        "max": "40x30",
        "most_common": "20x16",
        "most_common_count": 12,
        "distinct": 2,
    }
    assert summary["bit_depth"] == {"16": 1, "8": 12}
    assert summary["channels"] == {"1": 12, "3": 1}
    assert summary["formats"] == {"JPEG": 1, "PNG": 12}
    assert summary["duplicates"]["count"] == 1 and summary["duplicates"]["cross_split_groups"] == 1
    assert sorted(summary["duplicates"]["groups"][0]) == ["test/pneumonia/copy.png", "train/normal/0.png"]
    unreadable = {item["name"]: item["reason"] for item in summary["unreadable"]["files"]}
    assert summary["unreadable"]["count"] == 2
    assert unreadable["train/pneumonia/zero.png"] == "empty file (0 bytes)"
    assert "corrupt.jpg" in unreadable["test/normal/corrupt.jpg"]


def test_max_decode_limits_decoding(messy_folder: Path) -> None:
    with pytest.warns(UserWarning):
        src = open_source(messy_folder)
    summary = inspect_source(src, max_decode=2)
    assert summary["decoded"] == 2
    assert summary["examined"] == 13  # headers and hashes still read for every decodable-header file


def test_inspect_array_source() -> None:
    images = np.zeros((5, 6, 7), dtype=np.float32)
    images[1] = 0.5
    images[2] = 128 / 255
    images[3] = images[1]  # duplicate of item 1
    src = Source(
        kind="synthetic",
        location="memory",
        classes=["a", "b"],
        records=[
            Record(item=i, label=i % 2, split="train" if i < 3 else "val", name=str(i)) for i in range(5)
        ],
        reader=lambda r: images[int(r.item)],
    )
    summary = inspect_source(src)
    assert summary["image_size"]["most_common"] == "6x7"
    assert summary["bit_depth"] == {"8": 3, "float": 2}  # 0.5 (items 1, 3) is off the 8-bit grid
    assert summary["duplicates"]["count"] == 2  # items 0 = 4 (zeros) and 1 = 3
    assert summary["duplicates"]["cross_split_groups"] == 2
    assert summary["split_counts"]["val"] == {"a": 1, "b": 1}
    assert inspect_source(src, max_decode=3)["examined"] == 3


def test_format_inspection(messy_folder: Path) -> None:
    with pytest.warns(UserWarning):
        summary = inspect_source(open_source(messy_folder))
    console = Console(record=True, width=140)
    console.print(format_inspection(summary))
    text = console.export_text()
    for expected in ("normal", "pneumonia", "train", "test", "20x16", "corrupt.jpg", "copy.png", "leakage"):
        assert expected in text
