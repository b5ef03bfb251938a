"""Tests of the preprocessing pipeline and the memmap cache (generated images only)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from medlite.data.cache import build_cache, cache_key, default_cache_dir
from medlite.data.preprocess import PreprocessConfig, preprocess_image, preprocess_mask
from medlite.data.records import Record, Source
from medlite.errors import DataError, MedliteError


# ------------------------------------------------------------------------------------------------ helpers
def _read_png(record: Record) -> np.ndarray:
    img = cv2.imread(str(record.item), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise DataError(f"{record.item}: cannot decode image")
    return img.astype(np.float32) / 255.0


def _folder_source(root: Path, reader=_read_png) -> Source:
    """A two-class folder source like open_source builds (fingerprint from path, size, mtime)."""
    paths = sorted(root.glob("*/*.png"))
    classes = sorted({p.parent.name for p in paths})
    records = [Record(str(p), classes.index(p.parent.name), name=f"{p.parent.name}/{p.name}") for p in paths]
    parts = [f"{p.name}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in paths]
    return Source("folder", str(root), classes, records, reader, fingerprint_parts=parts)


def _write_pngs(root: Path, n: int, size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"img{i:04d}.png"), rng.integers(0, 256, size, dtype=np.uint8))
    return root


@pytest.fixture()
def pngs(tmp_path: Path) -> Path:
    return _write_pngs(tmp_path / "data", 12)


def _local_contrast(img: np.ndarray) -> float:
    img = img.astype(np.float32)
    return float(np.abs(img - cv2.GaussianBlur(img, (0, 0), 3)).mean())


# ------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(("kwargs", "field"), [
    ({"median_ksize": 4}, "median_ksize"),
    ({"median_ksize": 1}, "median_ksize"),
    ({"size": 2}, "size"),
    ({"resize": "zoom"}, "resize"),
    ({"equalize": "adaptive"}, "equalize"),
    ({"gaussian_sigma": -1.0}, "gaussian_sigma"),
    ({"channels": 2}, "channels"),
    ({"clahe_clip": 0}, "clahe_clip"),
    ({"sizee": 64}, "sizee"),
])
def test_config_errors_are_one_line_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(MedliteError) as info:
        PreprocessConfig(**kwargs)
    message = str(info.value)
    assert field in message and "\n" not in message


def test_config_is_frozen_and_defaults() -> None:
    cfg = PreprocessConfig()
    assert (cfg.size, cfg.resize, cfg.equalize, cfg.median_ksize, cfg.channels) == (224, "pad", "none", 0, 1)
    with pytest.raises(ValueError):
        cfg.size = 64  # type: ignore[misc]
    assert PreprocessConfig(median_ksize=5).median_ksize == 5


# ----------------------------------------------------------------------------------------------- pipeline
def test_output_is_uint8_square_and_rejects_bad_arrays() -> None:
    img = np.random.default_rng(0).random((50, 70), dtype=np.float32)
    out = preprocess_image(img, PreprocessConfig(size=32))
    assert out.dtype == np.uint8 and out.shape == (32, 32)
    rgb = np.dstack([np.full((20, 20), 0.5, np.float32)] * 3)
    assert preprocess_image(rgb, PreprocessConfig(size=16)).shape == (16, 16)
    with pytest.raises(DataError, match="shape"):
        preprocess_image(np.zeros((4, 4, 2), np.float32), PreprocessConfig(size=16))
    with pytest.raises(DataError, match="NaN"):
        preprocess_image(np.full((8, 8), np.nan, np.float32), PreprocessConfig(size=16))


def test_pad_keeps_aspect_with_letterbox_rows_of_border_median() -> None:
    img = np.full((50, 200), 0.1, np.float32)
    img[5:45, 20:180] = 0.9
    out = preprocess_image(img, PreprocessConfig(size=64, resize="pad"))
    # Scale 64/200 -> content 16 x 64, centred: 24 letterbox rows above and below, filled with the background.
    background = round(0.1 * 255)
    assert (out[:24] == background).all() and (out[40:] == background).all()
    assert (out[24:40] > 200).any()
    bright_rows = np.flatnonzero((out > 128).any(axis=1))
    assert 10 <= len(bright_rows) <= 14  # 40/50 of a 16-row content band
    stretched = preprocess_image(img, PreprocessConfig(size=64, resize="stretch"))
    assert (stretched[10] > 200).any()


def test_crop_keeps_the_centre() -> None:
    img = np.concatenate([np.zeros((60, 60)), np.full((60, 60), 0.5), np.ones((60, 60))], axis=1)
    out = preprocess_image(img.astype(np.float32), PreprocessConfig(size=32, resize="crop"))
    assert np.all(np.abs(out.astype(int) - 128) <= 1)
    stretched = preprocess_image(img.astype(np.float32), PreprocessConfig(size=32, resize="stretch"))
    assert stretched.min() == 0 and stretched.max() == 255


def test_shrinking_is_antialiased() -> None:
    checker = (np.indices((128, 128)).sum(axis=0) % 2).astype(np.float32)
    out = preprocess_image(checker, PreprocessConfig(size=64, resize="stretch"))
    assert np.all(np.abs(out.astype(int) - 128) <= 1)  # INTER_AREA averages; nearest/linear would alias


def test_clahe_raises_local_contrast_and_hist_spreads_the_histogram() -> None:
    yy, xx = np.mgrid[0:128, 0:128]
    img = (0.45 + 0.03 * np.sin(xx / 2.0) * np.sin(yy / 3.0) + 0.002 * yy).astype(np.float32)
    plain = preprocess_image(img, PreprocessConfig(size=128, resize="stretch"))
    clahe_cfg = PreprocessConfig(size=128, resize="stretch", equalize="clahe", clahe_clip=4.0)
    clahe = preprocess_image(img, clahe_cfg)
    hist = preprocess_image(img, PreprocessConfig(size=128, resize="stretch", equalize="hist"))
    assert _local_contrast(clahe) > 2 * _local_contrast(plain)
    assert np.ptp(plain) < 80 and np.ptp(hist) > 240


def test_median_removes_salt_noise_and_gaussian_smooths() -> None:
    rng = np.random.default_rng(1)
    img = np.full((64, 64), 0.5, np.float32)
    img[rng.random((64, 64)) < 0.03] = 1.0
    noisy = preprocess_image(img, PreprocessConfig(size=64))
    cleaned = preprocess_image(img, PreprocessConfig(size=64, median_ksize=3))
    assert (noisy == 255).sum() > 50 and (cleaned == 255).sum() == 0
    texture = rng.random((64, 64), dtype=np.float32)
    assert preprocess_image(texture, PreprocessConfig(size=64, gaussian_sigma=1.5)).std() < \
        0.5 * preprocess_image(texture, PreprocessConfig(size=64)).std()


def test_mask_follows_the_image_geometry() -> None:
    img = np.full((50, 200), 0.1, np.float32)
    mask = np.zeros((50, 200), bool)
    img[10:40, 30:90] = 0.9
    mask[10:40, 30:90] = True
    for resize in ("pad", "crop", "stretch"):
        cfg = PreprocessConfig(size=64, resize=resize)
        out, m = preprocess_image(img, cfg), preprocess_mask(mask, cfg)
        assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
        bright = out > 128
        assert (bright & (m == 1)).sum() >= 0.8 * max(bright.sum(), 1)


def test_second_build_hits_the_cache_and_is_much_faster(tmp_path: Path) -> None:
    root = _write_pngs(tmp_path / "data", 240, size=(160, 128))
    calls = []

    def counting_reader(record: Record) -> np.ndarray:
        calls.append(record.item)
        return _read_png(record)

    source = _folder_source(root, counting_reader)
    cfg = PreprocessConfig(size=64, equalize="clahe", median_ksize=3)
    start = time.perf_counter()
    cold = build_cache(source, cfg, tmp_path / "cache", progress=True)
    cold_s = time.perf_counter() - start
    assert not cold.from_cache and len(calls) == 240
    warm_s = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        warm = build_cache(source, cfg, tmp_path / "cache")
        warm_s = min(warm_s, time.perf_counter() - start)
    assert warm.from_cache and len(calls) == 240  # the reader was never called again
    assert warm_s * 10 < cold_s, (cold_s, warm_s)
    assert warm.images.shape == (240, 64, 64) and warm.images.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(warm.images), np.asarray(cold.images))
    np.testing.assert_array_equal(warm.labels, source.labels)
    np.testing.assert_array_equal(warm.images[7], preprocess_image(_read_png(source.records[7]), cfg))
    with pytest.raises(ValueError):
        warm.images[0, 0, 0] = 1  # read-only memmap
    assert warm.key == cold.key and warm.classes == ["a", "b"] and warm.masks is None


def test_changes_to_files_or_config_make_a_new_cache(pngs: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cfg = PreprocessConfig(size=32)
    first = build_cache(_folder_source(pngs), cfg, cache, progress=False)
    assert build_cache(_folder_source(pngs), cfg.model_copy(update={"channels": 3}), cache).from_cache
    other_cfg = build_cache(_folder_source(pngs), PreprocessConfig(size=32, equalize="hist"), cache)
    assert not other_cfg.from_cache and other_cfg.key != first.key
    target = pngs / "a" / "img0001.png"
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: mtime only
    touched = build_cache(_folder_source(pngs), cfg, cache)
    assert not touched.from_cache and touched.key != first.key
    cv2.imwrite(str(target), np.zeros((48, 40), np.uint8))  # rewritten: new size and content
    rewritten = build_cache(_folder_source(pngs), cfg, cache)
    assert not rewritten.from_cache and rewritten.key not in (first.key, touched.key)
    row = int(np.flatnonzero(rewritten.record_indices == 0)[0])
    assert rewritten.images[row].max() == 0
    (pngs / "b" / "img0000.png").unlink()  # file list changed
    assert not build_cache(_folder_source(pngs), cfg, cache).from_cache


def test_cache_dir_defaults_to_env(monkeypatch: pytest.MonkeyPatch, pngs: Path, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDLITE_CACHE", str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    built = build_cache(_folder_source(pngs), PreprocessConfig(size=16), progress=False)
    assert built.path.parent == tmp_path / "envcache"
    assert (tmp_path / "envcache" / f"{built.key[:16]}.json").is_file()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(DataError, match="cannot create the cache folder"):
        build_cache(_folder_source(pngs), PreprocessConfig(size=16), tmp_path / "a_file" / "cache")


def test_incomplete_caches_are_never_used(pngs: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    source, cfg = _folder_source(pngs), PreprocessConfig(size=32)
    stem = cache_key(source, cfg)[:16]
    # Leftovers of a crashed build: a temp file and an array without its JSON.
    (cache / f".{stem}.u8.abc123.tmp").write_bytes(b"\xff" * 100)
    (cache / f"{stem}.u8").write_bytes(b"\xff" * (12 * 32 * 32))
    built = build_cache(source, cfg, cache, progress=False)
    assert not built.from_cache
    np.testing.assert_array_equal(built.images[3], preprocess_image(_read_png(source.records[3]), cfg))
    # A JSON whose array was truncated is not trusted either.
    with open(built.path, "r+b") as handle:
        handle.truncate(100)
    assert not build_cache(source, cfg, cache).from_cache


def test_interrupted_build_leaves_no_cache(pngs: Path, tmp_path: Path) -> None:
    def crashing_reader(record: Record) -> np.ndarray:
        if record.name.endswith("img0005.png"):
            raise RuntimeError("power cut")
        return _read_png(record)

    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="power cut"):
        build_cache(_folder_source(pngs, crashing_reader), PreprocessConfig(size=32), cache, progress=False)
    assert list(cache.iterdir()) == []  # no JSON, no array, no temp files
    assert not build_cache(_folder_source(pngs), PreprocessConfig(size=32), cache).from_cache


def test_corrupt_image_is_skipped_and_listed_or_strict_raises(pngs: Path, tmp_path: Path) -> None:
    (pngs / "a" / "img0003.png").write_bytes(b"not a png at all")
    source = _folder_source(pngs)
    with pytest.warns(UserWarning, match="skipped 1"):
        built = build_cache(source, PreprocessConfig(size=32), tmp_path / "cache", progress=False)
    assert len(built) == 11 and built.images.shape == (11, 32, 32)
    assert [name for name, _ in built.skipped] == ["a/img0003.png"]
    bad = next(i for i, r in enumerate(source.records) if r.name == "a/img0003.png")
    assert bad not in built.record_indices.tolist()
    np.testing.assert_array_equal(built.labels, source.labels[built.record_indices])
    meta = json.loads((tmp_path / "cache" / f"{built.key[:16]}.json").read_text())
    assert meta["skipped"][0][0] == "a/img0003.png" and meta["shape"] == [11, 32, 32]
    again = build_cache(source, PreprocessConfig(size=32), tmp_path / "cache")
    assert again.from_cache and again.skipped == built.skipped
    with pytest.raises(DataError, match="img0003.png"):
        build_cache(source, PreprocessConfig(size=24), tmp_path / "cache", strict=True)
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_masks_are_cached_with_the_image_geometry(tmp_path: Path) -> None:
    images = [np.full((40, 80), 0.1, np.float32) for _ in range(4)]
    masks: list[np.ndarray | None] = [np.zeros((40, 80), bool) for _ in range(3)] + [None]
    for img, mask in zip(images[:3], masks[:3], strict=True):
        img[10:30, 20:40] = 0.9
        mask[10:30, 20:40] = True
    records = [Record(i, i % 2, name=f"train/{i}") for i in range(4)]
    source = Source("synthetic", "synthetic", ["normal", "lesion"], records, lambda r: images[r.item],
                    fingerprint_parts=["phantoms-v1"], mask_reader=lambda r: masks[r.item])
    cfg = PreprocessConfig(size=32)
    built = build_cache(source, cfg, tmp_path / "cache", progress=False)
    assert built.masks is not None and built.masks.shape == (4, 32, 32)
    assert (tmp_path / "cache" / f"{built.key[:16]}.mask.u8").is_file()
    np.testing.assert_array_equal(built.masks[0], preprocess_mask(masks[0], cfg))
    assert built.masks[0].sum() > 0 and built.masks[3].sum() == 0
    assert ((built.images[0] > 128) == (built.masks[0] == 1)).mean() > 0.95
    again = build_cache(source, cfg, tmp_path / "cache")
    assert again.from_cache and np.array_equal(np.asarray(again.masks), np.asarray(built.masks))


def test_empty_or_unreadable_source_raises(tmp_path: Path) -> None:
    def broken(record: Record) -> np.ndarray:
        raise DataError(f"{record.name}: truncated")

    records = [Record(0, 0, name="x"), Record(1, 1, name="y")]
    source = Source("synthetic", "synthetic", ["a", "b"], records, broken)
    with pytest.raises(DataError, match="none of the 2 images"):
        build_cache(source, PreprocessConfig(size=16), tmp_path, progress=False)
    empty = Source("synthetic", "synthetic", ["a", "b"], [], broken)
    with pytest.raises(DataError, match="no images"):
        build_cache(empty, PreprocessConfig(size=16), tmp_path, progress=False)
