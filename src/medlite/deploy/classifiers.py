"""Models that predict uint8 images under their contract: an exported ONNX file (torch-free) or a run directory.

:class:`Classifier` is the protocol :func:`medlite.deploy.prediction.predict` (and the point-of-care server)
need; :func:`load_classifier` picks the implementation from what the user passed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medlite.deploy.contract import METADATA_KEY, OUTPUT_NAME, POOLED_NAME, normalise, run_contract
from medlite.deploy.trust import Trust
from medlite.errors import ModelError


class Classifier(Protocol):
    """What :func:`predict` needs from a model: its contract, its :class:`~medlite.deploy.trust.Trust`
    (calibration, OOD gate) and logits with pooled features for uint8 (B, S, S) images."""

    contract: dict[str, Any]
    trust: Trust

    def logits_and_pooled(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...

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
        # Exports since the pooled / cam_features outputs have three; older ones only logits (first output).
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._logits_name = OUTPUT_NAME if OUTPUT_NAME in self.output_names else self.output_names[0]
        self.trust = Trust(self.contract, self.path.parent)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """float32 (B, C) logits for uint8 (B, S, S) preprocessed images."""
        return self.session.run([self._logits_name], {self.input_name: normalise(images, self.contract)})[0]

    def outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every graph output for uint8 (B, S, S) images from one run: ``logits`` (B, K) and, for current
        exports, ``pooled`` (B, D) and ``cam_features`` (B, C, h, w) (float32)."""
        values = self.session.run(self.output_names, {self.input_name: normalise(images, self.contract)})
        out = dict(zip(self.output_names, values, strict=True))
        out.setdefault(OUTPUT_NAME, out[self._logits_name])
        return out

    def logits_and_pooled(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """float32 logits (B, K) and pooled features (B, D) (``None`` for exports older than that output)."""
        names = [self._logits_name] + ([POOLED_NAME] if POOLED_NAME in self.output_names else [])
        values = self.session.run(names, {self.input_name: normalise(images, self.contract)})
        return values[0], values[1] if len(values) > 1 else None

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """float64 (B, C) calibrated probabilities for uint8 (B, S, S) preprocessed images."""
        return self.trust.probabilities(self.logits(images))


class TorchClassifier:
    """The best model of a run directory in eager PyTorch (fp32, CPU), with the run's contract."""

    def __init__(self, run_dir: str | Path, threads: int | None = None) -> None:
        # Imported here: the ONNX path of this module must not import torch (start-up time, no torch install).
        from medlite.rundir.store import load_run_model

        self.model, _, _ = load_run_model(run_dir)
        self.contract = run_contract(run_dir)
        self.trust = Trust(self.contract, run_dir)
        self.threads = threads

    def logits_and_pooled(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 logits (B, K) and pooled features (B, D) for uint8 (B, S, S) preprocessed images."""
        import torch

        from medlite.models.heads import features_and_logits

        # The same numpy normalisation as the ONNX path (and no Lightning import, unlike the training code).
        x = torch.from_numpy(normalise(images, self.contract))
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(int(self.threads))
        try:
            with torch.inference_mode():
                pooled, logits = features_and_logits(self.model, x)
        finally:
            torch.set_num_threads(previous)
        return logits.float().numpy(), pooled.float().numpy()

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """float64 (B, C) calibrated probabilities for uint8 (B, S, S) preprocessed images."""
        return self.trust.probabilities(self.logits_and_pooled(images)[0])


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
