"""Tests of stratified / grouped splits, nested label fractions, the leakage check and split manifests."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from medlite.data.records import Record, Source
from medlite.data.splits import (
    SplitManifest,
    apply_manifest,
    check_leakage,
    label_fraction,
    make_splits,
)
from medlite.errors import DataError


def _imbalanced(n: int = 1000, seed: int = 0) -> np.ndarray:
    labels = np.repeat([0, 1, 2], [int(n * 0.7), int(n * 0.2), n - int(n * 0.7) - int(n * 0.2)])
    return np.random.default_rng(seed).permutation(labels)


def _patients(n_patients: int = 300, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Patients with 1-5 images each, all of one class (as in CXR data sets)."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for p in range(n_patients):
        k = int(rng.integers(1, 6))
        labels += [int(rng.choice(3, p=[0.6, 0.3, 0.1]))] * k
        groups += [f"patient{p:03d}"] * k
    return np.asarray(labels), groups


def _source(labels: np.ndarray, groups: list[str | None] | None = None) -> Source:
    groups = groups or [None] * len(labels)
    records = [Record(f"/data/{i}.png", int(y), group=g, name=f"c{y}/{i:04d}.png")
               for i, (y, g) in enumerate(zip(labels, groups, strict=True))]
    return Source("folder", "/data", ["normal", "pneumonia", "tb"], records, lambda r: np.zeros((4, 4)))


# ------------------------------------------------------------------------------------------------- splits
def test_stratified_proportions_and_sizes() -> None:
    labels = _imbalanced()
    splits = make_splits(labels, None, val_frac=0.1, test_frac=0.2, seed=0)
    assert splits.shape == labels.shape and set(splits) == {"train", "val", "test"}
    assert [(splits == p).sum() for p in ("train", "val", "test")] == [700, 100, 200]
    overall = np.bincount(labels) / len(labels)
    for part in ("train", "val", "test"):
        share = np.bincount(labels[splits == part], minlength=3) / (splits == part).sum()
        np.testing.assert_allclose(share, overall, atol=0.011)


def test_grouped_splits_keep_patients_together() -> None:
    labels, groups = _patients()
    splits = make_splits(labels, groups, val_frac=0.1, test_frac=0.2, seed=3)
    check_leakage(splits, groups)  # raises on any leak
    for part, frac in (("val", 0.1), ("test", 0.2)):
        assert abs((splits == part).mean() - frac) < 0.06
        assert set(labels[splits == part]) == {0, 1, 2}
    ungrouped = make_splits(labels, None, seed=3)
    with pytest.raises(DataError, match="leak"):
        check_leakage(ungrouped, groups)  # proves the check would notice if grouping were ignored


def test_none_groups_count_as_own_patients() -> None:
    labels, groups = _patients(100)
    mixed: list[str | None] = [g if i % 3 else None for i, g in enumerate(groups)]
    splits = make_splits(labels, mixed, seed=0)
    check_leakage(splits, mixed)
    assert (splits == "test").any() and (splits == "val").any()


def test_splits_are_deterministic_per_seed() -> None:
    labels, groups = _patients()
    a = make_splits(labels, groups, seed=7)
    assert np.array_equal(a, make_splits(labels, groups, seed=7))
    assert not np.array_equal(a, make_splits(labels, groups, seed=8))
    b = make_splits(_imbalanced(), None, seed=1)
    assert np.array_equal(b, make_splits(_imbalanced(), None, seed=1))
    assert not np.array_equal(b, make_splits(_imbalanced(), None, seed=2))


def test_zero_fractions_leave_parts_empty() -> None:
    labels = _imbalanced(200)
    assert set(make_splits(labels, None, val_frac=0.0, test_frac=0.2)) == {"train", "test"}
    assert set(make_splits(labels, None, val_frac=0.1, test_frac=0.0)) == {"train", "val"}
    assert set(make_splits(labels, None, val_frac=0.0, test_frac=0.0)) == {"train"}


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"val_frac": -0.1}, "val_frac"),
    ({"test_frac": 1.0}, "test_frac"),
    ({"val_frac": 0.5, "test_frac": 0.5}, "no training images"),
])
def test_bad_fractions_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        make_splits(_imbalanced(100), None, **kwargs)


def test_predefined_splits_are_kept_and_missing_parts_carved_from_train() -> None:
    labels, groups = _patients()
    rng = np.random.default_rng(0)
    test_patients = set(rng.choice(sorted(set(groups)), 60, replace=False).tolist())
    predefined = ["test" if g in test_patients else "train" for g in groups]
    splits = make_splits(labels, groups, val_frac=0.1, seed=0, predefined=predefined)
    given_test = np.asarray(predefined) == "test"
    assert np.array_equal(splits == "test", given_test)  # the source's test split is untouched
    val = splits == "val"
    assert val.any() and not (val & given_test).any()
    assert abs(val.mean() - 0.1) < 0.05  # 10 % of all images, carved out of train
    check_leakage(splits, groups)
    complete = np.asarray(["train", "val", "test"] * (len(labels) // 3) + ["train"] * (len(labels) % 3))
    assert np.array_equal(make_splits(labels, None, predefined=list(complete)), complete)
    with pytest.raises(DataError, match="predefined split 'dev'"):
        make_splits(labels, None, predefined=["dev"] * len(labels))


def test_predefined_leak_and_missing_class_warn() -> None:
    labels = np.array([0, 0, 1, 1, 0, 1])
    groups = ["p1", "p1", "p2", "p3", "p4", "p5"]
    predefined = ["train", "test", "train", "test", "train", "train"]
    with pytest.warns(UserWarning, match="leak patients: patient 'p1'"):
        make_splits(labels, groups, val_frac=0.0, predefined=predefined)
    rare = np.array([0] * 40 + [1] * 40 + [2])
    with pytest.warns(UserWarning) as record:
        make_splits(rare, None, seed=0)
    messages = [str(w.message) for w in record]
    assert any("not stratified" in m for m in messages)
    assert any("split has no image of class index(es) [2]" in m for m in messages)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_splits(_imbalanced(), None)  # enough images of every class: silent


# ------------------------------------------------------------------------------------------ fractions
def test_label_fractions_are_nested_stratified_and_cover_every_class() -> None:
    labels = _imbalanced(2000)
    splits = make_splits(labels, None, seed=0)
    train = np.flatnonzero(splits == "train")
    subsets = [label_fraction(train, labels, p, seed=1) for p in (0.01, 0.05, 0.1, 1.0)]
    for small, large in zip(subsets, subsets[1:], strict=False):
        assert set(small) < set(large)
    assert np.array_equal(subsets[-1], train)
    counts = np.bincount(labels[train])
    for p, subset in zip((0.01, 0.05, 0.1), subsets, strict=False):
        assert set(subset) <= set(train)
        expected = [max(1, round(p * c)) for c in counts]
        assert np.bincount(labels[subset], minlength=3).tolist() == expected
    tiny = label_fraction(train, labels, 0.0001, seed=1)
    assert np.bincount(labels[tiny]).tolist() == [1, 1, 1]
    assert np.array_equal(subsets[1], label_fraction(train, labels, 0.05, seed=1))
    assert not np.array_equal(subsets[1], label_fraction(train, labels, 0.05, seed=2))


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_label_fraction_out_of_range_raises(fraction: float) -> None:
    with pytest.raises(DataError, match="fraction"):
        label_fraction(np.arange(10), np.zeros(10, int), fraction, seed=0)


# -------------------------------------------------------------------------------------------- leakage
def test_check_leakage_names_first_offender_and_count() -> None:
    groups = ["a", "b", "c", "a", "b", "d", None, None]
    splits = ["train", "train", "val", "test", "val", "test", "train", "test"]
    with pytest.raises(DataError, match=r"patient 'a' appears in test and train \(2 patient\(s\)"):
        check_leakage(splits, groups)
    check_leakage(["train", "train", "val", "train", "train", "test", "train", "test"], groups)
    check_leakage(splits, None)


# ------------------------------------------------------------------------------------------- manifest
def test_manifest_round_trip_reproduces_the_split(tmp_path: Path) -> None:
    labels, groups = _patients(60)
    source = _source(labels, groups)
    splits = make_splits(labels, groups, seed=0)
    fraction = label_fraction(np.flatnonzero(splits == "train"), labels, 0.1, seed=0)
    path = SplitManifest.from_source(source, splits, fraction).save(tmp_path / "run" / "splits.csv")
    header = path.read_text().splitlines()[0]
    assert header == "index,name,label,class,group,split,in_fraction"
    assert np.array_equal(apply_manifest(source, path), splits)
    loaded = SplitManifest.load(path)
    assert np.array_equal(np.flatnonzero(loaded.in_fraction), fraction)
    assert loaded.groups == groups and loaded.classes == ["normal", "pneumonia", "tb"]
    # Records listed in another order (e.g. a re-scan) are matched by name.
    shuffled = Source(source.kind, source.location, source.classes, source.records[::-1], source.reader)
    assert np.array_equal(apply_manifest(shuffled, path), splits[::-1])


def test_manifest_maps_cache_rows_and_marks_unused_records(tmp_path: Path) -> None:
    labels = np.arange(50) % 3
    source = _source(labels)
    kept = np.delete(np.arange(50), [3, 17])  # e.g. two images unreadable during preprocessing
    splits = make_splits(labels[kept], None, seed=0)
    path = SplitManifest.from_source(source, splits, record_indices=kept).save(tmp_path / "splits.csv")
    restored = apply_manifest(source, path)
    assert restored[3] == "" and restored[17] == ""
    assert np.array_equal(restored[kept], splits)
    loaded = SplitManifest.load(path)
    assert np.array_equal(loaded.in_fraction[kept], splits == "train")


def test_manifest_refuses_changed_data(tmp_path: Path) -> None:
    labels = np.arange(30) % 3
    source = _source(labels)
    path = SplitManifest.from_source(source, make_splits(labels, None, seed=0)).save(tmp_path / "s.csv")
    fewer = Source(source.kind, source.location, source.classes, source.records[:-2], source.reader)
    with pytest.raises(DataError, match="extra row"):
        apply_manifest(fewer, path)
    more = Source(source.kind, source.location, source.classes,
                  [*source.records, Record("/data/new.png", 0, name="c0/new.png")], source.reader)
    with pytest.raises(DataError, match="c0/new.png is not in the split manifest"):
        apply_manifest(more, path)
    first = source.records[0]
    relabelled = [Record(first.item, (first.label + 1) % 3, name=first.name), *source.records[1:]]
    with pytest.raises(DataError, match="class"):
        apply_manifest(Source(source.kind, source.location, source.classes, relabelled, source.reader), path)
    bogus = tmp_path / "bogus.csv"
    bogus.write_text("path,label\nx.png,0\n")
    with pytest.raises(DataError, match="not a split manifest"):
        SplitManifest.load(bogus)
    with pytest.raises(DataError, match="not found"):
        SplitManifest.load(tmp_path / "missing.csv")


def test_another_source_is_scored_without_the_runs_patient_pattern(tmp_path: Path) -> None:
    """A run split by Kermany patient ids (personNNN_...) scores another set whose names have no such id."""
    import cv2

    from medlite.config import build_config
    from medlite.data.prepared import prepare_other_source

    rng = np.random.default_rng(0)
    for root, names in ((tmp_path / "own", [f"person{i}_bacteria_{i}.png" for i in range(6)]),
                        (tmp_path / "other", [f"Normal ({i}).png" for i in range(3)])):
        for cls in ("normal", "pneumonia"):
            (root / cls).mkdir(parents=True)
            for name in names:
                cv2.imwrite(str(root / cls / name), rng.integers(0, 256, (40, 40), dtype=np.uint8))
    cfg = build_config(None, source=str(tmp_path / "own"), group_from_filename=True, size=32)
    other = prepare_other_source(cfg, tmp_path / "other", ["normal", "pneumonia"])
    assert len(other.indices("test", labelled_only=False)) == 6 and other.classes == ["normal", "pneumonia"]
