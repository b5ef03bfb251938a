"""Tests for medlite.data.sources: folders, CSV manifests, MedMNIST npz, synthetic, groups, skipping."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from medlite.data.sources import open_source
from medlite.errors import DataError


def _png(path: Path, value: int = 100, shape: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", np.full(shape, value, dtype=np.uint8))
    assert ok
    buf.tofile(path)
    return path


def _jpeg_bytes() -> bytes:
    rng = np.random.default_rng(1)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    assert ok
    return buf.tobytes()


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    root = tmp_path / "xrays"
    _png(root / "normal" / "a.png", 10)
    _png(root / "normal" / "sub" / "b.png", 20)  # recursive inside a class folder
    _png(root / "pneumonia" / "c.png", 30)
    _png(root / "pneumonia" / ".hidden.png", 40)
    (root / "pneumonia" / "README.txt").write_text("not an image")
    (root / "notes.csv").write_text("a,b\n")
    _png(root / "masks" / "pneumonia" / "c.png", 255)
    (root / "manifest.csv").write_text("path,label\n")  # beside class folders: still read as a folder
    return root


def test_folder_layout(class_folder: Path) -> None:
    src = open_source(class_folder)
    assert src.kind == "folder" and src.classes == ["normal", "pneumonia"]
    assert [r.name for r in src.records] == ["normal/a.png", "normal/sub/b.png", "pneumonia/c.png"]
    assert src.labels.tolist() == [0, 0, 1]
    assert all(Path(str(r.item)).is_absolute() and r.split is None for r in src.records)
    assert src.read(2)[0, 0] == pytest.approx(30 / 255)
    assert src.read_mask(2) is not None and src.read_mask(2).dtype == bool and src.read_mask(2).all()
    assert src.read_mask(0) is None  # no mask file for this image
    assert not src.skipped and len(src.fingerprint_parts) == 3


def test_fingerprint_follows_file_changes(class_folder: Path) -> None:
    before = open_source(class_folder).fingerprint()
    assert open_source(class_folder).fingerprint() == before
    _png(class_folder / "normal" / "a.png", 11, shape=(13, 10))
    assert open_source(class_folder).fingerprint() != before


def test_split_folders(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        for cls in ("bacterial", "normal", "viral"):
            _png(tmp_path / split / cls / f"{split}_{cls}.png")
    src = open_source(tmp_path)
    assert src.classes == ["bacterial", "normal", "viral"] and src.has_splits
    assert sorted({r.split for r in src.records}) == ["test", "train", "val"]
    rec = next(r for r in src.records if r.name == "val/viral/val_viral.png")
    assert rec.split == "val" and rec.label == 2


def test_folder_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="folder is empty"):
        open_source(empty)
    single = tmp_path / "single"
    _png(single / "normal" / "a.png")
    with pytest.raises(DataError, match=r"needs at least 2 classes, found only 'normal' in .*single"):
        open_source(single)
    flat = tmp_path / "flat"
    _png(flat / "a.png")
    with pytest.raises(DataError, match="no class subfolders"):
        open_source(flat)
    mixed = tmp_path / "mixed"
    _png(mixed / "train" / "normal" / "a.png")
    _png(mixed / "normal" / "b.png")
    with pytest.raises(DataError, match="mixes split folders"):
        open_source(mixed)
    with pytest.raises(DataError, match="no such file or folder"):
        open_source(tmp_path / "missing")
    odd = tmp_path / "data.txt"
    odd.write_text("x")
    with pytest.raises(DataError, match="unknown source type"):
        open_source(odd)


def test_bad_files_are_skipped_or_fatal(tmp_path: Path) -> None:
    _png(tmp_path / "normal" / "a.png")
    _png(tmp_path / "pneumonia" / "b.png")
    (tmp_path / "normal" / "zero.png").write_bytes(b"")
    (tmp_path / "pneumonia" / "cut.jpg").write_bytes(_jpeg_bytes()[:300])
    (tmp_path / "pneumonia" / "fake.jpg").write_text("<html>not a jpeg</html>")
    with pytest.warns(UserWarning, match="skipped 3 unreadable"):
        src = open_source(tmp_path)
    assert len(src) == 2
    reasons = dict(src.skipped)
    assert reasons["normal/zero.png"] == "empty file (0 bytes)"
    assert "truncated JPEG" in reasons["pneumonia/cut.jpg"]
    assert "unknown magic" in reasons["pneumonia/fake.jpg"]
    with pytest.raises(DataError, match=r"zero\.png: empty file"):
        open_source(tmp_path, strict=True)


def test_dicom_without_suffix_is_found(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    from dicom_writer import write_dicom

    (tmp_path / "abnormal").mkdir()
    write_dicom(tmp_path / "abnormal" / "1.2.840.10008.99", np.full((4, 4), 4095, dtype=np.uint16))
    _png(tmp_path / "normal" / "a.png")
    src = open_source(tmp_path)
    assert [r.name for r in src.records] == ["abnormal/1.2.840.10008.99", "normal/a.png"]
    assert src.read(0).max() == pytest.approx(1.0)


def test_group_from_filename(tmp_path: Path) -> None:
    names = {
        "bacterial": ["person123_bacteria_456.jpeg", "person123_bacteria_457.jpeg"],
        "normal": ["IM-0115-0001.jpeg", "NORMAL2-IM-1427-0001.jpeg", "IM-0429-0001-0002.jpeg"],
    }
    data = _jpeg_bytes()
    for cls, files in names.items():
        (tmp_path / cls).mkdir()
        for name in files:
            (tmp_path / cls / name).write_bytes(data)
    src = open_source(tmp_path, group_from_filename=True)
    groups = {Path(r.name).name: r.group for r in src.records}
    assert groups == {
        "person123_bacteria_456.jpeg": "person123",
        "person123_bacteria_457.jpeg": "person123",
        "IM-0115-0001.jpeg": "IM-0115",
        "NORMAL2-IM-1427-0001.jpeg": "NORMAL2-IM-1427",
        "IM-0429-0001-0002.jpeg": "IM-0429",
    }
    assert {r.group for r in open_source(tmp_path, group_from_filename=r"^[A-Za-z]+").records} == {
        "person",
        "IM",
        "NORMAL",
    }
    assert open_source(tmp_path, group_from_filename=r"(\d+)").records[0].group == "123"
    (tmp_path / "normal" / "scan_7.jpeg").write_bytes(data)
    with pytest.raises(DataError, match=r"scan_7\.jpeg: file name does not match"):
        open_source(tmp_path, group_from_filename=True)
    with pytest.raises(DataError, match="invalid regular expression"):
        open_source(tmp_path, group_from_filename="(unclosed")


def _manifest(tmp_path: Path, text: str) -> Path:
    _png(tmp_path / "img" / "a.png", 10)
    _png(tmp_path / "img" / "b.png", 20)
    _png(tmp_path / "img" / "c.png", 30)
    _png(tmp_path / "m" / "b.png", 255)
    path = tmp_path / "manifest.csv"
    path.write_text(text)
    return path


def test_csv_manifest(tmp_path: Path) -> None:
    path = _manifest(
        tmp_path,
        "path,label,patient_id,split,mask,extra\n"
        "img/a.png,normal,p1,train,,x\n"
        "img/b.png,pneumonia,p2,val,m/b.png,y\n"
        "\n"
        "img/c.png,pneumonia,p2,TEST,,z\n",
    )
    src = open_source(path)
    assert src.kind == "csv" and src.classes == ["normal", "pneumonia"]
    assert [(r.label, r.group, r.split) for r in src.records] == [
        (0, "p1", "train"),
        (1, "p2", "val"),
        (1, "p2", "test"),
    ]
    assert src.read(1)[0, 0] == pytest.approx(20 / 255)
    assert src.read_mask(1).all() and src.read_mask(0) is None
    with pytest.raises(DataError, match="patient_id column"):
        open_source(path, group_from_filename=True)


def test_csv_missing_file_and_errors(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "path,label\nimg/a.png,0\nimg/gone.png,10\nimg/b.png,2\nimg/c.png,10\n")
    with pytest.warns(UserWarning, match="skipped 1"):
        src = open_source(path)
    assert src.classes == ["0", "2", "10"]  # integer labels sort numerically
    assert src.skipped == [("img/gone.png", "file not found (row 3)")]
    with pytest.raises(DataError, match=r"row 3: file not found: img/gone\.png"):
        open_source(path, strict=True)
    path.write_text("path,label,split\nimg/a.png,x,training\n")
    with pytest.raises(DataError, match="row 2: unknown split 'training'"):
        open_source(path)
    path.write_text("img/a.png,x\nimg/b.png,y\n")
    with pytest.raises(DataError, match="needs a header row"):
        open_source(path)
    path.write_text("path,label\nimg/a.png,x\nimg/b.png,x\n")
    with pytest.raises(DataError, match="found only 'x'"):
        open_source(path)


def _npz(path: Path, *, rgb: bool = False, **override: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        shape = (n, 8, 8, 3) if rgb else (n, 8, 8)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    arrays.update(override)
    np.savez_compressed(path, **arrays)
    return path


def test_npz(tmp_path: Path) -> None:
    path = _npz(tmp_path / "toy.npz")
    src = open_source(path)
    assert src.kind == "npz" and src.classes == ["class0", "class1"] and len(src) == 11
    assert [r.split for r in src.records].count("val") == 2
    rec = src.records[7]
    assert rec.name == "val/1" and rec.label == 1
    with np.load(path) as npz:
        expected = npz["val_images"][1] / 255.0
    np.testing.assert_allclose(src.read(7), expected, atol=1e-7)
    reader = pickle.loads(pickle.dumps(src.reader))  # picklable for worker processes
    np.testing.assert_allclose(reader(rec), expected, atol=1e-7)
    assert open_source(_npz(tmp_path / "pneumoniamnist.npz")).classes == ["normal", "pneumonia"]
    with pytest.raises(DataError, match="npz_size=28"):
        open_source(path, npz_size=28)


def test_npz_rgb_and_medmnist_info(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = open_source(_npz(tmp_path / "bloodmnist.npz", rgb=True))
    assert src.read(0).shape == (8, 8) and src.read(0).dtype == np.float32
    info = types.ModuleType("medmnist.info")
    info.INFO = {"bloodmnist": {"label": {"0": "basophil", "1": "eosinophil"}}}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "medmnist", types.ModuleType("medmnist"))
    monkeypatch.setitem(sys.modules, "medmnist.info", info)
    assert open_source(tmp_path / "bloodmnist.npz").classes == ["basophil", "eosinophil"]


def test_npz_errors(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((2, 4, 4), np.uint8), y=np.zeros(2))
    with pytest.raises(DataError, match="expected keys train_images, train_labels, val_images"):
        open_source(wrong)
    multi = _npz(tmp_path / "chest.npz", train_labels=np.zeros((6, 14), np.uint8))
    with pytest.raises(DataError, match="multi-label npz"):
        open_source(multi)
    with pytest.raises(DataError, match="group_from_filename"):
        open_source(multi, group_from_filename=True)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        open_source(broken)


def test_synthetic(tmp_path: Path) -> None:
    synthetic = pytest.importorskip("medlite.data.synthetic", reason="medlite.data.synthetic not written yet")
    src = open_source("synthetic:binary", synthetic_per_class=2, synthetic_size=32, seed=3)
    assert src.kind == "synthetic" and src.classes == ["normal", "pneumonia"] and len(src) == 4
    assert src.read(0).shape == (32, 32)
    assert (
        open_source("synthetic", synthetic_per_class=1, synthetic_size=32).classes
        == synthetic.CLASS_SETS["chestx6"]
    )
    with pytest.raises(DataError, match="unknown class set 'nope'"):
        open_source("synthetic:nope")
    # a phantom dataset written to disk reads back as a folder with its masks wired
    root = synthetic.write_phantom_dataset(tmp_path / "ph", classes="binary", per_class=2, size=32, seed=3)
    disk = open_source(root)
    assert disk.classes == ["normal", "pneumonia"] and len(disk) == 4
    np.testing.assert_allclose(disk.read(3), src.read(3), atol=1e-6)
    assert np.array_equal(disk.read_mask(3), src.read_mask(3))
