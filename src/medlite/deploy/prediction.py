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
from medlite.data.input_checks import check_image, read_for_checks, tiny_below
from medlite.data.preprocess import PreprocessConfig, preprocess_image
from medlite.deploy.cam import cam_unavailable, class_activation_maps, unique_stems, write_cam
from medlite.deploy.classifiers import Classifier, load_classifier
from medlite.deploy.contract import CAM_FEATURES_NAME, OUTPUT_NAME, POOLED_NAME
from medlite.deploy.trust import check_policy
from medlite.errors import DataError, MedliteError, require_positive
from medlite.utils import atomic

_OUTPUT_SUFFIXES = (".csv", ".json")


# ------------------------------------------------------------------------------------------------ inputs
def collect_inputs(inputs: Sequence[str | Path], recursive: bool = True) -> list[Path]:
    """The image files of ``inputs`` (files and folders), as every reader finds them:
    :func:`medlite.data.files.image_files`."""
    return image_files(list(inputs), recursive)


def _load(path: Path, cfg: PreprocessConfig, keep: bool = False) -> tuple[np.ndarray, np.ndarray | None] | str:
    """The preprocessed uint8 (S, S) image of ``path`` (and, with ``keep``, the float image as read), or why it
    cannot be used: ``"error: <reason>"`` (unreadable) or ``"rejected: <reason>"`` (an input check failed)."""
    try:
        checked = read_for_checks(path, dicom_window=cfg.dicom_window)  # one read and decode for both
        reason = check_image(checked, min_side=tiny_below(cfg.size))
        if reason is not None:
            return f"rejected: {reason}"
        return preprocess_image(checked.gray, cfg), checked.gray if keep else None
    except DataError as err:
        return f"error: {str(err).removeprefix(f'{path}: ')}"


# ------------------------------------------------------------------------------------------------ scoring
def operating_threshold(contract: dict[str, Any], model: str | Path | None = None) -> float | None:
    """The binary model's decision threshold on the positive-class probability (``None`` for >2 classes);
    0.5, with a warning, when the export stores no validation-tuned one."""
    if len(contract["classes"]) != 2:
        return None
    threshold = contract.get("threshold")
    if threshold is None:
        warnings.warn(f"{model or contract['model']}: no validation-tuned threshold stored; deciding at 0.5",
                      UserWarning, stacklevel=3)
        return 0.5
    return float(threshold)


def _row(probs: np.ndarray | None, classes: list[str], threshold: float | None, status: str,
         score: float | None = None, policy: str = "warn") -> dict[str, Any]:
    row: dict[str, Any] = {"predicted": None}
    for i, name in enumerate(classes):
        row[f"prob_{name}"] = None if probs is None else round(float(probs[i]), 6)
    if len(classes) == 2:
        row["threshold"] = threshold
    if probs is not None and not (policy == "abstain" and status.startswith("flagged")):
        # A binary model decides at its operating threshold on the positive class, not at 0.5.
        row["predicted"] = (classes[1] if probs[1] >= threshold else classes[0]) if len(classes) == 2 \
            else classes[int(np.argmax(probs))]
    row["ood_score"] = None if score is None else round(float(score), 4)
    row["status"] = status
    return row


def predict_arrays(classifier: Classifier, images: np.ndarray, threshold: float | None = None, *,
                   cam: bool = False, cam_class: int | None = None, ood_policy: str = "warn") -> list[dict[str, Any]]:
    """Score preprocessed images held in memory (what ``predict`` and the point-of-care server share).

    Args:
        classifier: an :class:`~medlite.deploy.classifiers.OnnxClassifier` or ``TorchClassifier``.
        images: uint8 (B, S, S) images made by ``preprocess_image`` under the classifier's contract.
        threshold: the binary operating point (:func:`operating_threshold`); ignored for more classes.
        cam: add ``"cam"``: the float32 (S, S) class activation map in [0, 1] of the predicted class
            (:mod:`medlite.deploy.cam`), or ``None`` when the model has none (``cam_unavailable`` says why);
            needs an exported ONNX model.
        cam_class: explain this class index for every image instead of the predicted class (the point-of-care
            page shows a binary model's positive class: where the evidence for the finding is, either way).
        ood_policy: ``"warn"`` (a flagged image keeps its class) or ``"abstain"`` (its ``predicted`` is None).

    Returns:
        One dict per image: ``predicted``, ``prob_<class>`` (calibrated, 6 decimals), ``threshold`` (binary),
        ``ood_score`` (None without a gate) and ``status`` (``"ok"`` or ``"flagged: ..."``,
        :mod:`medlite.deploy.trust`), plus ``cam`` when asked for.
    """
    contract = classifier.contract
    classes = list(contract["classes"])
    if cam and not hasattr(classifier, "outputs"):
        raise MedliteError("class activation maps need an exported .onnx model (a run directory: medlite explain)")
    check_policy(ood_policy)
    outputs = classifier.outputs(images) if cam else None
    logits, pooled = (outputs[OUTPUT_NAME], outputs.get(POOLED_NAME)) if outputs is not None \
        else classifier.logits_and_pooled(images)
    trust = classifier.trust
    probs = trust.probabilities(logits)
    scores = trust.scores(logits, pooled)
    rows = [_row(p, classes, threshold, trust.status(None if scores is None else scores[i]),
                 None if scores is None else scores[i], ood_policy) for i, p in enumerate(probs)]
    if outputs is not None:
        maps: list[np.ndarray | None] = [None] * len(rows)
        if cam_unavailable(contract) is None and CAM_FEATURES_NAME in outputs:
            targets = [classes.index(r["predicted"]) if cam_class is None else cam_class for r in rows]
            maps = list(class_activation_maps(outputs[CAM_FEATURES_NAME], contract, targets))
        for row, cam_map in zip(rows, maps, strict=True):
            row["cam"] = cam_map
    return rows


# ------------------------------------------------------------------------------------------------ output
def write_predictions(rows: list[dict[str, Any]], out: str | Path, contract: dict[str, Any],
                      model: str | Path) -> Path:
    """Write ``rows`` atomically as CSV (a row per file) or JSON (model, classes, threshold, predictions)."""
    out = Path(out)
    if out.suffix.lower() == ".json":
        payload = {"model": str(model), "architecture": contract["model"], "classes": contract["classes"],
                   "threshold": contract.get("threshold"), "positive_class": contract.get("positive_class"),
                   "calibration": contract.get("calibration"), "ood_gate": contract.get("ood_gate"),
                   "n_files": len(rows), "n_errors": sum(r["status"].startswith("error") for r in rows),
                   "n_rejected": sum(r["status"].startswith("rejected") for r in rows),
                   "n_flagged": sum(r["status"].startswith("flagged") for r in rows),
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
    cam: str | Path | None = None,
    ood_policy: str = "warn",
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
        cam: a folder for class activation maps of the predicted class (exported ``.onnx`` models with a
            global-average-pool + linear head; torch-free, :mod:`medlite.deploy.cam`): ``CAM/<image stem>/
            <model stem>_cam.png`` (overlay) and ``.npy`` (map at the original geometry), and ``CAM/cams.json``.
        ood_policy: what a flagged image gets: ``"warn"`` (its class, with the flag) or ``"abstain"`` (no class).

    Returns:
        One dict per file, in input order: ``file``, ``predicted`` (class name), ``prob_<class>`` per class
        (calibrated, rounded to 6 decimals), ``threshold`` (binary models only: the operating point on
        ``prob_<classes[1]>``; ``predicted`` uses it), ``ood_score`` and ``status``: ``"ok"``, ``"flagged:
        unlike the training data (...)"``, ``"rejected: <reason>"`` (an input check failed: no probabilities)
        or ``"error: <reason>"`` (unreadable: no probabilities); see :mod:`medlite.deploy.trust`.

    Raises:
        DataError: an input does not exist or no image file was found.
        ModelError: ``model`` is not a run directory or a medlite ``.onnx`` file.
        MedliteError: bad ``out`` suffix, ``batch_size`` or ``threads`` (below 1).
    """
    require_positive("--batch-size", batch_size)
    check_policy(ood_policy)
    require_positive("--threads", threads)  # before loading: torch.set_num_threads(0) raises a RuntimeError
    if out is not None and Path(out).suffix.lower() not in _OUTPUT_SUFFIXES:
        raise MedliteError(f"--out {out}: must end in .csv or .json")
    files = collect_inputs([inputs] if isinstance(inputs, (str, Path)) else list(inputs), recursive)
    classifier = load_classifier(model, threads)
    contract = classifier.contract
    if cam is not None:
        if not hasattr(classifier, "outputs"):
            raise MedliteError(f"--cam with {model}: ONNX class activation maps need an exported .onnx "
                               "(for a run directory, medlite.api.predict draws Grad-CAM)")
        reason = cam_unavailable(contract)
        if reason is not None:
            raise MedliteError(f"--cam: {reason}; `medlite explain` on the run directory draws Grad-CAM or "
                               "Score-CAM instead")
    cfg = PreprocessConfig.from_stored(contract["preprocess"])  # an older export lacks the newer settings
    classes = list(contract["classes"])
    threshold = operating_threshold(contract, model)
    rows: list[dict[str, Any]] = []
    cams: list[dict[str, Any]] = []
    folders = unique_stems([f.stem for f in files]) if cam is not None else []
    with _reader_pool(threads) as pool:
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            loaded = list(pool.map(lambda f: _load(f, cfg, keep=cam is not None), chunk))
            good = [item for item in loaded if not isinstance(item, str)]
            scored = iter(predict_arrays(classifier, np.stack([u8 for u8, _ in good]), threshold,
                                         cam=cam is not None, ood_policy=ood_policy) if good else [])
            for i, (file, item) in enumerate(zip(chunk, loaded, strict=True), start=start):
                if isinstance(item, str):  # "error: ..." or "rejected: ..."
                    rows.append({"file": str(file), **_row(None, classes, threshold, item)})
                    continue
                row = next(scored)
                cam_map = row.pop("cam", None)
                rows.append({"file": str(file), **row})
                if cam_map is not None:
                    label = f"{Path(model).stem}_cam"
                    png, npy = write_cam(Path(cam) / folders[i], label, item[1], cam_map, cfg.resize)
                    cams.append({"image": str(file), "model": contract["model"], "method": "cam",
                                 "layer": contract["cam"]["layer"], "target_name": row["predicted"],
                                 "target": classes.index(row["predicted"]),
                                 "probability": row[f"prob_{row['predicted']}"], "overlay": str(png),
                                 "map": str(npy)})
    for kind, what in (("error", "could not be read"), ("rejected", "failed an input check"),
                       ("flagged", "are unlike the training data")):
        hit = [r for r in rows if r["status"].startswith(kind)]
        if hit:
            warnings.warn(f"{len(hit)} of {len(rows)} files {what} (first: {hit[0]['file']}: "
                          f"{hit[0]['status'].removeprefix(kind + ': ')})", UserWarning, stacklevel=2)
    if classifier.trust.note:
        warnings.warn(f"{model}: {classifier.trust.note}", UserWarning, stacklevel=2)
    if out is not None:
        write_predictions(rows, out, contract, model)
    if cam is not None:
        atomic.write_json(Path(cam) / "cams.json", cams)
    return rows
