"""The chest X-ray preprocessing pipeline and its on-disk uint8 memmap cache.

Each image goes through :func:`preprocess_image` once and is stored as a row of a uint8 ``(N, S, S)`` memmap,
so epochs only read bytes (DESIGN.md: "preprocess once into a uint8 memmap cache"). The cache key covers the
source fingerprint (file list, sizes, mtimes) and the settings: any change makes a new cache, the same data
and settings reopen the old one in milliseconds.

Pipeline order:

1. grayscale float (H, W) in [0, 1] ((H, W, 3/4) arrays are treated as RGB(A) and converted);
2. geometry (``resize``): ``stretch`` ignores the aspect ratio, ``crop`` resizes the central square, ``pad``
   scales the longest side to S (letterboxed in step 6); ``INTER_AREA`` when shrinking, else
   ``INTER_LINEAR``;
3. uint8 quantisation, round(x * 255);
4. denoising: median filter, then Gaussian blur (sizes in *output* pixels);
5. equalisation (global histogram or CLAHE), after denoising because it stretches contrast and would amplify
   the noise, and outlier pixels would skew its histogram;
6. ``pad`` only: letterbox to S x S with the median of the content's border pixels (the X-ray's own
   background, not a black or white frame). Last, so neither filters nor histograms see the artificial border.

Channels are not stored (the cache is single-channel); :func:`to_tensor` repeats the channel for 3-channel
models.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress

from medlite.data.records import Source
from medlite.errors import DataError, MedliteError
from medlite.utils.rundir import write_json

if TYPE_CHECKING:  # torch is imported lazily: predicting with an ONNX model must not need it
    import torch

# Bump whenever the pipeline or the file layout changes, so old caches are never reused.
CACHE_FORMAT_VERSION = 1
_PROGRESS_MIN_IMAGES = 200


class PreprocessConfig(BaseModel):
    """Settings of the preprocessing pipeline (see the module docstring for the order of the steps).

    Attributes:
        size: output side ``S`` in pixels.
        resize: ``"pad"`` (keep aspect, letterbox), ``"crop"`` (central square) or ``"stretch"``.
        equalize: ``"none"``, ``"hist"`` (global histogram equalisation) or ``"clahe"``.
        clahe_clip: CLAHE contrast limit (OpenCV ``clipLimit``).
        clahe_grid: CLAHE tiles per side.
        gaussian_sigma: Gaussian blur sigma in output pixels; 0 disables it.
        median_ksize: median filter aperture in output pixels, odd >= 3; 0 disables it.
        channels: channels the model receives; applied by :func:`to_tensor`, not stored in the cache.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(224, ge=8, le=4096)
    resize: Literal["pad", "crop", "stretch"] = "pad"
    equalize: Literal["none", "hist", "clahe"] = "none"
    clahe_clip: float = Field(2.0, gt=0)
    clahe_grid: int = Field(8, ge=1, le=64)
    gaussian_sigma: float = Field(0.0, ge=0)
    median_ksize: int = Field(0, ge=0)
    channels: Literal[1, 3] = 1

    def __init__(self, **data: Any) -> None:
        # pydantic's ValidationError spans several lines; users get one line naming the field instead.
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise MedliteError(_one_line(err)) from None

    @field_validator("median_ksize")
    @classmethod
    def _odd_aperture(cls, value: int) -> int:
        if value != 0 and (value < 3 or value % 2 == 0):
            raise ValueError("must be odd and >= 3 (or 0 to switch the median filter off)")
        return value


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "config"
    more = f" (and {err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(PreprocessConfig.model_fields)
        return f"preprocess: unknown setting {field!r} (allowed: {allowed}){more}"
    msg = first["msg"].removeprefix("Value error, ")
    return f"preprocess: {field}={first.get('input')!r} is invalid: {msg}{more}"


# --------------------------------------------------------------------------------------------- pipeline
def _as_gray(img: np.ndarray) -> np.ndarray:
    """float32 (H, W) in [0, 1] from float [0, 1] or uint8 input, (H, W, 1/3/4) included."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    elif not np.issubdtype(img.dtype, np.floating):
        raise DataError(f"image has dtype {img.dtype}; expected float in [0, 1] or uint8")
    img = np.ascontiguousarray(img, dtype=np.float32)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] in (3, 4):
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY if img.shape[2] == 3 else cv2.COLOR_RGBA2GRAY)
    if img.ndim != 2 or min(img.shape) < 1:
        raise DataError(f"image has shape {img.shape}; expected a grayscale (H, W) array")
    if not np.isfinite(img).all():
        raise DataError("image contains NaN or infinite values")
    return np.clip(img, 0.0, 1.0)


def _fit(img: np.ndarray, size: int, mode: str, *, nearest: bool = False) -> np.ndarray:
    """Crop/resize ``img`` for ``mode``: (S, S) for crop/stretch, longest side S for pad."""
    h, w = img.shape
    if mode == "crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        img = img[top:top + side, left:left + side]
        h = w = side
    if mode == "pad":
        scale = size / max(h, w)
        th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    else:
        th = tw = size
    if (th, tw) == (h, w):
        return np.ascontiguousarray(img)
    shrink = th <= h and tw <= w
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(img), (tw, th), interpolation=interp)


def _letterbox(img: np.ndarray, size: int, value: int | None = None) -> np.ndarray:
    """Centre ``img`` on an S x S canvas filled with ``value`` (default: median of img's border pixels)."""
    h, w = img.shape
    if value is None:
        value = int(np.median(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])))
    top, left = (size - h) // 2, (size - w) // 2
    return cv2.copyMakeBorder(img, top, size - h - top, left, size - w - left, cv2.BORDER_CONSTANT,
                              value=value)


def preprocess_image(img: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Run the preprocessing pipeline on one image.

    Args:
        img: float (H, W) with values in [0, 1] (uint8 and (H, W, 1/3/4) arrays are accepted too).
        cfg: pipeline settings.

    Returns:
        uint8 (S, S) with S = ``cfg.size``.

    Raises:
        DataError: the array is not a 2-D grayscale image or holds NaN/inf.
    """
    content = _fit(_as_gray(img), cfg.size, cfg.resize)
    out = np.rint(content * 255.0).astype(np.uint8)
    if cfg.median_ksize:
        out = cv2.medianBlur(out, cfg.median_ksize)
    if cfg.gaussian_sigma > 0:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=cfg.gaussian_sigma)
    if cfg.equalize == "hist":
        out = cv2.equalizeHist(out)
    elif cfg.equalize == "clahe":
        clahe = cv2.createCLAHE(clipLimit=cfg.clahe_clip, tileGridSize=(cfg.clahe_grid, cfg.clahe_grid))
        out = clahe.apply(out)
    if cfg.resize == "pad":
        out = _letterbox(out, cfg.size)
    return out


def preprocess_mask(mask: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Apply the pipeline's geometry (not its intensity steps) to a lesion mask.

    Args:
        mask: bool or 0/1 (H, W), same shape as the image it belongs to.
        cfg: pipeline settings.

    Returns:
        uint8 (S, S) with values 0/1, nearest-neighbour resized and zero-padded exactly like the image.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DataError(f"mask has shape {mask.shape}; expected (H, W)")
    fitted = _fit((mask > 0).astype(np.uint8), cfg.size, cfg.resize, nearest=True)
    return _letterbox(fitted, cfg.size, 0) if cfg.resize == "pad" else fitted


def to_tensor(batch: np.ndarray | torch.Tensor, cfg: PreprocessConfig, mean: float | tuple[float, ...],
              std: float | tuple[float, ...]) -> torch.Tensor:
    """Turn cached uint8 images into the normalised float batch a model expects.

    Args:
        batch: uint8 (B, S, S) or (B, 1, S, S), e.g. a slice of :attr:`CachedDataset.images`.
        cfg: supplies ``size`` (checked) and ``channels`` (1, or 3 by repeating the gray channel).
        mean: mean on the [0, 1] scale, one value or one per channel.
        std: standard deviation on the [0, 1] scale, one value or one per channel.

    Returns:
        float32 (B, C, S, S) holding ``(x / 255 - mean) / std``.
    """
    import torch

    x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.array(batch, dtype=np.uint8))
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or tuple(x.shape[1:]) != (cfg.size, cfg.size):
        raise DataError(f"batch has shape {tuple(x.shape)}; expected (B, {cfg.size}, {cfg.size}) uint8 "
                        f"for preprocess size {cfg.size}")
    x = x.to(torch.float32).div_(255.0).unsqueeze(1)
    x = x.repeat(1, cfg.channels, 1, 1) if cfg.channels > 1 else x
    m, sd = (torch.as_tensor(v, dtype=torch.float32).reshape(1, -1, 1, 1) for v in (mean, std))
    if m.numel() not in (1, cfg.channels) or sd.numel() not in (1, cfg.channels) or (sd <= 0).any():
        raise DataError(f"mean={mean}, std={std}: need 1 or {cfg.channels} value(s) each, std > 0")
    return x.sub_(m).div_(sd)


# ------------------------------------------------------------------------------------------------ cache
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
    root = files["images"].parent
    tmp: dict[str, Path] = {}
    try:
        for name in ["images", "masks"] if has_masks else ["images"]:
            fd, path = tempfile.mkstemp(prefix=f".{files[name].name}.", suffix=".tmp", dir=root)
            os.close(fd)
            tmp[name] = Path(path)
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
