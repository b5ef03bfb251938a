"""The contract of a deployed model, torch-free: what an exported ``.onnx`` needs to be used correctly.

The preprocessing is never re-specified by the user: it is the model's *contract*, read from ``run.json`` of a
run directory or from the ``medlite`` entry of an ONNX model's ``metadata_props`` (written by
:func:`medlite.deploy.onnx_export.export_run`). Every file goes through the same steps as the training data::

    read_image(file, dicom_window)  float32 (H, W) in [0, 1]   (PNG 8/16-bit, JPEG, BMP, TIFF, DICOM windowed)
    preprocess_image(., cfg)    uint8 (S, S)                (resize mode, CLAHE/denoise from the contract)
    normalise(batch, contract)  float32 (B, in_chans, S, S) = (x / 255 - mean) / std

This module is the NumPy twin of :mod:`medlite.models.inputs` (normalisation, probabilities); it never
imports torch, so a deployment needs no PyTorch install.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medlite.errors import DataError, ModelError
from medlite.rundir import layout, store
from medlite.utils import atomic

METADATA_KEY = "medlite"
"""Key of the JSON contract in an exported ONNX model's ``metadata_props``."""

CONTRACT_VERSION = 1
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
POOLED_NAME = "pooled"
CAM_FEATURES_NAME = "cam_features"
OUTPUT_NAMES = (OUTPUT_NAME, POOLED_NAME, CAM_FEATURES_NAME)
"""Outputs of an exported graph: logits (B, K), pooled features (B, D), the CAM layer's map (B, C, h, w)."""
_OUTPUT_SUFFIXES = (".csv", ".json")


# ------------------------------------------------------------------------------------------- the contract
def run_contract(run_dir: str | Path) -> dict[str, Any]:
    """The preprocessing and output contract of a finished run, as stored in an exported model.

    Args:
        run_dir: a run directory holding ``config.yaml`` and ``run.json``.

    Returns:
        A JSON-serialisable dict: ``model``, ``classes``, ``num_classes``, ``in_chans``, ``input_size``
        (pixels), ``mean`` / ``std`` (on the [0, 1] intensity scale), ``preprocess`` (every
        :class:`~medlite.data.preprocess.PreprocessConfig` field, ``dicom_window`` included; settings an old
        ``run.json`` lacks are filled with what that run used), ``intensity`` (the convention in words),
        ``output`` (``"logits"``), ``calibration`` and ``ood_gate`` (:mod:`medlite.workflows.trust`; absent for
        older runs) and, for two classes, ``threshold`` (operating point on the calibrated probability of
        ``positive_class`` tuned on the validation split, or ``None`` when ``metrics.json`` has none).
    """
    from medlite.data.preprocess import PreprocessConfig

    run_dir = store.require_run_dir(run_dir)
    info = store.read_run_info(run_dir)
    classes = [str(c) for c in info["classes"]]
    preprocess = PreprocessConfig.from_stored(info["preprocess"]).model_dump(mode="json")
    contract: dict[str, Any] = {
        "format": "medlite", "version": CONTRACT_VERSION, "model": info["model"], "classes": classes,
        "num_classes": len(classes), "in_chans": int(info["in_chans"]), "input_size": int(info["input_size"]),
        "mean": info["mean"], "std": info["std"], "preprocess": preprocess,
        "intensity": "input = (u8 / 255 - mean) / std, float32 (B, in_chans, S, S); u8 = medlite "
                     "preprocess_image(read_image(file, dicom_window=preprocess.dicom_window)) with the "
                     "'preprocess' settings",
        "input_name": INPUT_NAME, "output": OUTPUT_NAME,
    }
    # Calibration and the OOD gate (absent in older runs); the gate's arrays lie in the file it names, beside the
    # model.
    for key in ("calibration", "ood_gate"):
        if info.get(key):
            contract[key] = info[key]
    if len(classes) == 2:
        contract.update(positive_class=classes[1], threshold=None, threshold_rule=None)
        metrics_path = run_dir / layout.METRICS
        youden = (atomic.read_json(metrics_path).get("thresholds") or {}).get("youden") \
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

    The numpy twin of :func:`medlite.models.inputs.probs_from_logits` (which needs torch).
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


# ------------------------------------------------------------------------------------------- metadata
def set_metadata(proto: Any, metadata: dict[str, Any]) -> None:
    """Store ``metadata`` as JSON under ``metadata_props["medlite"]`` of an ``onnx.ModelProto`` (in place)."""
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    for key, value in [*keep, (METADATA_KEY, json.dumps(metadata, sort_keys=True))]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def write_metadata(path: str | Path, metadata: dict[str, Any]) -> None:
    """:func:`set_metadata` on the ONNX file at ``path`` (rewritten in place)."""
    import onnx

    proto = onnx.load(str(path))
    set_metadata(proto, metadata)
    onnx.save(proto, str(path))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The medlite contract stored in an exported ONNX file.

    Raises:
        ModelError: the file is not an ONNX model or carries no medlite metadata.
    """
    import onnx

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf / IO errors of assorted types
        raise ModelError(f"{path}: not a readable ONNX model ({type(err).__name__})") from None
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    raise ModelError(f"{path}: no medlite preprocessing metadata; export the run with `medlite export`")
