"""Summarise a :class:`~medlite.data.records.Source` before training on it (``medlite inspect``).

:func:`inspect_source` reads every file once: the bytes are hashed (MD5) to find exact duplicates, the header
gives size, bit depth and channels (PNG/JPEG headers are parsed, not decoded), and the file is decoded to
prove it is readable. JPEGs are decoded at 1/8 scale for that check (libjpeg's DCT scaling still walks the
whole entropy-coded stream, so corrupt data still fail, at a fraction of the cost). Array-backed sources (npz,
synthetic) are read through ``source.reader``; their duplicates are found from the array bytes and their
bit depth is inferred from the values (``"8"`` when every value is a multiple of 1/255). For DICOM files the
summary also says how ``--dicom-window`` would window them (VOI LUT, header window, auto or none).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from medlite.data.dicom_window import check_dicom_window, planned_window
from medlite.data.imageio import decode_image, image_info
from medlite.data.records import SPLIT_NAMES, Record, Source
from medlite.errors import DataError

MAX_DUPLICATE_GROUPS = 5  # duplicate groups listed in full; the count covers all of them
MAX_UNREADABLE_LISTED = 20


Facts = tuple[str, tuple[int, int], str, str, str, str | None]


def _file_facts(record: Record, decode: bool, dicom_window: str) -> Facts:
    """MD5, (H, W), bit depth, channels, format and (monochrome DICOM) the VOI header kind of a file record;
    raises DataError when unreadable."""
    path = Path(str(record.item))
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or type(err).__name__})") from None
    info = image_info(path, data=data)
    if decode:
        decode_image(data, path, reduced=True, dicom_window=dicom_window)
    digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
    return digest, (info.height, info.width), str(info.bit_depth), str(info.channels), info.format, info.window


def _array_facts(source: Source, record: Record) -> Facts:
    """The same facts for an array-backed record, from the decoded float32 (H, W) array."""
    arr = np.ascontiguousarray(source.reader(record), dtype=np.float32)
    scaled = arr * 255.0
    depth = "8" if np.abs(scaled - np.round(scaled)).max(initial=0.0) < 1e-3 else "float"
    channels = "1" if arr.ndim == 2 else str(arr.shape[-1])
    digest = hashlib.md5(arr.tobytes(), usedforsecurity=False).hexdigest()
    return digest, (int(arr.shape[0]), int(arr.shape[1])), depth, channels, source.kind, None


def _size_summary(sizes: Counter[tuple[int, int]]) -> dict[str, Any]:
    if not sizes:
        return {}
    common, n_common = sizes.most_common(1)[0]
    by_area = sorted(sizes, key=lambda hw: (hw[0] * hw[1], hw))
    return {
        "min": f"{by_area[0][0]}x{by_area[0][1]}",
        "max": f"{by_area[-1][0]}x{by_area[-1][1]}",
        "most_common": f"{common[0]}x{common[1]}",
        "most_common_count": n_common,
        "distinct": len(sizes),
    }


def inspect_source(source: Source, *, max_decode: int | None = None, dicom_window: str = "header") -> dict[str, Any]:
    """Counts, image properties, exact duplicates and unreadable files of a source.

    Args:
        source: any source from :func:`medlite.data.sources.open_source`.
        max_decode: decode at most this many files to check they are readable (headers and hashes are
            still read for every file); ``None`` decodes all. For array sources it caps the items read,
            and the size, depth and duplicate figures then cover only those (see ``"examined"``).
        dicom_window: the ``--dicom-window`` mode to report (and decode DICOM files with).

    Returns:
        A JSON-serialisable dict: ``kind``, ``location``, ``classes``, ``counts`` ({class: n}),
        ``split_counts`` ({split: {class: n}}, only when the source has splits), ``total``, ``examined``,
        ``decoded``, ``image_size`` (``min``/``max`` by pixel count and ``most_common`` as ``"HxW"``),
        ``bit_depth``, ``channels`` and ``formats`` (value -> count), ``duplicates`` (``count`` = images that
        repeat an earlier one byte for byte, ``groups`` = the first few groups of names,
        ``cross_split_groups`` = groups whose copies sit in different splits) and ``unreadable``
        (``count`` and ``files``: [{name, reason}], from ``source.skipped`` plus failed decodes); with
        monochrome DICOM files, ``dicom_window`` {``mode``, ``applied``: {"voi_lut" | "window" | "auto" |
        "none": number of files}}, what training with that mode does to them.
    """
    check_dicom_window(dicom_window)
    if max_decode is not None and max_decode < 0:
        raise DataError(f"max_decode: must be >= 0 or None, got {max_decode}")
    counts = Counter(source.classes[r.label] for r in source.records)
    summary: dict[str, Any] = {
        "kind": source.kind,
        "location": source.location,
        "classes": list(source.classes),
        "counts": {c: counts.get(c, 0) for c in source.classes},
        "total": len(source.records),
    }
    if source.has_splits:
        per_split: dict[str, Counter[str]] = defaultdict(Counter)
        for r in source.records:
            per_split[r.split or "none"][source.classes[r.label]] += 1
        order = [s for s in (*SPLIT_NAMES, "none") if s in per_split]
        summary["split_counts"] = {s: {c: per_split[s].get(c, 0) for c in source.classes} for s in order}

    sizes: Counter[tuple[int, int]] = Counter()
    depths: Counter[str] = Counter()
    channels: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    windows: Counter[str] = Counter()
    by_hash: dict[str, list[str]] = defaultdict(list)
    hash_splits: dict[str, set[str | None]] = defaultdict(set)
    unreadable = [{"name": name, "reason": reason} for name, reason in source.skipped]
    examined = decoded = 0
    for i, record in enumerate(source.records):
        decode = max_decode is None or i < max_decode
        name = record.name or str(record.item)
        try:
            if isinstance(record.item, str):
                facts = _file_facts(record, decode, dicom_window)
            elif decode:
                facts = _array_facts(source, record)
            else:
                continue
        except DataError as err:
            unreadable.append({"name": name, "reason": str(err)})
            continue
        examined += 1
        decoded += decode
        digest, hw, depth, chans, fmt, kind = facts
        if kind is not None:
            windows[planned_window(kind, dicom_window)] += 1
        sizes[hw] += 1
        depths[depth] += 1
        channels[chans] += 1
        formats[fmt] += 1
        by_hash[digest].append(name)
        hash_splits[digest].add(record.split)

    groups = [names for names in by_hash.values() if len(names) > 1]
    summary.update(
        examined=examined,
        decoded=decoded,
        image_size=_size_summary(sizes),
        bit_depth=dict(sorted(depths.items())),
        channels=dict(sorted(channels.items())),
        formats=dict(sorted(formats.items())),
        duplicates={
            "count": sum(len(g) - 1 for g in groups),
            # a group spanning train/val/test leaks test images into training
            "cross_split_groups": sum(len(s) > 1 for s in hash_splits.values()),
            "groups": groups[:MAX_DUPLICATE_GROUPS],
        },
        unreadable={"count": len(unreadable), "files": unreadable},
    )
    if windows:
        summary["dicom_window"] = {"mode": dicom_window, "applied": dict(sorted(windows.items()))}
    return summary
