"""A data source opened, preprocessed into the uint8 cache and split: what training and evaluation consume.

* :class:`DataConfig`: where images come from and how they are split (the ``data`` section of a run config).
* :func:`prepare_data`: open -> cache -> split (stratified, patient-grouped, labelled fraction), or reproduce
  a stored split manifest exactly.
* :func:`prepare_other_source`: another source scored with a run (cross-dataset evaluation, explanations):
  scored whole or by its own split, its classes matched to the run's by name.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medlite.data.cache import CachedDataset, build_cache
from medlite.data.preprocess import PreprocessConfig
from medlite.data.records import SPLIT_MANIFEST, Source
from medlite.data.sources import open_source
from medlite.data.splits import SplitManifest, apply_manifest, label_fraction, make_splits
from medlite.errors import DataError, MedliteError


class DataConfig(BaseModel):
    """Where images come from and how they are split.

    Attributes:
        source: a folder, CSV manifest, MedMNIST ``.npz`` or ``synthetic[:chestx6|pediatric3|binary]``.
        val_frac / test_frac: fractions of the whole set carved out when the source defines no such split.
        fraction: share of the training split that keeps its labels (nested and stratified per seed).
        group_from_filename: derive patient ids from file names (``True``) or with this regex.
        split_from: reuse the train/val/test assignment of a split manifest (a run directory or its
            ``splits.csv``), so several runs share one split; the labelled fraction is still drawn per seed.
        synthetic_per_class / synthetic_size: phantom count per class and side in pixels (``synthetic`` only).
    """

    model_config = ConfigDict(extra="forbid")

    source: str = "synthetic"
    val_frac: float = Field(0.1, ge=0.0, lt=1.0)
    test_frac: float = Field(0.2, ge=0.0, lt=1.0)
    fraction: float = Field(1.0, gt=0.0, le=1.0)
    group_from_filename: bool | str = False
    split_from: str | None = None
    strict: bool = False
    synthetic_per_class: int = Field(60, ge=1)
    synthetic_size: int = Field(128, ge=32)


class _Seeded(Protocol):
    seed: int


class DataSettings(Protocol):
    """What :func:`prepare_data` reads of a run config (:class:`medlite.config.RunConfig` has it)."""

    data: DataConfig
    preprocess: PreprocessConfig
    train: _Seeded


@dataclass
class PreparedData:
    """A source preprocessed, cached and split, ready for a DataModule.

    Attributes:
        source: the opened source (records, reader).
        cached: the uint8 cache of its readable images.
        splits: str (N,) ``"train"`` / ``"val"`` / ``"test"`` per cached image.
        in_fraction: bool (N,) whether a training image keeps its label (labelled fraction).
        classes: class names; ``cached.labels`` index this list.
    """

    source: Source
    cached: CachedDataset
    splits: np.ndarray
    in_fraction: np.ndarray
    classes: list[str]

    def indices(self, split: str, labelled_only: bool = True) -> np.ndarray:
        """int64 positions of ``split``'s images in the cache (``train``: labelled ones unless told otherwise)."""
        mask = self.splits == split
        if split == "train" and labelled_only:
            mask &= self.in_fraction
        return np.flatnonzero(mask)

    @property
    def eval_split(self) -> str:
        """The split a run is scored on: ``test``, or ``val`` when the split has no test images."""
        return "test" if len(self.indices("test", labelled_only=False)) else "val"


def prepare_data(cfg: DataSettings, manifest: Path | None = None, progress: bool = True) -> PreparedData:
    """Open, cache and split the data of ``cfg``; with ``manifest`` reproduce a stored split exactly."""
    d = cfg.data
    source = open_source(d.source, strict=d.strict, group_from_filename=d.group_from_filename,
                         synthetic_per_class=d.synthetic_per_class, synthetic_size=d.synthetic_size,
                         seed=cfg.train.seed)
    cached = build_cache(source, cfg.preprocess, strict=d.strict, progress=progress)
    records = [source.records[i] for i in cached.record_indices]
    if manifest is not None:
        stored = SplitManifest.load(manifest)
        rows = stored.align(source)[cached.record_indices]
        splits, in_fraction = stored.splits[rows], stored.in_fraction[rows]
    else:
        if d.split_from is not None:
            splits = _shared_split(d.split_from, source, cached.record_indices)
        else:
            groups = [r.group for r in records] if any(r.group for r in records) else None
            predefined = [r.split for r in records] if source.has_splits else None
            splits = make_splits(cached.labels, groups, val_frac=d.val_frac, test_frac=d.test_frac,
                                 seed=cfg.train.seed, predefined=predefined)
        in_fraction = np.zeros(len(records), dtype=bool)
        train_idx = np.flatnonzero(splits == "train")
        in_fraction[label_fraction(train_idx, cached.labels, d.fraction, cfg.train.seed)] = True
    if not np.any(splits == "train"):
        raise MedliteError(f"{d.source}: the split has no training images")
    return PreparedData(source, cached, np.asarray(splits), np.asarray(in_fraction, dtype=bool), list(cached.classes))


def _shared_split(split_from: str | Path, source: Source, record_indices: np.ndarray) -> np.ndarray:
    """The split of a stored manifest (run directory or ``splits.csv``) for the cached images of ``source``."""
    path = Path(split_from)
    path = path / SPLIT_MANIFEST if path.is_dir() else path
    if not path.is_file():
        raise MedliteError(f"--split-from {split_from}: no split manifest there (a run directory or its "
                           f"{SPLIT_MANIFEST})")
    splits = apply_manifest(source, path)[record_indices]
    if (splits == "").any():
        raise MedliteError(f"--split-from {path}: {int((splits == '').sum())} image(s) of {source.location} have no "
                           f"split there (the manifest did not use them)")
    return splits


def match_classes(found: Sequence[str], expected: Sequence[str], where: str) -> np.ndarray:
    """Map the class names of another source onto a run's classes by name.

    Args:
        found: the other source's class names (its label order).
        expected: the run's class names (the model's output order).
        where: the source, for messages.

    Returns:
        int64 (len(found),): for each class of the other source its index among ``expected``.

    Raises:
        DataError: the other source has classes the run does not know (named in the message). Classes of the run
            missing from the source are allowed (a site without one class) and named in a warning.
    """
    extra = [c for c in found if c not in expected]
    if extra:
        raise DataError(f"{where}: class(es) {', '.join(map(repr, extra))} are not among the run's classes "
                        f"({', '.join(expected)})")
    missing = [c for c in expected if c not in found]
    if missing:
        warnings.warn(f"{where}: no images of the run's class(es) {', '.join(map(repr, missing))}; they are scored "
                      "as absent", UserWarning, stacklevel=3)
    return np.asarray([list(expected).index(c) for c in found], dtype=np.int64)


def prepare_other_source(cfg: DataSettings, source: str | Path, classes: Sequence[str], split: str = "test",
                         progress: bool = False) -> PreparedData:
    """Another source preprocessed with a run's settings, its labels in the run's class order.

    The source is scored whole (no val/test carved out of it): when it defines its own ``split`` that split
    is used, otherwise every image is put in ``split``. Its classes are matched to ``classes`` by name (the
    same names in another order are fine; see :func:`match_classes`).
    """
    # Scored whole, so no patient groups are needed: the run's --group-from-filename pattern (Kermany names)
    # would refuse another set's file names.
    other = cfg.data.model_copy(update={"source": str(source), "val_frac": 0.0, "test_frac": 0.0, "fraction": 1.0,
                                        "split_from": None, "group_from_filename": False})
    prepared = prepare_data(_Settings(other, cfg.preprocess, cfg.train), progress=progress)
    mapping = match_classes(prepared.classes, classes, str(source))
    cached = dataclasses.replace(prepared.cached, labels=mapping[prepared.cached.labels], classes=list(classes))
    splits = prepared.splits if np.any(prepared.splits == split) else np.full(len(prepared.splits), split)
    return PreparedData(prepared.source, cached, splits, prepared.in_fraction, list(classes))


@dataclass
class _Settings:
    data: DataConfig
    preprocess: PreprocessConfig
    train: _Seeded
