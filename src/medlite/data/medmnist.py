"""MedMNIST ``.npz`` files (``{train,val,test}_images`` / ``{train,val,test}_labels``) as a :class:`Source`.

Opening reads only the ``.npy`` headers (shapes, dtypes), so it is cheap even for a large MedMNIST+ file; a
split's images are decompressed on first use. The official splits are kept. Class names are PneumoniaMNIST's
(normal, pneumonia), or the ``medmnist`` package's official names when it is installed, else the label values.
"""

from __future__ import annotations

import zipfile
from bisect import bisect_right
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medlite.data.records import SPLIT_NAMES, Record, Source, need_two_classes
from medlite.errors import DataError

NPZ_KEYS: tuple[str, ...] = tuple(f"{s}_{k}" for s in SPLIT_NAMES for k in ("images", "labels"))
PNEUMONIAMNIST_CLASSES: list[str] = ["normal", "pneumonia"]


def _npy_shape(npz: zipfile.ZipFile, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of member ``key`` read from its ``.npy`` header, without decompressing the data."""
    with npz.open(f"{key}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        read = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(fh)
        return shape, dtype


class _NpzReader:
    """Picklable reader of MedMNIST npz records: ``record.item`` is the index over train + val + test."""

    def __init__(self, path: str, splits: list[tuple[str, int]]) -> None:
        self.path, self.splits = path, splits  # (split, first global index), in order
        self._arrays: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "splits": self.splits, "_arrays": {}}  # never pickle loaded images

    def __call__(self, record: Record) -> np.ndarray:
        k = bisect_right([start for _, start in self.splits], int(record.item)) - 1
        split, start = self.splits[k]
        if split not in self._arrays:
            # npz members cannot be memory-mapped (MedMNIST's are deflate-compressed), so each split's image
            # array is decompressed once, on first use, and kept.
            with np.load(self.path, allow_pickle=False) as npz:
                self._arrays[split] = npz[f"{split}_images"]
        img = np.asarray(self._arrays[split][int(record.item) - start])
        out = img.astype(np.float32) / float(np.iinfo(img.dtype).max)
        if out.ndim == 3:
            out = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY) if out.shape[2] == 3 else out[:, :, 0]
        return out


def _npz_class_names(path: Path, n_seen: int) -> list[str]:
    flag = path.stem.lower().split("_")[0]  # pneumoniamnist_224.npz -> pneumoniamnist
    try:
        # optional: the official label names when the medmnist package is installed
        from medmnist.info import INFO

        if flag in INFO:
            names = INFO[flag]["label"]
            return [names[str(i)] for i in range(len(names))]
    except ImportError:
        pass
    if flag == "pneumoniamnist":
        return list(PNEUMONIAMNIST_CLASSES)
    return [f"class{i}" for i in range(n_seen)]


def npz_source(path: Path, *, npz_size: int | None) -> Source:
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from None
    with zf:
        keys = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
        present = [s for s in SPLIT_NAMES if f"{s}_images" in keys or f"{s}_labels" in keys]
        if not present or any(f"{s}_{k}" not in keys for s in present for k in ("images", "labels")):
            raise DataError(
                f"{path}: not a MedMNIST npz; expected keys {', '.join(NPZ_KEYS)}, "
                f"found {', '.join(sorted(keys)) or 'none'}"
            )
        headers = {s: _npy_shape(zf, f"{s}_images") for s in present}
    with np.load(path, allow_pickle=False) as npz:
        labels = {s: np.asarray(npz[f"{s}_labels"]) for s in present}
    records, splits, start = [], [], 0
    for s in present:
        shape, dtype = headers[s]
        lab = labels[s]
        if lab.ndim == 2 and lab.shape[1] > 1:
            raise DataError(
                f"{path}: multi-label npz ({s}_labels has {lab.shape[1]} columns) is not supported yet"
            )
        lab = lab.reshape(-1)
        if (
            len(shape) not in (3, 4)
            or (len(shape) == 4 and shape[3] not in (1, 3))
            or dtype not in (np.uint8, np.uint16)
        ):
            raise DataError(
                f"{path}: {s}_images must be uint8/uint16 (N, H, W) or (N, H, W, 3), got {dtype} {shape}"
            )
        if shape[0] != lab.shape[0] or not np.issubdtype(lab.dtype, np.integer) or (lab < 0).any():
            raise DataError(
                f"{path}: {s}_labels must be {shape[0]} non-negative integers, "
                f"got {lab.dtype} {labels[s].shape}"
            )
        if npz_size is not None and shape[1:3] != (npz_size, npz_size):
            raise DataError(f"{path}: images are {shape[1]}x{shape[2]}, not npz_size={npz_size}")
        splits.append((s, start))
        records += [Record(start + i, int(y), None, s, f"{s}/{i}") for i, y in enumerate(lab)]
        start += shape[0]
    n_seen = max(r.label for r in records) + 1 if records else 0
    classes = _npz_class_names(path, n_seen)
    if n_seen > len(classes):
        raise DataError(f"{path}: labels go up to {n_seen - 1} but the dataset has {len(classes)} classes")
    need_two_classes(classes, path)
    st = path.stat()
    reader = _NpzReader(str(path), splits)
    return Source("npz", str(path), classes, records, reader, [f"{path}|{st.st_size}|{st.st_mtime_ns}"])
