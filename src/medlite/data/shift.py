"""Synthetic domain shift: the same kind of radiographs as another scanner or site would produce them.

A :class:`DomainShift` changes what differs between acquisition sites but not the anatomy or the finding:
the contrast curve (gamma and a compressed intensity window), detector noise, and resolution (downsampling
then upsampling, i.e. a coarser detector). :func:`shifted_source` applies it to every image of a
:class:`~medlite.data.records.Source`, deterministically per image, which gives a labelled target domain for
testing and benchmarking domain adaptation (``--paradigm dg``) without real multi-site data;
:func:`write_image_folder` writes any source as a class-folder dataset that ``--target``/``--data`` accept.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from medlite.data.records import Record, Source
from medlite.errors import DataError


@dataclass(frozen=True)
class DomainShift:
    """Acquisition differences applied to images with intensities in [0, 1].

    Attributes:
        gamma: exponent of the new contrast curve ``x ** gamma`` (> 0; 1 = unchanged).
        window: ``(lo, hi)`` the [0, 1] range is compressed into (a flatter, greyer film), 0 <= lo < hi <= 1.
        noise_std: standard deviation of additive Gaussian detector noise on the [0, 1] scale (>= 0).
        downsample: resolution factor >= 1: images are shrunk by it (area averaging) and enlarged back.
    """

    gamma: float = 1.8
    window: tuple[float, float] = (0.2, 0.75)
    noise_std: float = 0.04
    downsample: float = 2.0

    def __post_init__(self) -> None:
        lo, hi = self.window
        if not self.gamma > 0:
            raise DataError(f"shift.gamma: must be > 0, got {self.gamma!r}")
        if not 0.0 <= lo < hi <= 1.0:
            raise DataError(f"shift.window: expected 0 <= lo < hi <= 1, got {self.window!r}")
        if not self.noise_std >= 0:
            raise DataError(f"shift.noise_std: must be >= 0, got {self.noise_std!r}")
        if not self.downsample >= 1:
            raise DataError(f"shift.downsample: must be >= 1, got {self.downsample!r}")

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Shift one image: float (H, W) in [0, 1] -> float32 (H, W) in [0, 1]; noise drawn from ``rng``."""
        h, w = image.shape
        x = np.clip(image.astype(np.float32), 0.0, 1.0)
        if self.downsample > 1:
            small = (max(1, round(w / self.downsample)), max(1, round(h / self.downsample)))
            x = cv2.resize(
                cv2.resize(x, small, interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_LINEAR
            )
        lo, hi = self.window
        x = lo + (hi - lo) * np.clip(x, 0.0, 1.0) ** self.gamma
        if self.noise_std > 0:
            x = x + rng.normal(0.0, self.noise_std, size=x.shape).astype(np.float32)
        return np.clip(x, 0.0, 1.0).astype(np.float32)


class _ShiftedReader:
    """Picklable reader: the base reader's image, shifted with a per-record random stream."""

    def __init__(self, source: Source, shift: DomainShift, seed: int) -> None:
        self.source, self.shift, self.seed = source, shift, seed

    def __call__(self, record: Record) -> np.ndarray:
        key = zlib.crc32(f"{record.item}|{record.name}".encode())
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(key,)))
        return self.shift.apply(self.source.reader(record), rng)


def shifted_source(source: Source, shift: DomainShift | None = None, seed: int = 1) -> Source:
    """``source`` as seen through another acquisition: same records and labels, shifted images.

    Args:
        source: any source (e.g. :func:`~medlite.data.synthetic.phantom_source` with another seed).
        shift: the acquisition differences; ``None`` is :class:`DomainShift`'s defaults.
        seed: seed of the per-image noise (image ``r`` always gets the same noise).

    Returns:
        A new :class:`Source` (kind and location suffixed with ``+shift``; masks passed through unchanged).
    """
    shift = shift or DomainShift()
    parts = (*source.fingerprint_parts, f"shift={shift!r}", f"shift_seed={seed}")
    return Source(
        kind=source.kind,
        location=f"{source.location}+shift",
        classes=list(source.classes),
        records=list(source.records),
        reader=_ShiftedReader(source, shift, seed),
        fingerprint_parts=parts,
        skipped=list(source.skipped),
        mask_reader=source.mask_reader,
    )


def write_image_folder(source: Source, out: str | Path) -> Path:
    """Write every image of ``source`` as an 8-bit PNG in ``OUT/<class>/<file>.png``; returns ``OUT``.

    File names come from ``Record.name`` (its last path component) or the record's position. The result opens
    with ``open_source(OUT)`` with the same class names (``medlite train --target OUT``,
    ``medlite evaluate --data OUT``).
    """
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise DataError(f"out: {root} exists and is not a directory")
    for i, record in enumerate(source.records):
        folder = root / source.classes[record.label]
        folder.mkdir(parents=True, exist_ok=True)
        stem = Path(record.name).name if record.name else f"{i:06d}"
        image = np.round(np.clip(source.reader(record), 0.0, 1.0) * 255.0).astype(np.uint8)
        if not cv2.imwrite(str(folder / f"{stem}.png"), image):
            raise DataError(f"out: could not write {folder / f'{stem}.png'}")
    return root
