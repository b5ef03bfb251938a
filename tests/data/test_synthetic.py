"""Tests for the procedural chest-radiograph phantoms (medlite.data.synthetic)."""

from __future__ import annotations

import csv
import pickle

import cv2
import numpy as np
import pytest

from medlite.data import synthetic
from medlite.data._phantom_render import render
from medlite.data.synthetic import (
    CLASS_SETS,
    PhantomSet,
    generate_phantom,
    generate_phantoms,
    phantom_source,
    write_phantom_dataset,
)
from medlite.errors import DataError

LESION_CLASSES = ["Covid-19", "Emphysema", "Pneumonia-Bacterial", "Pneumonia-Viral", "Tuberculosis"]


@pytest.fixture(scope="module")
def chestx6_128() -> PhantomSet:
    return generate_phantoms("chestx6", per_class=40, size=128, seed=0)


def test_class_sets() -> None:
    assert CLASS_SETS["chestx6"] == [
        "Covid-19",
        "Emphysema",
        "Normal",
        "Pneumonia-Bacterial",
        "Pneumonia-Viral",
        "Tuberculosis",
    ]
    assert CLASS_SETS["pediatric3"] == ["normal", "bacterial", "viral"]
    assert CLASS_SETS["binary"] == ["normal", "pneumonia"]


@pytest.mark.parametrize("name", CLASS_SETS["chestx6"] + ["normal", "bacterial", "viral", "pneumonia"])
def test_generate_phantom_shapes_dtypes_ranges(name: str) -> None:
    image, mask = generate_phantom(name, 48, np.random.default_rng(3))
    assert image.shape == (48, 48) and image.dtype == np.float32
    assert mask.shape == (48, 48) and mask.dtype == bool
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert image.std() > 0.1  # a real picture, not a flat field


def test_phantom_set_layout(chestx6_128: PhantomSet) -> None:
    ps = chestx6_128
    assert len(ps) == 240 and ps.classes == CLASS_SETS["chestx6"]
    assert ps.images.shape == (240, 128, 128) and ps.images.dtype == np.uint8
    assert ps.masks.shape == (240, 128, 128) and ps.masks.dtype == bool
    assert ps.labels.dtype == np.int64
    np.testing.assert_array_equal(ps.labels, np.repeat(np.arange(6), 40))  # class-major order
    assert ps.images.max() > 200 and ps.images.min() < 40  # bright bone/heart, dark air


def test_determinism_and_substreams() -> None:
    a = generate_phantoms("pediatric3", per_class=3, size=64, seed=5)
    b = generate_phantoms("pediatric3", per_class=3, size=64, seed=5)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    c = generate_phantoms("pediatric3", per_class=3, size=64, seed=6)
    assert not np.array_equal(a.images, c.images)
    # Image j of a class does not depend on how many images are generated.
    more = generate_phantoms("pediatric3", per_class=5, size=64, seed=5)
    for k in range(3):
        np.testing.assert_array_equal(more.images[k * 5 : k * 5 + 3], a.images[k * 3 : k * 3 + 3])
    # Images within a set differ from each other.
    assert len({im.tobytes() for im in a.images}) == len(a)


def test_masks_empty_for_normal_and_present_for_lesions(chestx6_128: PhantomSet) -> None:
    ps = chestx6_128
    area = ps.masks.reshape(len(ps), -1).mean(1)
    for c, name in enumerate(ps.classes):
        if name == "Normal":
            assert area[ps.labels == c].max() == 0.0
        else:
            assert area[ps.labels == c].min() > 0.001, name
    pneumonia = generate_phantoms("binary", per_class=10, size=64, seed=0)
    assert not pneumonia.masks[pneumonia.labels == 0].any()
    assert all(m.any() for m in pneumonia.masks[pneumonia.labels == 1])


@pytest.mark.parametrize("name", LESION_CLASSES)
def test_lesion_lies_inside_body_and_lungs(name: str) -> None:
    for k in range(5):
        out = render(synthetic._FINDINGS[name], 96, np.random.default_rng(k))
        assert out.lesion.any()
        assert not (out.lesion & ~out.body).any()
        assert not (out.lesion & ~out.lungs).any()
        assert out.lesion.sum() < 0.6 * out.body.sum()
        if name == "Emphysema":  # the mask is the hyperlucent lung area itself
            assert (out.lesion & out.lungs).sum() / (out.lesion | out.lungs).sum() > 0.9


@pytest.mark.parametrize("classes", sorted(CLASS_SETS))
def test_class_means_within_three_percent(classes: str, chestx6_128: PhantomSet) -> None:
    ps = chestx6_128 if classes == "chestx6" else generate_phantoms(classes, per_class=40, size=128, seed=0)
    pixels = ps.images.reshape(len(ps), -1).astype(np.float64) / 255.0
    means, stds = pixels.mean(1), pixels.std(1)
    class_means = np.array([means[ps.labels == c].mean() for c in range(len(ps.classes))])
    class_stds = np.array([stds[ps.labels == c].mean() for c in range(len(ps.classes))])
    assert np.abs(class_means - means.mean()).max() / means.mean() < 0.03
    # The contrast (std) is renormalised class-blind too, so it is no giveaway either.
    assert np.abs(class_stds - stds.mean()).max() / stds.mean() < 0.05


def test_learnable_from_pattern_not_from_global_statistics() -> None:
    """Global [mean, std] are near chance; 16x16 pixels already carry the findings.

    Measured (30 per class, 64 px, seeds 0-4, 5-fold CV): [mean, std] 0.13-0.18 (chance 0.167); 16x16 logistic
    regression 0.65-0.66. A small CNN at 64 px reaches ~0.95 after 12 CPU epochs on 150 per class.
    """
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ps = generate_phantoms("chestx6", per_class=30, size=64, seed=11)
    images = ps.images.astype(np.float32) / 255.0
    train, test = np.arange(len(ps)) % 3 != 0, np.arange(len(ps)) % 3 == 0  # class-balanced 2:1 split
    global_stats = np.stack([images.mean((1, 2)), images.std((1, 2))], 1)
    thumbs = np.stack([cv2.resize(im, (16, 16), interpolation=cv2.INTER_AREA) for im in images]).reshape(
        len(ps), -1
    )
    scores = {}
    for name, feats in (("global", global_stats), ("thumbs", thumbs)):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500))
        clf.fit(feats[train], ps.labels[train])
        scores[name] = clf.score(feats[test], ps.labels[test])
    assert scores["global"] < 0.35, scores
    assert scores["thumbs"] > 0.45, scores


def test_phantom_source_matches_arrays() -> None:
    src = phantom_source("binary", per_class=3, size=48, seed=2)
    ps = generate_phantoms("binary", per_class=3, size=48, seed=2)
    assert src.kind == "synthetic" and src.location == "synthetic" and src.classes == ["normal", "pneumonia"]
    assert len(src) == 6
    assert [r.item for r in src.records] == list(range(6))
    assert [r.group for r in src.records] == [f"phantom{i}" for i in range(6)]
    assert src.records[4].name == "pneumonia/pneumonia_0001"
    np.testing.assert_array_equal(src.labels, ps.labels)
    for i in (0, 4, 4, 1):  # repeated and out-of-order reads agree
        image = src.read(i)
        assert image.dtype == np.float32 and image.shape == (48, 48)
        np.testing.assert_array_equal(np.round(image * 255).astype(np.uint8), ps.images[i])
        np.testing.assert_array_equal(src.read_mask(i), ps.masks[i])
    assert pickle.loads(pickle.dumps(src.reader))(src.records[4]).shape == (48, 48)  # DataLoader workers
    fp = src.fingerprint()
    assert fp == phantom_source("binary", per_class=3, size=48, seed=2).fingerprint()
    assert fp != phantom_source("binary", per_class=3, size=48, seed=3).fingerprint()
    assert fp != phantom_source("binary", per_class=3, size=64, seed=2).fingerprint()


def test_write_phantom_dataset(tmp_path) -> None:
    out = write_phantom_dataset(tmp_path / "ds", classes="pediatric3", per_class=2, size=40, seed=4)
    ps = generate_phantoms("pediatric3", per_class=2, size=40, seed=4)
    assert out == tmp_path / "ds"
    assert sorted(p.name for p in out.iterdir()) == ["bacterial", "manifest.csv", "masks", "normal", "viral"]
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "label", "patient_id", "mask"]
    assert [r["path"] for r in rows[:2]] == ["normal/normal_0000.png", "normal/normal_0001.png"]
    assert [r["label"] for r in rows] == ["normal"] * 2 + ["bacterial"] * 2 + ["viral"] * 2
    assert len({r["patient_id"] for r in rows}) == 6
    for i, row in enumerate(rows):
        image = cv2.imread(str(out / row["path"]), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED)
        assert row["mask"] == "masks/" + row["path"]
        assert image.dtype == np.uint8 and image.shape == (40, 40)
        np.testing.assert_array_equal(image, ps.images[i])
        assert set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, ps.masks[i])
    assert not list(out.glob(".manifest-*"))  # the temporary manifest was renamed into place


def test_write_phantom_dataset_rewrite_warns_about_stale_files(tmp_path) -> None:
    write_phantom_dataset(tmp_path, classes="binary", per_class=2, size=32)
    with pytest.warns(UserWarning, match="2 class-folder PNGs"):
        write_phantom_dataset(tmp_path, classes="binary", per_class=1, size=32)
    with open(tmp_path / "manifest.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2  # the manifest describes only the new dataset


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"classes": "chestx7"}, "binary, chestx6, pediatric3"),
        ({"per_class": 0}, "per_class"),
        ({"size": 16}, "size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_raise_data_error(tmp_path, kwargs: dict, match: str) -> None:
    for fn in (generate_phantoms, phantom_source):
        with pytest.raises(DataError, match=match):
            fn(**kwargs)
    with pytest.raises(DataError, match=match):
        write_phantom_dataset(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x" / "manifest.csv").exists()


def test_bad_phantom_arguments(tmp_path) -> None:
    with pytest.raises(DataError, match="class_name"):
        generate_phantom("Asthma", 64, np.random.default_rng(0))
    with pytest.raises(DataError, match="size"):
        generate_phantom("Normal", 8, np.random.default_rng(0))
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        write_phantom_dataset(tmp_path / "file", per_class=1, size=32)
