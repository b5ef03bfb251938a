"""Train / val / test splits that are stratified, patient-grouped and reproducible; nested label fractions.

Splits are stratified by label and, when records carry a patient (group) id, grouped so that all images of one
patient land in one part (STYLE_AND_USERS.md B.7: images of one patient in train and test inflate every
metric). The :class:`SplitManifest` saved into each run directory records, per image, its split and whether it
belongs to the labelled fraction, so a result can always be traced back to the exact images it used.

Label fractions follow METHODS.md (dual-model self-KD): a stratified subset of the *training* part with
``max(1, round(p * n_c))`` images of each class ``c``, nested across fractions for a given seed
(1 % ⊂ 5 % ⊂ 10 %), identical for every method.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit

from medlite.data.records import SPLIT_NAMES, Source
from medlite.errors import DataError
from medlite.utils.atomic import atomic_write

_MANIFEST_COLUMNS = ("index", "name", "label", "class", "group", "split", "in_fraction")


def make_splits(labels: np.ndarray, groups: Sequence[str | None] | None = None, *, val_frac: float = 0.1,
                test_frac: float = 0.2, seed: int = 0,
                predefined: Sequence[str | None] | None = None) -> np.ndarray:
    """Assign every image to ``"train"``, ``"val"`` or ``"test"``.

    Parts are drawn with ``StratifiedShuffleSplit``: over images (exact per-class proportions) or, with
    groups, over patients stratified by majority label and image count, so that a patient's images stay
    together and fractions hold for patients (approximately for images). Images whose group is ``None``
    count as patients of their own. (sklearn's ``StratifiedGroupKFold`` matches class shares more tightly,
    ~0.1 % vs ~1.3 % worst deviation on the 5,216-image pediatric CXR set, but took ~8 s for its 2,846
    patients on a 2-core CPU against 0.04 s here.)

    With ``predefined`` (a source's own splits) those assignments are kept; images marked ``None`` join train,
    and only parts that no image has are carved out of train (e.g. a train/test source gets a val part).

    Args:
        labels: int (N,) class indices.
        groups: N patient ids (or ``None`` entries), or ``None`` for ungrouped data.
        val_frac: fraction of *all* N images for validation, in [0, 1); 0 means no val part.
        test_frac: fraction of *all* N images for test, in [0, 1); 0 means no test part.
        seed: random seed; the same inputs and seed always give the same split.
        predefined: N entries in ``("train", "val", "test", None)``.

    Returns:
        str array (N,) of ``"train"``, ``"val"`` and ``"test"``.

    Warns:
        UserWarning: a non-empty part lacks some class, or predefined parts share a patient.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise DataError(f"labels must be a 1-D array of class indices >= 0, got shape {labels.shape} "
                        f"dtype {labels.dtype}")
    n = len(labels)
    for name, frac in (("val_frac", val_frac), ("test_frac", test_frac)):
        if not 0.0 <= frac < 1.0:
            raise DataError(f"{name}={frac} must be in [0, 1)")
    if val_frac + test_frac >= 1.0:
        raise DataError(f"val_frac + test_frac = {val_frac + test_frac:g} leaves no training images; "
                        f"must be < 1")
    group_ids = _group_ids(groups, n)
    splits = np.full(n, "train", dtype="<U5")
    wanted = {"test": test_frac, "val": val_frac}
    if predefined is not None:
        if len(predefined) != n:
            raise DataError(f"predefined has {len(predefined)} entries for {n} labels")
        bad = sorted({str(s) for s in predefined if s is not None and s not in SPLIT_NAMES})
        if bad:
            raise DataError(f"predefined split {bad[0]!r} is not one of {', '.join(SPLIT_NAMES)}")
        splits[:] = [s or "train" for s in predefined]
        present = {s for s in predefined if s is not None} - {"train"}
        if group_ids is not None and present:
            _warn_predefined_leak(splits, groups)
        wanted = {part: frac for part, frac in wanted.items() if part not in present}
    pool = np.flatnonzero(splits == "train")
    # Fractions are of all N images; rescale them to the pool they are carved from.
    fracs = {part: frac * n / max(len(pool), 1) for part, frac in wanted.items() if frac > 0}
    if sum(fracs.values()) >= 1.0:
        raise DataError(f"cannot carve {', '.join(fracs)} ({sum(wanted.values()):g} of all images) out of "
                        f"{len(pool)} training images")
    if fracs:
        pool_groups = None if group_ids is None else group_ids[pool]
        for part, idx in _carve(labels[pool], pool_groups, fracs, seed).items():
            splits[pool[idx]] = part
    _warn_missing_classes(splits, labels)
    return splits


def _group_ids(groups: Sequence[str | None] | None, n: int) -> np.ndarray | None:
    """int (N,) group codes with ``None`` entries made unique, or ``None`` when no image has a group."""
    if groups is None:
        return None
    if len(groups) != n:
        raise DataError(f"groups has {len(groups)} entries for {n} labels")
    if all(g is None for g in groups):
        return None
    codes: dict[str, int] = {}
    out = np.empty(n, dtype=np.int64)
    for i, g in enumerate(groups):
        out[i] = codes.setdefault(str(g), len(codes)) if g is not None else -1 - i
    return out


def _carve(labels: np.ndarray, groups: np.ndarray | None, fracs: dict[str, float],
           seed: int) -> dict[str, np.ndarray]:
    """Positions (into ``labels``) of each carved part; fractions are of ``len(labels)``.

    With groups, whole patients are drawn, stratified by each patient's majority label (a patient's images
    almost always share one class) crossed with its image count (1, 2, 3, 4+), so that parts also get
    similar numbers of images per class. Fractions hold for patients and approximately for images.
    """
    if groups is None:
        unit_of, unit_labels, unit_sizes = np.arange(len(labels)), labels, np.ones(len(labels), np.int64)
    else:
        _, unit_of = np.unique(groups, return_inverse=True)
        counts = np.zeros((int(unit_of.max()) + 1, int(labels.max()) + 1), dtype=np.int64)
        np.add.at(counts, (unit_of, labels), 1)
        unit_labels, unit_sizes = counts.argmax(axis=1), counts.sum(axis=1)
    what = "images" if groups is None else "patient groups"
    n_units = len(unit_labels)
    remaining = np.arange(n_units)
    parts: dict[str, np.ndarray] = {}
    for part, frac in fracs.items():
        size = max(1, round(frac * n_units))
        if size >= len(remaining):
            raise DataError(f"{n_units} {what} are too few to carve a {part} part of {frac:.0%} and keep a "
                            f"training part")
        chosen = remaining[_stratified_pick(unit_labels[remaining], unit_sizes[remaining], size, seed)]
        remaining = np.setdiff1d(remaining, chosen)
        parts[part] = np.flatnonzero(np.isin(unit_of, chosen))
    return parts


def _stratified_pick(labels: np.ndarray, sizes: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` positions into ``labels``, stratified as finely as sklearn allows.

    Tries label x image-count strata (strata of one unit merged per label), then labels alone, then warns
    and draws without stratification.
    """
    fine = labels * 5 + np.minimum(sizes, 4)
    _, inverse, counts = np.unique(fine, return_inverse=True, return_counts=True)
    fine = np.where(counts[inverse] >= 2, fine, labels * 5)  # StratifiedShuffleSplit needs >= 2 per stratum
    x, reason = np.zeros(len(labels)), None
    for strata in (fine, labels):
        try:
            splitter = StratifiedShuffleSplit(n_splits=1, test_size=size, random_state=seed)
            return np.sort(next(splitter.split(x, strata))[1])
        except ValueError as err:
            reason = err
    warnings.warn(f"split not stratified ({reason})", UserWarning, stacklevel=4)
    return np.sort(next(ShuffleSplit(n_splits=1, test_size=size, random_state=seed).split(x))[1])


def _warn_missing_classes(splits: np.ndarray, labels: np.ndarray) -> None:
    classes = set(np.unique(labels).tolist())
    for part in SPLIT_NAMES:
        in_part = splits == part
        missing = sorted(classes - set(np.unique(labels[in_part]).tolist())) if in_part.any() else []
        if missing:
            warnings.warn(f"{part} split has no image of class index(es) {missing} ({int(in_part.sum())} "
                          f"images); its per-class metrics are undefined", UserWarning, stacklevel=3)


def _warn_predefined_leak(splits: np.ndarray, groups: Sequence[str | None] | None) -> None:
    try:
        check_leakage(splits, groups)
    except DataError as err:
        warnings.warn(f"the source's own splits leak patients: {err}", UserWarning, stacklevel=3)


def check_leakage(splits: Sequence[str] | np.ndarray, groups: Sequence[str | None] | None) -> None:
    """Raise when a patient appears in more than one part; ``None`` groups are ignored.

    Raises:
        DataError: naming the first leaking patient (in record order), its parts and the number of leaks.
    """
    if groups is None:
        return
    if len(groups) != len(splits):
        raise DataError(f"groups has {len(groups)} entries for {len(splits)} split entries")
    parts: dict[str, set[str]] = {}
    for g, s in zip(groups, splits, strict=True):
        if g is not None and s:
            parts.setdefault(str(g), set()).add(str(s))
    leaks = [g for g, seen in parts.items() if len(seen) > 1]
    if leaks:
        first = leaks[0]
        raise DataError(f"patient {first!r} appears in {' and '.join(sorted(parts[first]))} "
                        f"({len(leaks)} patient(s) leak across splits)")


def label_fraction(train_indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified, nested subset of the training images.

    Each class's training images are permuted once per ``(seed, class)`` and the first
    ``max(1, round(fraction * n_c))`` are taken, so for one seed a smaller fraction is always a subset of a
    larger one and every class keeps at least one image.

    Args:
        train_indices: int (M,) indices of the training images into ``labels``.
        labels: int (N,) class indices of *all* images.
        fraction: share of each class to keep, in (0, 1].
        seed: random seed.

    Returns:
        int64 sorted subset of ``train_indices``.
    """
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"label fraction {fraction} must be in (0, 1]")
    train_indices = np.unique(np.asarray(train_indices, dtype=np.int64))
    labels = np.asarray(labels)
    if len(train_indices) and (train_indices[0] < 0 or train_indices[-1] >= len(labels)):
        raise DataError(f"train_indices run outside the {len(labels)} labels")
    train_labels = labels[train_indices]
    keep = []
    for c in np.unique(train_labels):
        members = train_indices[train_labels == c]
        order = np.random.default_rng([seed, int(c)]).permutation(len(members))
        keep.append(members[order[: max(1, round(fraction * len(members)))]])
    return np.sort(np.concatenate(keep)) if keep else train_indices


def _record_name(source: Source, i: int) -> str:
    return source.records[i].name or str(source.records[i].item)


@dataclass(frozen=True, eq=False)
class SplitManifest:
    """Per-record split assignment, saved as ``splits.csv`` in a run directory.

    One row per source record. ``split`` is ``""`` for a record that was not used (e.g. unreadable during
    preprocessing); ``in_fraction`` marks the training images of the labelled fraction.

    Attributes:
        names: N record identities (path relative to the source root, or ``"train/17"`` for arrays).
        labels: int64 (N,) class indices.
        classes: class names indexed by label.
        groups: N patient ids or ``None``.
        splits: str (N,) ``"train"``/``"val"``/``"test"``/``""``.
        in_fraction: bool (N,).
    """

    names: list[str]
    labels: np.ndarray
    classes: list[str]
    groups: list[str | None]
    splits: np.ndarray
    in_fraction: np.ndarray

    @classmethod
    def from_source(cls, source: Source, splits: np.ndarray, fraction_indices: np.ndarray | None = None,
                    record_indices: np.ndarray | None = None) -> SplitManifest:
        """Describe ``splits`` of ``source``.

        Args:
            source: the data source.
            splits: str (M,) split per used image.
            fraction_indices: indices into ``splits`` of the labelled fraction; default all of train.
            record_indices: int (M,) record position of each used image (``CachedDataset.record_indices``);
                default ``arange(len(source))``.
        """
        n = len(source)
        rows = np.arange(n) if record_indices is None else np.asarray(record_indices, dtype=np.int64)
        splits = np.asarray(splits)
        if len(rows) != len(splits):
            raise DataError(f"{len(splits)} split entries for {len(rows)} records")
        full = np.full(n, "", dtype="<U5")
        full[rows] = splits
        used_fraction = np.zeros(len(splits), bool)
        if fraction_indices is None:
            used_fraction[splits == "train"] = True
        else:
            used_fraction[np.asarray(fraction_indices, dtype=np.int64)] = True
        in_fraction = np.zeros(n, bool)
        in_fraction[rows] = used_fraction
        return cls([_record_name(source, i) for i in range(n)], source.labels, list(source.classes),
                   [r.group for r in source.records], full, in_fraction)

    def save(self, path: str | Path) -> Path:
        """Write the manifest as CSV (atomically)."""
        with atomic_write(path, "w") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(_MANIFEST_COLUMNS)
            for i, name in enumerate(self.names):
                label = int(self.labels[i])
                writer.writerow([i, name, label, self.classes[label], self.groups[i] or "", self.splits[i],
                                 int(self.in_fraction[i])])
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> SplitManifest:
        """Read a manifest written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: split manifest not found")
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in _MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: not a split manifest (missing column(s) {', '.join(missing)})")
            rows = list(reader)
        classes: dict[int, str] = {}
        for line, row in enumerate(rows, start=2):
            label, split, frac = row["label"] or "", row["split"], row["in_fraction"]
            if not label.isdigit() or split not in (*SPLIT_NAMES, "") or frac not in ("0", "1"):
                raise DataError(f"{path}, line {line}: bad label {label!r}, split {split!r} or "
                                f"in_fraction {frac!r}")
            classes[int(label)] = row["class"]
        names = [row["name"] for row in rows]
        if len(set(names)) != len(names):
            raise DataError(f"{path}: duplicate record names")
        return cls(names, np.asarray([int(r["label"]) for r in rows], dtype=np.int64),
                   [classes.get(i, str(i)) for i in range(max(classes, default=-1) + 1)],
                   [r["group"] or None for r in rows], np.asarray([r["split"] for r in rows], dtype="<U5"),
                   np.asarray([r["in_fraction"] == "1" for r in rows], dtype=bool))

    def align(self, source: Source) -> np.ndarray:
        """int64 (len(source),) row of this manifest for each source record, matched by record name.

        Raises:
            DataError: records missing from the manifest, extra manifest rows, or changed labels.
        """
        names = [_record_name(source, i) for i in range(len(source))]
        if len(set(names)) != len(names):
            raise DataError(f"{source.location}: record names are not unique; cannot match a split manifest")
        row_of = {name: i for i, name in enumerate(self.names)}
        missing = [name for name in names if name not in row_of]
        if missing:
            raise DataError(f"{missing[0]} is not in the split manifest ({len(missing)} record(s) missing): "
                            f"the data changed since the split was made")
        if len(self.names) != len(names):
            extra = next(name for name in self.names if name not in set(names))
            raise DataError(f"split manifest lists {extra}, which the data no longer has "
                            f"({len(self.names) - len(names)} extra row(s))")
        rows = np.asarray([row_of[name] for name in names], dtype=np.int64)
        for i, row in enumerate(rows):
            old = self.classes[self.labels[row]]
            new = source.classes[source.records[i].label]
            if old != new:
                raise DataError(f"{names[i]}: class {new!r} in the data but {old!r} in the split manifest")
        return rows


def apply_manifest(source: Source, manifest_path: str | Path) -> np.ndarray:
    """The saved split of every record of ``source``: str (len(source),), ``""`` for records not used."""
    manifest = SplitManifest.load(manifest_path)
    return manifest.splits[manifest.align(source)]
