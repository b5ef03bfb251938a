"""Images whose labels are never read: extra SimCLR pre-training data and the domain-gap target.

An unlabelled source is any labelled source (its labels ignored) or a plain folder of images in any layout,
class folders or not. Sources that define splits contribute their ``train`` split only, so their ``val`` and
``test`` images stay unseen; everything else contributes all its images. The images are preprocessed exactly
like the run's own data (same cache, same settings), so every array has the run's (S, S) shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medlite.data.cache import build_cache
from medlite.data.files import walk_images
from medlite.data.prepared import DataSettings
from medlite.data.records import SPLIT_NAMES, Record, Source
from medlite.data.sources import file_fingerprint, open_source, read_file_record, readable_files, warn_skipped
from medlite.errors import DataError

#: The one class name of a plain image folder opened as an unlabelled source.
UNLABELLED = "unlabelled"
#: Folders of lesion masks beside the images (``DIR/masks/<class>/...``), never read as images.
MASKS_DIR = "masks"


def open_unlabelled(spec: str | Path, *, strict: bool = False, seed: int = 0, synthetic_per_class: int = 50,
                    synthetic_size: int = 128) -> Source:
    """Open ``spec`` for its images only.

    A folder without a ``train`` sub-folder is read recursively as one class (:data:`UNLABELLED`), whatever its
    layout, except files under a ``masks`` folder (lesion masks); a folder with ``train/`` and every other kind
    of source go through :func:`open_source`. Unreadable files are skipped with a warning (``strict`` makes them fatal).

    Raises:
        DataError: missing path, no readable image, or an error of :func:`open_source`.
    """
    path = Path(spec).expanduser()
    if path.is_dir() and not any((path / s).is_dir() for s in SPLIT_NAMES):
        return _image_folder(path.resolve(), strict=strict)
    return open_source(spec, strict=strict, seed=seed, synthetic_per_class=synthetic_per_class,
                       synthetic_size=synthetic_size)


def _image_folder(root: Path, *, strict: bool) -> Source:
    # Lesion masks are not images of the set (the class-folder reader skips masks/ the same way).
    files = [p for p in walk_images(root) if MASKS_DIR not in p.relative_to(root).parts[:-1]]
    readable, skipped = readable_files(files, root, strict=strict)
    records = [Record(item=str(path), label=0, name=rel) for path, rel in readable]
    parts = [file_fingerprint(path, root) for path, _ in readable]
    if not records:
        raise DataError(f"{root}: no readable image files in it (an unlabelled source needs images)")
    warn_skipped(skipped, root)
    return Source("folder", str(root), [UNLABELLED], records, read_file_record, parts, skipped)


def load_unlabelled(spec: str | Path, cfg: DataSettings, *, option: str = "--unlabelled",
                    every_split: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Preprocess ``spec`` like the run ``cfg``'s own data.

    Args:
        spec: an unlabelled source (see :func:`open_unlabelled`).
        cfg: the run's :class:`~medlite.config.RunConfig` (preprocessing, strictness, phantom settings, seed).
        option: the option that named ``spec``, for error messages.
        every_split: use all of a split source's images, not its ``train`` split only (images scored, never
            trained on).

    Returns:
        ``(images, indices)``: the uint8 (N, S, S) cache array and the int64 indices of the images to use
        (its ``train`` split when the source defines splits and not ``every_split``, else all); at least 2.

    Raises:
        DataError: the source cannot be read or holds fewer than 2 usable images.
    """
    try:
        source = open_unlabelled(spec, strict=cfg.data.strict, seed=cfg.train.seed,
                                 synthetic_per_class=cfg.data.synthetic_per_class,
                                 synthetic_size=cfg.data.synthetic_size)
        cached = build_cache(source, cfg.preprocess, strict=cfg.data.strict, progress=False)
    except DataError as err:
        raise DataError(f"{option} {spec}: {err}") from None
    splits = np.asarray([source.records[i].split for i in cached.record_indices], dtype=object)
    every = np.arange(len(cached.record_indices))
    use = np.flatnonzero(splits == "train") if source.has_splits and not every_split else every
    if len(use) < 2:
        raise DataError(f"{option} {spec}: needs at least 2 readable images, found {len(use)}")
    return cached.images, use.astype(np.int64)


class StackedImages:
    """Several uint8 (N_i, S, S) arrays read as one (sum N_i, S, S) array, without copying them.

    Only what :class:`~medlite.data.module.CachedImages` needs: ``len`` and integer indexing (a memmap stays a
    memmap, so pre-training on a large extra source does not load it into memory).
    """

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"StackedImages: arrays of different image shapes {sorted(shapes)}")
        self.arrays = list(arrays)
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.offsets[-1]), *self.arrays[0].shape[1:])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> np.ndarray:
        j = int(index)
        if not 0 <= j < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        k = int(np.searchsorted(self.offsets, j, side="right")) - 1
        return self.arrays[k][j - self.offsets[k]]
