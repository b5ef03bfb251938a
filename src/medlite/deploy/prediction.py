"""Predict image files with a trained model: a run directory (eager PyTorch) or an exported ``.onnx``.

The preprocessing comes from the model's contract (:mod:`medlite.deploy.contract`). The ONNX path imports
``onnxruntime``, OpenCV and pydicom only, never torch, so a deployment needs no PyTorch install and starts in
a fraction of a second. Files that cannot be read are listed with ``status = "error: <reason>"`` and skipped;
DICOM files are decoded by :mod:`medlite.data.dicom`, which never parses patient attributes, so no identifier
can reach the output.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from medlite.data.files import image_files
from medlite.data.imageio import read_image
from medlite.data.preprocess import PreprocessConfig, preprocess_image
from medlite.deploy.classifiers import load_classifier
from medlite.errors import DataError, MedliteError
from medlite.utils import atomic

_OUTPUT_SUFFIXES = (".csv", ".json")


# ------------------------------------------------------------------------------------------------ inputs
def collect_inputs(inputs: Sequence[str | Path], recursive: bool = True) -> list[Path]:
    """The image files of ``inputs`` (files and folders), as every reader finds them:
    :func:`medlite.data.files.image_files`."""
    return image_files(list(inputs), recursive)


def _load(path: Path, cfg: PreprocessConfig) -> np.ndarray | str:
    """The preprocessed uint8 (S, S) image of ``path``, or the reason it cannot be used."""
    try:
        return preprocess_image(read_image(path, dicom_window=cfg.dicom_window), cfg)
    except DataError as err:
        return str(err).removeprefix(f"{path}: ")


# ------------------------------------------------------------------------------------------------ output
def _row(file: Path, probs: np.ndarray | None, classes: list[str], threshold: float | None,
         status: str) -> dict[str, Any]:
    row: dict[str, Any] = {"file": str(file), "predicted": None}
    for i, name in enumerate(classes):
        row[f"prob_{name}"] = None if probs is None else round(float(probs[i]), 6)
    if len(classes) == 2:
        row["threshold"] = threshold
    if probs is not None and len(classes) == 2:
        # A binary model decides at its operating threshold on the positive class, not at 0.5.
        row["predicted"] = classes[1] if probs[1] >= threshold else classes[0]
    elif probs is not None:
        row["predicted"] = classes[int(np.argmax(probs))]
    row["status"] = status
    return row


def write_predictions(rows: list[dict[str, Any]], out: str | Path, contract: dict[str, Any],
                      model: str | Path) -> Path:
    """Write ``rows`` atomically as CSV (a row per file) or JSON (model, classes, threshold, predictions)."""
    out = Path(out)
    if out.suffix.lower() == ".json":
        payload = {"model": str(model), "architecture": contract["model"], "classes": contract["classes"],
                   "threshold": contract.get("threshold"), "positive_class": contract.get("positive_class"),
                   "n_files": len(rows), "n_errors": sum(r["status"] != "ok" for r in rows),
                   "predictions": rows}
        return atomic.write_json(out, payload)
    with atomic.atomic_write(out) as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return out


@contextmanager
def _reader_pool(threads: int | None) -> Iterator[ThreadPoolExecutor]:
    # Decoding and resizing are OpenCV calls that release the GIL, so threads overlap file reading.
    workers = max(1, min(8, threads or os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medlite-predict") as pool:
        yield pool


def predict(
    model: str | Path,
    inputs: str | Path | Sequence[str | Path],
    out: str | Path | None = None,
    batch_size: int = 16,
    threads: int | None = None,
    recursive: bool = True,
) -> list[dict[str, Any]]:
    """Predict every image file in ``inputs`` with a run directory or an exported ``.onnx`` model.

    Args:
        model: a run directory (eager PyTorch) or an ``.onnx`` file from ``medlite export`` (ONNX Runtime
            only; torch is not imported).
        inputs: image files, DICOM files and folders (searched recursively unless ``recursive=False``).
        out: optional ``.csv`` or ``.json`` file, written atomically.
        batch_size: images per forward pass.
        threads: inference threads (and file-reading threads); ``None`` uses all cores.
        recursive: search subfolders of folder inputs.

    Returns:
        One dict per file, in input order: ``file``, ``predicted`` (class name), ``prob_<class>`` per class
        (rounded to 6 decimals), ``threshold`` (binary models only: the operating point on
        ``prob_<classes[1]>``; ``predicted`` uses it) and ``status`` (``"ok"`` or ``"error: <reason>"``; such
        files have no probabilities).

    Raises:
        DataError: an input does not exist or no image file was found.
        ModelError: ``model`` is not a run directory or a medlite ``.onnx`` file.
        MedliteError: bad ``out`` suffix or ``batch_size``.
    """
    if batch_size < 1:
        raise MedliteError(f"--batch-size must be >= 1, got {batch_size}")
    if out is not None and Path(out).suffix.lower() not in _OUTPUT_SUFFIXES:
        raise MedliteError(f"--out {out}: must end in .csv or .json")
    files = collect_inputs([inputs] if isinstance(inputs, (str, Path)) else list(inputs), recursive)
    classifier = load_classifier(model, threads)
    contract = classifier.contract
    cfg = PreprocessConfig.from_stored(contract["preprocess"])  # an older export lacks the newer settings
    classes = list(contract["classes"])
    threshold = contract.get("threshold")
    if len(classes) == 2 and threshold is None:
        warnings.warn(f"{model}: no validation-tuned threshold stored; deciding at 0.5", UserWarning,
                      stacklevel=2)
        threshold = 0.5
    rows: list[dict[str, Any]] = []
    with _reader_pool(threads) as pool:
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            loaded = list(pool.map(lambda f: _load(f, cfg), chunk))
            good = [img for img in loaded if isinstance(img, np.ndarray)]
            probs = iter(classifier.predict_proba(np.stack(good)) if good else [])
            for file, item in zip(chunk, loaded, strict=True):
                if isinstance(item, str):
                    rows.append(_row(file, None, classes, threshold, f"error: {item}"))
                else:
                    rows.append(_row(file, next(probs), classes, threshold, "ok"))
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        warnings.warn(f"skipped {len(failed)} of {len(rows)} files that could not be read (first: "
                      f"{failed[0]['file']}: {failed[0]['status'].removeprefix('error: ')})", UserWarning,
                      stacklevel=2)
    if out is not None:
        write_predictions(rows, out, contract, model)
    return rows
