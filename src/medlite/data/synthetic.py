"""Procedural chest-radiograph phantoms with lesion masks: medlite's embedded, fully offline default dataset.

Each phantom is a posteroanterior (PA) chest film rendered from a few dozen random anatomical parameters:
body outline with neck and shoulders, two lung fields with rounded apices and diaphragm domes, heart and
aortic knob, spine, trachea, clavicles, posterior/anterior ribs and hilar vessel markings. A class-specific
finding is then added inside the lungs and its binary lesion mask is kept:

==========================  =====================================================================
``Normal`` / ``normal``     no lesion, empty mask
``Pneumonia-Bacterial``     lobar consolidation: a dense, fairly homogeneous patch filling part of one
                            lobe, cut flat by a fissure
``Pneumonia-Viral``         bilateral interstitial pattern: reticular / streaky perihilar opacities
``Covid-19``                peripheral lower-zone ground glass, usually bilateral, hazy and patchy
``Tuberculosis``            upper-zone nodules and ring-shaped cavities
``Emphysema``               hyperlucent, hyperinflated lungs, flat diaphragm, pruned vessels; the mask is
                            the hyperlucent lung area
``pneumonia`` (binary)      bacterial or viral findings, drawn at random per image
==========================  =====================================================================

Every image then gets a random pose (rotation, shift, scale), detector noise and a random contrast curve,
and finally its global mean and standard deviation are set to targets drawn from one class-independent
distribution. Class identity therefore lives in the *spatial pattern* only: no global intensity statistic
gives the label away (the mean of every class stays within 3 % of the overall mean).

Image ``j`` of class ``c`` is drawn from its own random substream, keyed by ``(seed, crc32(c), j)``, so it
is identical however many images are generated and whichever loader (array, :class:`Source`, PNG files)
produced it.
"""

from __future__ import annotations

import csv
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from medlite.data._phantom_render import render
from medlite.data.records import Record, Source
from medlite.errors import DataError
from medlite.utils.atomic import temp_beside

__all__ = [
    "CLASS_SETS",
    "PhantomSet",
    "generate_phantom",
    "generate_phantoms",
    "phantom_source",
    "write_phantom_dataset",
]

CLASS_SETS: dict[str, list[str]] = {
    "chestx6": ["Covid-19", "Emphysema", "Normal", "Pneumonia-Bacterial", "Pneumonia-Viral", "Tuberculosis"],
    "pediatric3": ["normal", "bacterial", "viral"],
    "binary": ["normal", "pneumonia"],
}

# Class name (any class set) -> the finding that is rendered.
_FINDINGS: dict[str, str] = {
    "Covid-19": "covid",
    "Emphysema": "emphysema",
    "Normal": "normal",
    "Pneumonia-Bacterial": "bacterial",
    "Pneumonia-Viral": "viral",
    "Tuberculosis": "tb",
    "normal": "normal",
    "bacterial": "bacterial",
    "viral": "viral",
    "pneumonia": "pneumonia",
}

# Bumped whenever rendering changes, so preprocessing caches keyed on the fingerprint are invalidated.
_RENDER_VERSION = "phantom-v1"
_MIN_SIZE = 32


@dataclass
class PhantomSet:
    """A generated phantom collection in class-major order (all of class 0, then all of class 1, ...).

    Attributes:
        images: uint8 (N, S, S) grayscale radiographs, 0 = black (air), 255 = white (bone).
        masks: bool (N, S, S) lesion masks; all False for ``Normal`` images.
        labels: int64 (N,) indices into ``classes``.
        classes: class names of the chosen class set.
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or size < _MIN_SIZE:
        raise DataError(f"size: must be an integer >= {_MIN_SIZE} pixels, got {size!r}")


def _class_names(classes: str) -> list[str]:
    if classes not in CLASS_SETS:
        raise DataError(
            f"classes: unknown class set {classes!r}; choose one of {', '.join(sorted(CLASS_SETS))}"
        )
    return list(CLASS_SETS[classes])


def _check_args(classes: str, per_class: int, size: int, seed: int) -> list[str]:
    names = _class_names(classes)
    if not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise DataError(f"per_class: must be an integer >= 1, got {per_class!r}")
    _check_size(size)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed: must be a non-negative integer, got {seed!r}")
    return names


def _item_rng(seed: int, class_name: str, index: int) -> np.random.Generator:
    """The private substream of image ``index`` of ``class_name``: independent of how many are generated."""
    return np.random.default_rng(
        np.random.SeedSequence(int(seed), spawn_key=(zlib.crc32(class_name.encode()), index))
    )


def _render_item(class_name: str, index: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of ``class_name`` as (uint8 (S, S), bool (S, S) lesion mask)."""
    image, mask = generate_phantom(class_name, size, _item_rng(seed, class_name, index))
    return np.round(image * 255.0).astype(np.uint8), mask


# --------------------------------------------------------------------------------------------- public API
def generate_phantom(class_name: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render one chest-radiograph phantom.

    Args:
        class_name: a class name from any of :data:`CLASS_SETS` (e.g. ``"Tuberculosis"``, ``"viral"``).
        size: output side length in pixels (>= 32).
        rng: the random generator that fully determines the image.

    Returns:
        ``(image, mask)``: image float32 (size, size) in [0, 1] (white = dense), and the lesion mask bool
        (size, size), all False for normal images.
    """
    if class_name not in _FINDINGS:
        raise DataError(
            f"class_name: unknown phantom class {class_name!r}; choose one of {', '.join(_FINDINGS)}"
        )
    _check_size(size)
    out = render(_FINDINGS[class_name], int(size), rng)
    return out.image, out.lesion


def generate_phantoms(
    classes: str = "chestx6", per_class: int = 50, size: int = 128, seed: int = 0
) -> PhantomSet:
    """Generate ``per_class`` phantoms of every class of a class set, in class-major order.

    Image ``i`` has class ``i // per_class`` and is image ``i % per_class`` of that class; it depends only
    on ``(seed, class name, i % per_class, size)``, so asking for more images leaves earlier ones unchanged.

    Args:
        classes: ``"chestx6"``, ``"pediatric3"`` or ``"binary"`` (see :data:`CLASS_SETS`).
        per_class: images per class (>= 1).
        size: side length in pixels (>= 32).
        seed: non-negative base seed.

    Returns:
        A :class:`PhantomSet`: uint8 images (N, size, size), bool masks, int64 labels; N = C x per_class.
    """
    names = _check_args(classes, per_class, size, seed)
    n = len(names) * per_class
    images = np.empty((n, size, size), np.uint8)
    masks = np.empty((n, size, size), bool)
    for i in range(n):
        images[i], masks[i] = _render_item(names[i // per_class], i % per_class, size, seed)
    labels = np.repeat(np.arange(len(names), dtype=np.int64), per_class)
    return PhantomSet(images=images, masks=masks, labels=labels, classes=names)


class _PhantomReader:
    """Picklable lazy renderer behind :func:`phantom_source`.

    It remembers the last item, so reading an image and then its mask renders it once.
    """

    def __init__(self, names: list[str], per_class: int, size: int, seed: int) -> None:
        self.names, self.per_class, self.size, self.seed = names, per_class, size, seed
        self._last: tuple[int, np.ndarray, np.ndarray] | None = None

    def _get(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        last = self._last  # one read, so a concurrent reader thread cannot hand back a mixed pair
        if last is None or last[0] != item:
            name = self.names[item // self.per_class]
            last = (item, *_render_item(name, item % self.per_class, self.size, self.seed))
            self._last = last
        return last[1], last[2]

    def image(self, record: Record) -> np.ndarray:
        """float32 (S, S) in [0, 1], the same 8-bit values that :func:`generate_phantoms` returns, / 255."""
        return self._get(int(record.item))[0].astype(np.float32) / 255.0

    def mask(self, record: Record) -> np.ndarray:
        """bool (S, S) lesion mask."""
        return self._get(int(record.item))[1].copy()


def phantom_source(classes: str = "chestx6", per_class: int = 50, size: int = 128, seed: int = 0) -> Source:
    """The phantoms of :func:`generate_phantoms` as a lazily rendered :class:`~medlite.data.records.Source`.

    Records are in class-major order with ``item`` = the integer index, ``group = f"phantom{i}"`` (every
    image is its own patient) and ``name = "<class>/<class>_<j:04d>"`` as in :func:`write_phantom_dataset`.
    """
    names = _check_args(classes, per_class, size, seed)
    records = [
        Record(
            item=i,
            label=i // per_class,
            group=f"phantom{i}",
            name=_file_stem(names[i // per_class], i % per_class),
        )
        for i in range(len(names) * per_class)
    ]
    reader = _PhantomReader(names, int(per_class), int(size), int(seed))
    parts = (_RENDER_VERSION, f"classes={classes}", f"per_class={per_class}", f"size={size}", f"seed={seed}")
    return Source(
        kind="synthetic",
        location="synthetic",
        classes=names,
        records=records,
        reader=reader.image,
        fingerprint_parts=parts,
        mask_reader=reader.mask,
    )


def _file_stem(class_name: str, index: int) -> str:
    return f"{class_name}/{class_name}_{index:04d}"


def write_phantom_dataset(
    out: str | Path, classes: str = "chestx6", per_class: int = 50, size: int = 128, seed: int = 0
) -> Path:
    """Write phantoms as an image folder with masks and a manifest.

    Layout: ``OUT/<class>/<class>_<j:04d>.png`` (8-bit grayscale), ``OUT/masks/<class>/<same name>.png``
    (0 / 255) and ``OUT/manifest.csv`` with columns ``path,label,patient_id,mask`` (POSIX paths relative to
    ``OUT``, ``label`` = class name, ``patient_id = f"phantom{i}"``). The manifest alone fully describes the
    dataset; it is written last, through a temporary file, so an interrupted run never leaves a partial one.

    Returns:
        ``Path(out)``.
    """
    names = _check_args(classes, per_class, size, seed)
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise DataError(f"out: {root} exists and is not a directory")
    rows = []
    for c, name in enumerate(names):
        for sub in (root / name, root / "masks" / name):
            sub.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            image, mask = _render_item(name, j, size, seed)
            rel = f"{_file_stem(name, j)}.png"
            for path, arr in ((root / rel, image), (root / "masks" / rel, mask.astype(np.uint8) * 255)):
                if not cv2.imwrite(str(path), arr):
                    raise DataError(f"out: could not write {path}")
            rows.append((rel, name, f"phantom{c * per_class + j}", f"masks/{rel}"))
    fd, tmp = temp_beside(root / "manifest.csv")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label", "patient_id", "mask"])
            writer.writerows(rows)
        os.replace(tmp, root / "manifest.csv")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    stale = sum(len(list((root / name).glob("*.png"))) for name in names) - len(rows)
    if stale > 0:
        warnings.warn(
            f"out: {root} holds {stale} class-folder PNGs from an earlier run; manifest.csv omits them",
            UserWarning,
            stacklevel=2,
        )
    return root
