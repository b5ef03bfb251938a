"""The common currency of every data source: a list of :class:`Record` plus a way to read each one.

Readers (folder, CSV, MedMNIST npz, DICOM, synthetic phantoms) live in :mod:`medlite.data.sources`; they all
return a :class:`Source`, so preprocessing, splitting and training never care where images came from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medlite.errors import DataError

SPLIT_NAMES = ("train", "val", "test")
#: File name of a split manifest (one row per image: file, label, group, split, labelled); see
#: :class:`medlite.data.splits.SplitManifest`.
SPLIT_MANIFEST = "splits.csv"


@dataclass(frozen=True)
class Record:
    """One labelled image.

    Attributes:
        item: absolute file path (file sources) or integer index (array sources: npz, synthetic).
        label: class index into ``Source.classes``.
        group: patient / acquisition id used for grouped splits, or ``None``.
        split: ``"train"``, ``"val"`` or ``"test"`` when the source defines splits, else ``None``.
        name: a short display name (file path relative to the source root, or ``"train/17"``).
    """

    item: str | int
    label: int
    group: str | None = None
    split: str | None = None
    name: str = ""


@dataclass
class Source:
    """A labelled image collection.

    Attributes:
        kind: ``"folder"``, ``"csv"``, ``"npz"`` or ``"synthetic"``.
        location: where it came from (a path, or ``"synthetic"``).
        classes: class names; ``Record.label`` indexes this list.
        records: the readable images, in a stable order.
        reader: ``reader(record) -> np.ndarray`` float32 (H, W) grayscale with values in [0, 1].
        fingerprint_parts: strings that change whenever the underlying images change (path, size, mtime);
            hashed into the preprocessing-cache key.
        skipped: ``(name, reason)`` for files found but unreadable (listed in summaries, fatal with strict).
        mask_reader: optional ``mask_reader(record) -> np.ndarray`` bool (H, W) lesion mask, or ``None``.
    """

    kind: str
    location: str
    classes: list[str]
    records: list[Record]
    reader: Callable[[Record], np.ndarray]
    fingerprint_parts: Sequence[str] = ()
    skipped: list[tuple[str, str]] = field(default_factory=list)
    mask_reader: Callable[[Record], np.ndarray | None] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def read(self, index: int) -> np.ndarray:
        """Image ``index`` as float32 (H, W) in [0, 1]."""
        return self.reader(self.records[index])

    def read_mask(self, index: int) -> np.ndarray | None:
        """Lesion mask of image ``index`` as bool (H, W), or ``None`` when the source has none."""
        return None if self.mask_reader is None else self.mask_reader(self.records[index])

    @property
    def labels(self) -> np.ndarray:
        """int64 (N,) class indices."""
        return np.asarray([r.label for r in self.records], dtype=np.int64)

    @property
    def has_splits(self) -> bool:
        return any(r.split is not None for r in self.records)

    def fingerprint(self) -> str:
        """A hex digest that identifies this exact list of images and their contents' metadata."""
        h = hashlib.sha256()
        h.update(f"{self.kind}|{self.location}|{','.join(self.classes)}".encode())
        for part in self.fingerprint_parts:
            h.update(part.encode())
            h.update(b"\0")
        for r in self.records:
            h.update(f"{r.item}|{r.label}\0".encode())
        return h.hexdigest()


@dataclass(frozen=True)
class ImageInfo:
    """Header facts about one image file.

    Attributes:
        height: rows in pixels, as stored (before any EXIF orientation).
        width: columns in pixels.
        bit_depth: bits per sample as stored (8 or 16 for PNG, 8 or 12 for JPEG, BitsStored for DICOM).
        channels: samples per pixel as stored (1 gray, 2 gray+alpha, 3 colour, 4 colour+alpha).
        format: ``"PNG"``, ``"JPEG"``, ``"BMP"``, ``"TIFF"`` or ``"DICOM"``.
        window: monochrome DICOM only, the VOI transform its header offers: ``"voi_lut"``, ``"window"`` or
            ``"none"``; ``None`` for other files.
    """

    height: int
    width: int
    bit_depth: int
    channels: int
    format: str
    window: str | None = None


def need_two_classes(classes: list[str], where: Path) -> None:
    """Raise :class:`~medlite.errors.DataError` unless a labelled source has at least two classes."""
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise DataError(f"needs at least 2 classes, found {found} in {where}")
