"""Calibration, the OOD gate and input checks at prediction time, torch-free (run directories and ONNX alike).

A model's contract (:mod:`medlite.deploy.contract`) names its calibration and its gate
(:mod:`medlite.workflows.trust` fits both at the end of training); :class:`Trust` applies them to a batch's
logits and pooled features, and decides each prediction's status:

* ``ok``;
* ``flagged: unlike the training data (score S > threshold T)``: the image's features are farther from every
  class than 99 % of the validation images' (``--ood-policy abstain`` then withholds the class);
* ``rejected: <reason>``: an input check failed before the model (a colour photograph, a nearly constant
  image, a tiny image, an extreme aspect ratio; :mod:`medlite.data.input_checks`); no class is given.

Models exported before calibration and the gate existed have neither: probabilities are the plain softmax
and every readable image is ``ok``, and :attr:`Trust.note` says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medlite.deploy.contract import probabilities
from medlite.errors import MedliteError, ModelError
from medlite.metrics.calibration import Calibrator
from medlite.metrics.ood import OODGate

OOD_POLICIES = ("warn", "abstain")


class Trust:
    """The calibration and OOD gate of one model.

    Args:
        contract: the model's contract (``calibration`` and ``ood_gate`` entries, when present).
        folder: where the gate's file lies (the run directory, or the folder of the ``.onnx``).
    """

    def __init__(self, contract: dict[str, Any], folder: str | Path) -> None:
        self.calibrator = Calibrator.from_dict(contract.get("calibration") or {"method": "none"})
        entry = contract.get("ood_gate")
        self.gate: OODGate | None = None
        if entry:
            path = Path(folder) / entry.get("file", "ood_gate.safetensors")
            if not path.is_file():
                raise ModelError(f"{path}: the model's OOD gate is missing (keep it beside the model file)")
            self.gate = OODGate.load(path)
        missing = [what for what, absent in (("calibration", "calibration" not in contract),
                                              ("OOD gate", self.gate is None)) if absent]
        self.note = (f"this model has no {' and no '.join(missing)} (made before medlite had them); add them with "
                     "medlite calibrate RUNDIR, then export the run again") if missing else None

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """float64 (B, C) calibrated probabilities of (B, C) or single-logit (B,) / (B, 1) logits."""
        probabilities(logits)  # the NaN / infinity check with its one-line error
        return self.calibrator.apply(np.asarray(logits, dtype=np.float64))

    def scores(self, logits: np.ndarray, pooled: np.ndarray | None) -> np.ndarray | None:
        """float64 (B,) OOD scores (higher = more unusual), or ``None`` without a gate (or, for a feature gate,
        without pooled features: an export older than its ``pooled`` output)."""
        if self.gate is None or (self.gate.method == "mahalanobis" and pooled is None):
            return None
        return self.gate.score(features=pooled, logits=logits)

    def status(self, score: float | None, rejected: str | None = None) -> str:
        """``ok``, ``flagged: ...`` (score above the gate's threshold) or ``rejected: <reason>``."""
        if rejected:
            return f"rejected: {rejected}"
        if self.gate is None or score is None:
            return "ok"
        return self.gate.status(float(score))


def check_policy(policy: str) -> str:
    """``policy`` if it is one of :data:`OOD_POLICIES`, else a one-line error naming ``--ood-policy``."""
    if policy not in OOD_POLICIES:
        raise MedliteError(f"--ood-policy {policy!r}: expected one of {', '.join(OOD_POLICIES)}")
    return policy
