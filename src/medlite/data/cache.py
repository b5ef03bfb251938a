"""The on-disk uint8 memmap cache of preprocessed images.

Each image goes through :func:`~medlite.data.preprocess.preprocess_image` once and is stored as a row of a
uint8 ``(N, S, S)`` memmap. The cache key covers the source fingerprint (file list, sizes, mtimes) and the
settings: any change makes a new cache, the same data and settings reopen the old one in milliseconds. Files
are written to temporary names and renamed, the JSON metadata last, so an interrupted build is never reused.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress

from medlite.data.preprocess import PreprocessConfig, preprocess_image, preprocess_mask
from medlite.data.records import Source
from medlite.data.sources import with_dicom_window
from medlite.errors import DataError
from medlite.utils.atomic import temp_beside, write_json

# Bump whenever the pipeline or the file layout changes, so old caches are never reused.
CACHE_FORMAT_VERSION = 1
_PROGRESS_MIN_IMAGES = 200


@dataclass(frozen=True, eq=False)
class CachedDataset:
    """Preprocessed images of a source, backed by a read-only memmap.

    Attributes:
        images: uint8 (N, S, S) read-only memmap, one row per kept record.
        masks: uint8 (N, S, S) 0/1 lesion masks (sources with a ``mask_reader``), else ``None``.
        labels: int64 (N,) class indices.
        record_indices: int64 (N,) positions in ``source.records`` of the kept images.
        classes: class names.
        cfg: the preprocessing settings used.
        skipped: ``(name, reason)`` of every image left out (unreadable at discovery or at decode).
        key: full sha256 cache key.
        from_cache: whether an existing cache was reopened rather than built.
        path: the ``.u8`` file behind ``images``.
    """

    images: np.memmap
    masks: np.memmap | None
    labels: np.ndarray
    record_indices: np.ndarray
    classes: list[str]
    cfg: PreprocessConfig
    skipped: list[tuple[str, str]]
    key: str
    from_cache: bool
    path: Path

    def __len__(self) -> int:
        return len(self.labels)


def default_cache_dir() -> Path:
    """``$MEDLITE_CACHE`` if set, else ``~/.cache/medlite``."""
    env = os.environ.get("MEDLITE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medlite"


def cache_key(source: Source, cfg: PreprocessConfig) -> str:
    """sha256 hex of the source fingerprint, the settings that shape the cached bytes and the format.

    ``channels`` is left out on purpose: it is applied at tensor time, so 1- and 3-channel runs share a cache.
    """
    h = hashlib.sha256(source.fingerprint().encode())
    h.update(cfg.model_dump_json(exclude={"channels"}).encode())
    h.update(f"|format={CACHE_FORMAT_VERSION}|masks={source.mask_reader is not None}".encode())
    return h.hexdigest()


def build_cache(source: Source, cfg: PreprocessConfig, cache_dir: str | Path | None = None, *,
                strict: bool = False, progress: bool = True) -> CachedDataset:
    """Preprocess every record of ``source`` into a memmap cache, or reopen the cache built before.

    Files are ``<cache_dir>/<key[:16]>.u8`` (images), ``.mask.u8`` (masks) and ``.json`` (metadata). Arrays
    are written to temporary files and renamed; the JSON is renamed into place last, so a cache without its
    JSON (an interrupted build) is never used and is rebuilt. Decoding runs in a thread pool.

    Args:
        source: the images to preprocess.
        cfg: pipeline settings.
        cache_dir: where cache files live; default :func:`default_cache_dir`.
        strict: raise on the first image that cannot be decoded instead of skipping it.
        progress: show a progress bar (only for more than 200 images).

    Raises:
        DataError: no image could be read, (``strict``) one could not, or the cache folder is unusable.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{root}: cannot create the cache folder ({err.strerror}); set MEDLITE_CACHE"
                        ) from None
    source = with_dicom_window(source, cfg.dicom_window)  # the images are read the way cfg (and the key) say
    key = cache_key(source, cfg)
    stem = root / key[:16]
    files = {"images": stem.with_suffix(".u8"), "masks": stem.with_suffix(".mask.u8"),
             "meta": stem.with_suffix(".json")}
    has_masks = source.mask_reader is not None
    meta = _load_meta(files, key, has_masks, source)
    from_cache = meta is not None
    if meta is None:
        meta = _build(source, cfg, key, files, strict=strict, progress=progress)
    shape = tuple(meta["shape"])
    decode_skipped = [(str(name), str(reason)) for name, reason in meta["skipped"]]
    if decode_skipped and not from_cache:
        warnings.warn(f"{source.location}: skipped {len(decode_skipped)} unreadable image(s), first "
                      f"{decode_skipped[0][0]}: {decode_skipped[0][1]}", UserWarning, stacklevel=2)
    return CachedDataset(
        images=np.memmap(files["images"], dtype=np.uint8, mode="r", shape=shape),
        masks=np.memmap(files["masks"], dtype=np.uint8, mode="r", shape=shape) if has_masks else None,
        labels=np.asarray(meta["labels"], dtype=np.int64),
        record_indices=np.asarray(meta["record_indices"], dtype=np.int64),
        classes=list(source.classes), cfg=cfg, skipped=list(source.skipped) + decode_skipped,
        key=key, from_cache=from_cache, path=files["images"],
    )


def _load_meta(files: dict[str, Path], key: str, has_masks: bool, source: Source) -> dict[str, Any] | None:
    """The metadata of a finished, intact cache for ``key``, or ``None`` when it must be (re)built."""
    try:
        meta = json.loads(files["meta"].read_text())
        n, s1, s2 = (int(v) for v in meta["shape"])
        arrays = [files["images"]] + ([files["masks"]] if has_masks else [])
        indices = np.asarray(meta["record_indices"], dtype=np.int64)
        intact = (meta["format"] == CACHE_FORMAT_VERSION and meta["key"] == key
                  and all(p.is_file() and p.stat().st_size == n * s1 * s2 for p in arrays)
                  and len(indices) == n and 0 < n and indices.max() < len(source)
                  and np.array_equal(source.labels[indices], np.asarray(meta["labels"], dtype=np.int64)))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if intact else None


def _decode_one(source: Source, cfg: PreprocessConfig, index: int) -> tuple[np.ndarray, Any] | str:
    """Preprocessed (image, mask) of record ``index``, or the reason it cannot be read."""
    record = source.records[index]
    try:
        raw = source.reader(record)
        image, mask = preprocess_image(raw, cfg), None
        if source.mask_reader is not None:
            raw_mask = source.mask_reader(record)
            # A record without a mask (e.g. a normal phantom) gets an empty one.
            raw_mask = np.zeros(np.shape(raw)[:2], bool) if raw_mask is None else raw_mask
            if np.shape(raw_mask) != np.shape(raw)[:2]:
                raise DataError(f"mask shape {np.shape(raw_mask)} differs from image shape {np.shape(raw)}")
            mask = preprocess_mask(raw_mask, cfg)
    except DataError as err:
        return str(err)
    return image, mask


def _decode_all(source: Source, cfg: PreprocessConfig) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, _decode_one result)`` in record order, decoding in a thread pool."""
    # Threads suffice (cv2 decode/resize/filters release the GIL); count the CPUs this process may use.
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    decode = functools.partial(_decode_one, source, cfg)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medlite-cache") as pool:
        # Chunks bound the memory held by decoded images that wait for an earlier, slower one.
        for start in range(0, len(source), workers * 16):
            indices = range(start, min(start + workers * 16, len(source)))
            yield from zip(indices, pool.map(decode, indices), strict=True)


def _progress_bar(enabled: bool, total: int, description: str) -> Any:
    if not enabled or total <= _PROGRESS_MIN_IMAGES:
        return contextlib.nullcontext(None)
    bar = Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=Console(stderr=True))
    bar.add_task(description, total=total)
    return bar


def _build(source: Source, cfg: PreprocessConfig, key: str, files: dict[str, Path], *, strict: bool,
           progress: bool) -> dict[str, Any]:
    n, size = len(source), cfg.size
    if n == 0:
        raise DataError(f"{source.location}: no images to preprocess")
    has_masks = source.mask_reader is not None
    tmp: dict[str, Path] = {}
    try:
        for name in ["images", "masks"] if has_masks else ["images"]:
            fd, tmp[name] = temp_beside(files[name])
            os.close(fd)
        arrays = {name: np.memmap(path, dtype=np.uint8, mode="w+", shape=(n, size, size))
                  for name, path in tmp.items()}
        kept: list[int] = []
        skipped: list[tuple[str, str]] = []
        with _progress_bar(progress, n, f"preprocessing {size}px") as bar:
            for index, result in _decode_all(source, cfg):
                if isinstance(result, str):
                    name = source.records[index].name or str(source.records[index].item)
                    if strict:
                        raise DataError(f"{name}: {result}")
                    skipped.append((name, result))
                else:
                    # Kept images are packed in record order; the file is truncated to len(kept) rows below.
                    arrays["images"][len(kept)] = result[0]
                    if has_masks:
                        arrays["masks"][len(kept)] = result[1]
                    kept.append(index)
                if bar is not None:
                    bar.advance(bar.task_ids[0])
        for array in arrays.values():
            array.flush()
        del arrays  # closes the maps before truncating and renaming
        if not kept:
            raise DataError(f"{source.location}: none of the {n} images could be read "
                            f"(first: {skipped[0][0]}: {skipped[0][1]})")
        files["meta"].unlink(missing_ok=True)  # a stale JSON must never describe the new arrays
        for name, path in tmp.items():
            os.truncate(path, len(kept) * size * size)
            os.replace(path, files[name])
        labels = source.labels[kept]
        meta = {"format": CACHE_FORMAT_VERSION, "key": key, "shape": [len(kept), size, size],
                "labels": labels.tolist(), "record_indices": kept, "classes": list(source.classes),
                "skipped": skipped, "masks": has_masks, "cfg": cfg.model_dump(),
                "source": {"kind": source.kind, "location": source.location, "records": n},
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_json(files["meta"], meta)  # last: its presence marks the cache as complete
        return meta
    finally:
        for path in tmp.values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
