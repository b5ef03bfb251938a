"""Open any supported dataset as a :class:`~medlite.data.records.Source`.

:func:`open_source` accepts:

* ``"synthetic"`` or ``"synthetic:<class set>"`` (``chestx6``, ``pediatric3``, ``binary``): the embedded
  procedural phantoms of :mod:`medlite.data.synthetic` (the word wins over a folder of that name; write
  ``./synthetic`` for the folder);
* a folder ``ROOT/<class>/...`` or ``ROOT/{train,val,test}/<class>/...`` (files found recursively inside each
  class folder). Hidden files, non-image files (README, CSV) and a top-level ``masks/`` folder are ignored;
  ``ROOT/masks/<same relative path>`` supplies lesion masks when present, as written by
  :func:`medlite.data.synthetic.write_phantom_dataset`;
* a CSV manifest with a header ``path,label[,patient_id][,split][,mask]`` (paths relative to the CSV's
  folder; extra columns ignored);
* a MedMNIST ``.npz`` (``{train,val,test}_images`` / ``{train,val,test}_labels``) with its official splits
  (:mod:`medlite.data.medmnist`).

Class indices follow the **sorted class names** (numerically when every label is an integer), so the same
dataset always maps to the same indices. Discovery checks files cheaply (size, magic bytes, end marker): bad
ones go to ``Source.skipped`` with a reason and one summary warning, or raise with ``strict=True``; files
that only fail at decode time raise :class:`~medlite.errors.DataError` from the reader and are the caller's
to handle.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlite.data.files import walk_images
from medlite.data.imageio import check_image_file, is_image_path, read_image
from medlite.data.medmnist import npz_source
from medlite.data.records import SPLIT_NAMES, Record, Source, need_two_classes
from medlite.data.synthetic import CLASS_SETS, phantom_source
from medlite.errors import DataError

MANIFEST_COLUMNS: tuple[str, ...] = ("path", "label", "patient_id", "split", "mask")

# Patient ids in the Kermany et al. pediatric chest X-ray file names:
# person123_bacteria_456.jpeg -> person123, IM-0115-0001.jpeg -> IM-0115,
# NORMAL2-IM-1427-0001.jpeg -> NORMAL2-IM-1427.
KERMANY_GROUP_PATTERNS: tuple[str, ...] = (r"^(person\d+)_", r"^((?:NORMAL\d*-)?IM-\d+)-")

GroupFn = Callable[[Path], str]
_EXPECTED = "a class folder, a .csv manifest, a MedMNIST .npz or 'synthetic'"


def is_synthetic(spec: object) -> bool:
    """Whether a source spec names the built-in phantoms (``synthetic`` or ``synthetic:<class set>``)."""
    return isinstance(spec, str) and (spec == "synthetic" or spec.startswith("synthetic:"))


def open_source(
    spec: str | Path,
    *,
    strict: bool = False,
    group_from_filename: bool | str | None = False,
    npz_size: int | None = None,
    synthetic_per_class: int = 50,
    synthetic_size: int = 128,
    seed: int = 0,
) -> Source:
    """Open a dataset given as a word, folder, CSV manifest or MedMNIST npz (see the module docstring).

    Args:
        spec: ``"synthetic[:classes]"`` or a path.
        strict: raise on the first unreadable or missing file instead of skipping it with a warning.
        group_from_filename: derive ``Record.group`` (patient id) from each file name: ``True`` uses
            :data:`KERMANY_GROUP_PATTERNS`; a string is a regular expression searched in the file name whose
            first group (or whole match) is the id. A file that does not match raises.
        npz_size: for a MedMNIST npz, the expected image side in pixels (28, 64, 128, 224); a file with
            another size raises, which catches pointing a config at the wrong MedMNIST+ file.
        synthetic_per_class: phantoms per class for ``synthetic``.
        synthetic_size: phantom side in pixels for ``synthetic``.
        seed: phantom seed for ``synthetic``.

    Raises:
        DataError: missing path, unknown file type, unusable layout or manifest, fewer than 2 classes.
    """
    if is_synthetic(spec):
        if group_from_filename:
            raise DataError("group_from_filename: synthetic phantoms have no file names")
        variant = spec.partition(":")[2] or "chestx6"
        if variant not in CLASS_SETS:
            raise DataError(f"{spec}: unknown class set {variant!r}; choose one of {', '.join(CLASS_SETS)}")
        return phantom_source(classes=variant, per_class=synthetic_per_class, size=synthetic_size, seed=seed)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (expected {_EXPECTED})")
    group_fn = _group_fn(group_from_filename)
    if path.is_dir():
        return _folder_source(path.resolve(), strict=strict, group_fn=group_fn)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_source(path.resolve(), strict=strict, group_fn=group_fn)
    if suffix == ".npz":
        if group_fn is not None:
            raise DataError(f"group_from_filename: {path} is an npz and has no file names")
        return npz_source(path.resolve(), npz_size=npz_size)
    raise DataError(f"{path}: unknown source type (expected {_EXPECTED})")


# ----------------------------------------------------------------------------------------------- helpers
def _group_fn(option: bool | str | None) -> GroupFn | None:
    """``option`` -> a function file path -> group id (raising on a non-matching name), or ``None``."""
    if option is False or option is None:
        return None
    try:
        patterns = [re.compile(p) for p in (KERMANY_GROUP_PATTERNS if option is True else (str(option),))]
    except re.error as err:
        raise DataError(f"group_from_filename: invalid regular expression {option!r} ({err})") from None
    shown = " or ".join(p.pattern for p in patterns)

    def group_of(path: Path) -> str:
        for pattern in patterns:
            match = pattern.search(path.name)
            if match:
                return match.group(1) if pattern.groups else match.group(0)
        raise DataError(f"{path}: file name does not match the group_from_filename pattern {shown}")

    return group_of


def _sorted_classes(labels: set[str]) -> list[str]:
    if all(re.fullmatch(r"-?\d+", lab) for lab in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def warn_skipped(skipped: list[tuple[str, str]], where: Path) -> None:
    if skipped:
        name, reason = skipped[0]
        warnings.warn(
            f"{where}: skipped {len(skipped)} unreadable or missing file(s), e.g. {name}: {reason} "
            "(`medlite data inspect` lists them all; --strict, or strict=True in Python, makes this an error)",
            UserWarning,
            stacklevel=4,
        )


def file_fingerprint(path: Path, root: Path) -> str:
    st = path.stat()
    return f"{Path(os.path.relpath(path, root)).as_posix()}|{st.st_size}|{st.st_mtime_ns}"


@dataclass(frozen=True)
class FileReader:
    """Reader of file-backed sources: ``record.item`` is an absolute path, DICOM windowed by ``dicom_window``.

    :func:`medlite.data.cache.build_cache` swaps in the window of its preprocessing settings
    (:func:`with_dicom_window`), so a source needs opening only once whatever the run's ``dicom_window``.
    """

    dicom_window: str = "header"

    def __call__(self, record: Record) -> np.ndarray:
        return read_image(str(record.item), dicom_window=self.dicom_window)


read_file_record = FileReader()


def with_dicom_window(source: Source, dicom_window: str) -> Source:
    """``source`` reading its DICOM files with ``dicom_window``: a copy when its reader is a :class:`FileReader`
    with another window, else ``source`` itself (array sources, wrapped readers)."""
    reader = source.reader
    if isinstance(reader, FileReader) and reader.dicom_window != dicom_window:
        return dataclasses.replace(source, reader=FileReader(dicom_window))
    return source


class _MaskFiles:
    """Mask reader: bool (H, W) from a mask image (any non-zero pixel is lesion), ``None`` without one."""

    def __init__(self, masks: dict[str, str] | None = None, folder: str | None = None) -> None:
        self.masks, self.folder = masks or {}, folder

    def __call__(self, record: Record) -> np.ndarray | None:
        path = self.masks.get(str(record.item))
        if path is None and self.folder is not None:
            exact = Path(self.folder) / record.name
            path = next((str(p) for p in (exact, exact.with_suffix(".png")) if p.is_file()), None)
        return None if path is None else read_image(path, dicom_window="none") > 0


# ------------------------------------------------------------------------------------------------ folder
def readable_files(
    paths: list[Path], root: Path, *, strict: bool
) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """Check each image file's header: ``(path, name relative to root)`` of the readable ones and ``(name, reason)``
    of the others; with ``strict`` the first unreadable file raises :class:`DataError`."""
    readable, skipped = [], []
    for path in paths:
        rel = Path(os.path.relpath(path, root)).as_posix()
        problem = check_image_file(path)
        if problem is not None:
            if strict:
                raise DataError(f"{path}: {problem}")
            skipped.append((rel, problem))
        else:
            readable.append((path, rel))
    return readable, skipped


def _folder_source(root: Path, *, strict: bool, group_fn: GroupFn | None) -> Source:
    entries = [p for p in sorted(root.iterdir()) if not p.name.startswith(".")]
    if not entries:
        raise DataError(f"{root}: folder is empty")
    dirs = [p for p in entries if p.is_dir() and p.name != "masks"]
    split_dirs = [p for p in dirs if p.name.lower() in SPLIT_NAMES]
    if split_dirs and len(split_dirs) != len(dirs):
        other = ", ".join(p.name for p in dirs if p not in split_dirs)
        raise DataError(f"{root}: mixes split folders (train/val/test) with other folders ({other})")
    layout = [(p.name.lower(), p) for p in split_dirs] or [(None, root)]
    candidates: list[tuple[Path, str, str | None]] = []
    empty: set[str] = set()
    n_class_dirs = loose = 0
    for split, base in layout:
        for sub in sorted(base.iterdir()):
            if sub.name.startswith(".") or (split is None and sub.name == "masks"):
                continue
            if not sub.is_dir():
                loose += is_image_path(sub)
                continue
            n_class_dirs += 1
            files = walk_images(sub)
            if not files:
                empty.add(sub.name)
            candidates += [(f, sub.name, split) for f in files]
    if not candidates:
        what = "no image files in the class folders of" if n_class_dirs else "no class subfolders in"
        hint = f"; to use {root / 'manifest.csv'} pass that file" if (root / "manifest.csv").is_file() else ""
        raise DataError(
            f"{what} {root} (expected DIR/<class>/<images> or DIR/{{train,val,test}}/<class>/<images>){hint}"
        )
    classes = _sorted_classes({c for _, c, _ in candidates})
    need_two_classes(classes, root)
    if loose:
        warnings.warn(
            f"{root}: ignored {loose} image file(s) outside class folders", UserWarning, stacklevel=3
        )
    if empty - set(classes):
        warnings.warn(
            f"{root}: ignored empty class folder(s) {sorted(empty - set(classes))}", UserWarning, stacklevel=3
        )
    index = {c: i for i, c in enumerate(classes)}
    where = {path: (cls, split) for path, cls, split in candidates}
    readable, skipped = readable_files(list(where), root, strict=strict)
    records, parts = [], []
    for path, rel in readable:
        cls, split = where[path]
        group = group_fn(path) if group_fn is not None else None
        records.append(Record(item=str(path), label=index[cls], group=group, split=split, name=rel))
        parts.append(file_fingerprint(path, root))
    warn_skipped(skipped, root)
    masks = _MaskFiles(folder=str(root / "masks")) if (root / "masks").is_dir() else None
    return Source("folder", str(root), classes, records, read_file_record, parts, skipped, masks)


# --------------------------------------------------------------------------------------------------- CSV
def _csv_source(path: Path, *, strict: bool, group_fn: GroupFn | None) -> Source:
    base = path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: tolerate Excel's byte-order mark
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read manifest ({err})") from None
    if "path" not in header or "label" not in header:
        raise DataError(
            f"{path}: manifest needs a header row with columns path,label[,patient_id][,split][,mask]; "
            f"found {','.join(header) or 'nothing'}"
        )
    if group_fn is not None and "patient_id" in header:
        raise DataError(f"group_from_filename: {path} already has a patient_id column; use one or the other")
    col = {name: header.index(name) for name in MANIFEST_COLUMNS if name in header}
    entries = []
    for line, row in rows:
        cell = {k: (row[i].strip() if i < len(row) else "") for k, i in col.items()}
        if not any(v.strip() for v in row):
            continue  # blank line
        for k in ("path", "label"):
            if not cell[k]:
                raise DataError(f"{path}: row {line}: empty {k}")
        if "split" in cell and cell["split"].lower() not in SPLIT_NAMES:
            raise DataError(
                f"{path}: row {line}: unknown split {cell['split']!r} (expected train, val or test)"
            )
        entries.append((line, cell))
    if not entries:
        raise DataError(f"{path}: manifest has no rows")
    classes = _sorted_classes({cell["label"] for _, cell in entries})
    need_two_classes(classes, path)
    index = {c: i for i, c in enumerate(classes)}
    records, skipped, masks, missing_masks = [], [], {}, 0
    parts = [f"manifest|{path.stat().st_size}|{path.stat().st_mtime_ns}"]
    for line, cell in entries:
        file = Path(cell["path"])
        file = file if file.is_absolute() else base / file
        problem = "file not found" if not file.is_file() else check_image_file(file)
        if problem is not None:
            if strict:
                raise DataError(f"{path}: row {line}: {problem}: {cell['path']}")
            skipped.append((cell["path"], f"{problem} (row {line})"))
            continue
        group = cell.get("patient_id") or (group_fn(file) if group_fn is not None else None)
        split = cell["split"].lower() if "split" in cell else None
        records.append(Record(str(file.resolve()), index[cell["label"]], group, split, cell["path"]))
        parts.append(file_fingerprint(file, base))
        if cell.get("mask"):
            mask = Path(cell["mask"]) if Path(cell["mask"]).is_absolute() else base / cell["mask"]
            if mask.is_file():
                masks[str(file.resolve())] = str(mask)
            else:
                missing_masks += 1
    if not records:
        name, reason = skipped[0]
        raise DataError(f"{path}: none of its {len(skipped)} listed image(s) can be read (e.g. {name}: {reason}); "
                        f"relative paths are taken from the CSV's folder {base}")
    warn_skipped(skipped, path)
    if missing_masks:
        warnings.warn(
            f"{path}: {missing_masks} mask file(s) not found; those images have no mask",
            UserWarning,
            stacklevel=3,
        )
    mask_reader = _MaskFiles(masks=masks) if "mask" in col else None
    return Source("csv", str(path), classes, records, read_file_record, parts, skipped, mask_reader)
