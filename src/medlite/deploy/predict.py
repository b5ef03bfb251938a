"""Predict image files with a trained model: a run directory (eager PyTorch) or an exported ``.onnx``.

The preprocessing is never re-specified by the user: it is the model's *contract*, read from ``run.json`` of a
run directory or from the ``medlite`` entry of an ONNX model's ``metadata_props`` (written by
:func:`medlite.deploy.onnx_export.export_run`). Every file goes through the same steps as the training data::

    read_image(file)            float32 (H, W) in [0, 1]   (PNG 8/16-bit, JPEG, BMP, TIFF, DICOM)
    preprocess_image(., cfg)    uint8 (S, S)                (resize mode, CLAHE/denoise from the contract)
    normalise(batch, contract)  float32 (B, in_chans, S, S) = (x / 255 - mean) / std

The ONNX path imports ``onnxruntime``, OpenCV and pydicom only, never torch, so a deployment needs no PyTorch
install and starts in a fraction of a second. Files that cannot be read are listed with
``status = "error: <reason>"`` and skipped; DICOM files are decoded by :mod:`medlite.data.dicom`, which never
parses patient attributes, so no identifier can reach the output.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medlite.errors import DataError, MedliteError, ModelError
from medlite.utils import rundir

METADATA_KEY = "medlite"
"""Key of the JSON contract in an exported ONNX model's ``metadata_props``."""

CONTRACT_VERSION = 1
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
_RUN_INFO = "run.json"
_OUTPUT_SUFFIXES = (".csv", ".json")


# ------------------------------------------------------------------------------------------- the contract
def run_contract(run_dir: str | Path) -> dict[str, Any]:
    """The preprocessing and output contract of a finished run, as stored in an exported model.

    Args:
        run_dir: a run directory holding ``config.yaml`` and ``run.json``.

    Returns:
        A JSON-serialisable dict: ``model``, ``classes``, ``num_classes``, ``in_chans``, ``input_size``
        (pixels), ``mean`` / ``std`` (on the [0, 1] intensity scale), ``preprocess`` (the
        :class:`~medlite.data.preprocess.PreprocessConfig` fields), ``intensity`` (the convention in words),
        ``output`` (``"logits"``) and, for two classes, ``threshold`` (operating point on the probability of
        ``positive_class`` tuned on the validation split, or ``None`` when ``metrics.json`` has none).
    """
    run_dir = rundir.require_run_dir(run_dir)
    info = rundir.read_json(run_dir / _RUN_INFO)
    classes = [str(c) for c in info["classes"]]
    contract: dict[str, Any] = {
        "format": "medlite", "version": CONTRACT_VERSION, "model": info["model"], "classes": classes,
        "num_classes": len(classes), "in_chans": int(info["in_chans"]), "input_size": int(info["input_size"]),
        "mean": info["mean"], "std": info["std"], "preprocess": dict(info["preprocess"]),
        "intensity": "input = (u8 / 255 - mean) / std, float32 (B, in_chans, S, S); u8 = "
                     "medlite preprocess_image(read_image(file)) with the 'preprocess' settings",
        "input_name": INPUT_NAME, "output": OUTPUT_NAME,
    }
    if len(classes) == 2:
        contract.update(positive_class=classes[1], threshold=None, threshold_rule=None)
        metrics_path = run_dir / rundir.METRICS
        youden = (rundir.read_json(metrics_path).get("thresholds") or {}).get("youden") \
            if metrics_path.is_file() else None
        if youden and youden.get("threshold") is not None:
            contract["threshold"] = float(youden["threshold"])
            contract["threshold_rule"] = f"youden (chosen on {youden.get('chosen_on', 'val')})"
    return contract


def normalise(images: np.ndarray, contract: dict[str, Any]) -> np.ndarray:
    """uint8 (B, S, S) preprocessed images -> float32 (B, in_chans, S, S) input ``(x/255 - mean) / std``."""
    images = np.asarray(images)
    size = contract["input_size"]
    if images.ndim != 3 or images.shape[1:] != (size, size):
        raise DataError(f"batch has shape {images.shape}; expected (B, {size}, {size}) uint8")
    chans = int(contract["in_chans"])
    x = np.repeat(images[:, None].astype(np.float32) / np.float32(255.0), chans, axis=1)
    mean = np.asarray(contract["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(contract["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def probabilities(logits: np.ndarray) -> np.ndarray:
    """float64 (N, C) class probabilities: softmax of (N, C >= 2) logits, ``[1 - p, p]`` for one logit.

    The numpy twin of :func:`medlite.evaluate.metrics.probs_from_logits` (which needs torch).
    """
    z = np.asarray(logits, dtype=np.float64)
    if not np.isfinite(z).all():
        raise ModelError("the model produced NaN or infinite logits")
    if z.ndim == 2 and z.shape[1] == 1:
        z = z[:, 0]
    if z.ndim == 1:  # sigmoid(+-z) through logaddexp stays exact for large |z|
        return np.stack([np.exp(-np.logaddexp(0.0, z)), np.exp(-np.logaddexp(0.0, -z))], axis=1)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------- classifiers
class Classifier(Protocol):
    """What :func:`predict` needs from a model: its contract and probabilities for uint8 (B, S, S) images."""

    contract: dict[str, Any]

    def predict_proba(self, images: np.ndarray) -> np.ndarray: ...


class OnnxClassifier:
    """An exported model in ONNX Runtime together with the contract stored in it (torch-free).

    Args:
        path: an ``.onnx`` file written by :func:`medlite.deploy.export_run`.
        threads: ONNX Runtime intra-op threads; ``None`` lets ONNX Runtime choose (all cores).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options,
                                                providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types for bad files
            raise ModelError(f"{self.path}: not a loadable ONNX model ({type(err).__name__})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ModelError(f"{self.path}: no medlite preprocessing metadata; export the run with "
                             "`medlite export`")
        self.contract: dict[str, Any] = json.loads(meta[METADATA_KEY])
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, images: np.ndarray) -> np.ndarray:
        """float32 (B, C) logits for uint8 (B, S, S) preprocessed images."""
        return self.session.run(None, {self.input_name: normalise(images, self.contract)})[0]

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """float64 (B, C) probabilities for uint8 (B, S, S) preprocessed images."""
        return probabilities(self.logits(images))


class TorchClassifier:
    """The best model of a run directory in eager PyTorch (fp32, CPU), with the run's contract."""

    def __init__(self, run_dir: str | Path, threads: int | None = None) -> None:
        from medlite.evaluate.run_eval import load_run_model

        self.model, _, _ = load_run_model(run_dir)
        self.contract = run_contract(run_dir)
        self.threads = threads

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """float64 (B, C) probabilities for uint8 (B, S, S) preprocessed images."""
        import torch

        # The same numpy normalisation as the ONNX path (and no Lightning import, unlike the training code).
        x = torch.from_numpy(normalise(images, self.contract))
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(int(self.threads))
        try:
            with torch.inference_mode():
                logits = self.model(x).float().numpy()
        finally:
            torch.set_num_threads(previous)
        return probabilities(logits)


def load_classifier(model: str | Path, threads: int | None = None) -> Classifier:
    """A run directory (eager PyTorch) or an exported ``.onnx`` file (ONNX Runtime, no torch import)."""
    path = Path(model)
    if path.is_dir():
        return TorchClassifier(path, threads)
    if path.is_file() and path.suffix.lower() == ".onnx":
        return OnnxClassifier(path, threads)
    if not path.exists():
        raise ModelError(f"{path}: model not found (expected a run directory or an exported .onnx file)")
    raise ModelError(f"{path}: MODEL must be a run directory or an exported .onnx file")


# ------------------------------------------------------------------------------------------------ inputs
def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def collect_inputs(inputs: Sequence[str | Path], recursive: bool = True) -> list[Path]:
    """Expand files and folders into the list of image files to predict, in a stable order.

    A file named explicitly is always kept (if it is not an image it is reported as an error row later). In a
    folder, files with an image suffix or the DICOM ``DICM`` magic are kept, hidden files and folders skipped;
    subfolders are searched when ``recursive``. Duplicates are dropped.

    Raises:
        DataError: an input does not exist, or nothing to predict was found.
    """
    from medlite.data.imageio import is_image_path

    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            candidates = path.rglob("*") if recursive else path.glob("*")
            files += sorted(p for p in candidates
                            if p.is_file() and not _hidden(p, path) and is_image_path(p))
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: input not found (expected an image file, a DICOM file or a folder)")
    unique = list(dict.fromkeys(files))
    if not unique:
        shown = ", ".join(str(i) for i in list(inputs)[:3])
        raise DataError(f"no image files found in {shown or 'the inputs'} (PNG, JPEG, BMP, TIFF or DICOM)")
    return unique


def _load(path: Path, cfg: Any) -> np.ndarray | str:
    """The preprocessed uint8 (S, S) image of ``path``, or the reason it cannot be used."""
    from medlite.data.imageio import read_image
    from medlite.data.preprocess import preprocess_image

    try:
        return preprocess_image(read_image(path), cfg)
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
        return rundir.write_json(out, payload)
    with rundir.atomic_write(out) as handle:
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
    from medlite.data.preprocess import PreprocessConfig

    contract = classifier.contract
    cfg = PreprocessConfig(**contract["preprocess"])
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
