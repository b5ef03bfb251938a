"""The trust record of a run: calibrated probabilities and the gate that flags images unlike its training data.

Fitted once at the end of training (:func:`fit_trust`), from the finished model's outputs:

* **calibration**: temperature scaling (Guo et al. 2017) fitted on the validation split's logits; without a
  validation split, none (identity) and the metrics say so. It changes no prediction of a multi-class model
  and no AUC; it makes a probability of 0.8 mean right about 80 % of the time.
* **OOD gate**: the Mahalanobis distance of an image's pooled features to the nearest class mean of the
  labelled training images (shared Ledoit-Wolf covariance; :mod:`medlite.metrics.ood`, chosen by
  ``benchmarks/ood_gate.py``), flagged above the validation split's 99th percentile (training images when
  there is no validation split, which flags fewer real outliers: the report says which).

Stored as ``run.json`` entries ``calibration`` and ``ood_gate`` (JSON, the gate's arrays in
``ood_gate.safetensors``), so that every predicting path (``evaluate``, ``predict``, the ONNX contract and
``medlite serve``) applies the same. :func:`trust_report` is what ``metrics.json`` records of it on the test
split: ECE / Brier / NLL before and after calibration and the share of images the gate flags.

:func:`score_run` is the end of every run (fit both, write ``run.json``, ``metrics.json`` and the model card);
:func:`calibrate_run` (``medlite calibrate RUNDIR``) does the same for a run trained before medlite had them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlite.config import RunConfig
from medlite.data.prepared import PreparedData, prepare_data
from medlite.metrics.calibration import Calibrator, calibration_summary, plot_reliability, reliability_bins
from medlite.metrics.ood import DEFAULT_METHOD, DEFAULT_QUANTILE, OODGate
from medlite.metrics.split_eval import evaluate_split
from medlite.models.heads import features_and_logits
from medlite.models.inputs import normalise_batch, probs_from_logits
from medlite.paradigms import get_paradigm
from medlite.rundir import layout, store
from medlite.rundir.card import write_model_card
from medlite.utils import atomic


@torch.no_grad()
def features_logits(model: nn.Module, images: np.ndarray, mean: float, std: float, in_chans: int,
                    batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """float64 pooled features (N, D) and logits (N, C) of uint8 (N, S, S) images, from one pass of ``model``
    (in eval mode)."""
    device = next(model.parameters()).device
    feats, logits = [], []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.asarray(images[start:start + batch_size])).to(device).float().div(255.0)[:, None]
        f, z = features_and_logits(model, normalise_batch(x, mean, std, in_chans))
        feats.append(f.double().cpu().numpy())
        logits.append(z.double().cpu().numpy())
    return np.concatenate(feats), np.concatenate(logits)


def _outputs(model: nn.Module, data: PreparedData, split: str, in_chans: int, labelled_only: bool = False):
    idx = data.indices(split, labelled_only=labelled_only)
    cfg = model.cfg
    feats, logits = features_logits(model, data.cached.images[idx], cfg.mean, cfg.std, in_chans) if len(idx) \
        else (np.zeros((0, 1)), np.zeros((0, len(data.classes))))
    return feats, logits, np.asarray(data.cached.labels[idx], dtype=np.int64)


def fit_trust(model: nn.Module, data: PreparedData, out: Path, in_chans: int) -> dict[str, Any]:
    """Fit calibration and the OOD gate of a finished run (``model`` in eval mode) and write
    ``out/ood_gate.safetensors`` and ``out/plots/reliability_test.png``.

    Returns:
        ``{"calibration": Calibrator.to_dict(), "ood_gate": OODGate.to_dict() + {"file", "fitted_on",
        "threshold_from"}, "report": trust_report}``; the first two go into ``run.json``, the report into
        ``metrics.json``.
    """
    train_f, train_z, train_y = _outputs(model, data, "train", in_chans, labelled_only=True)
    val_f, val_z, val_y = _outputs(model, data, "val", in_chans)
    has_val = len(val_y) > 0 and len(np.unique(val_y)) > 0
    calibrator = Calibrator.fit(val_z, val_y) if has_val else Calibrator("none")
    gate = OODGate.fit(train_f, train_y, logits=train_z, method=DEFAULT_METHOD)
    reference = val_f if has_val else train_f
    gate.calibrate_threshold(gate.score(features=reference), DEFAULT_QUANTILE)
    gate.save(out / layout.OOD_GATE)
    gate_info = {**gate.to_dict(), "file": layout.OOD_GATE, "fitted_on": f"{len(train_y)} labelled training images",
                 "threshold_from": f"{len(val_y)} validation images" if has_val
                 else f"{len(train_y)} training images (no validation split: fewer outliers are flagged)"}
    split = data.eval_split
    test_f, test_z, test_y = _outputs(model, data, split, in_chans)
    report = trust_report(calibrator, gate, test_f, test_z, test_y, split=split,
                          plot=out / layout.PLOTS / f"reliability_{split}.png")
    report["ood"]["val_flagged"] = float(gate.flag(gate.score(features=val_f)).mean()) if has_val else None
    return {"calibration": calibrator.to_dict(), "ood_gate": gate_info, "report": report}


def trust_report(calibrator: Calibrator, gate: OODGate | None, features: np.ndarray, logits: np.ndarray,
                 labels: np.ndarray, *, split: str, plot: Path | None = None) -> dict[str, Any]:
    """What ``metrics.json`` records of calibration and the gate on one split (features (N, D), logits (N, C),
    labels (N,)): ``calibration`` {method, temperature, before, after: {ece, brier, nll}} and ``ood`` {method,
    threshold, flagged: the share of this split's images the gate flags}. Writes the reliability diagram to
    ``plot`` when given."""
    raw, calibrated = probs_from_logits(logits), calibrator.apply(logits)
    report: dict[str, Any] = {
        "calibration": {"method": calibrator.method, "temperature": calibrator.temperature, "split": split,
                        "before": calibration_summary(raw, labels), "after": calibration_summary(calibrated, labels)},
        "ood": None,
    }
    if gate is not None:
        report["ood"] = {"method": gate.method, "threshold": gate.threshold, "split": split,
                         "flagged": float(gate.flag(gate.score(features=features, logits=logits)).mean())}
    if plot is not None:
        label = f"after ({calibrator.method}, T = {calibrator.temperature:.2f})" \
            if calibrator.method == "temperature" else f"after ({calibrator.method})"
        plot_reliability({"before": reliability_bins(raw, labels), label: reliability_bins(calibrated, labels)},
                         plot, title=f"reliability on the {split} split (top-1 confidence)")
    return report


def run_calibrator(info: dict[str, Any]) -> Calibrator:
    """The calibration stored in a ``run.json`` (identity for runs written before calibration existed)."""
    return Calibrator.from_dict(info.get("calibration") or {"method": "none"})


def run_gate(run_dir: str | Path, info: dict[str, Any]) -> OODGate | None:
    """The OOD gate of a run directory, or ``None`` for runs written before the gate existed."""
    entry = info.get("ood_gate")
    path = Path(run_dir) / (entry or {}).get("file", layout.OOD_GATE)
    return OODGate.load(path) if entry and path.is_file() else None


def score_run(out: Path, cfg: RunConfig, model: nn.Module, data: PreparedData,
              keep: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit calibration and the OOD gate of ``model`` (the run's final weights), then write ``run.json``,
    ``metrics.json`` (on ``data.eval_split``, calibrated; ``keep``'s entries stay unless recomputed) and the
    model card. Returns the metrics."""
    model.eval()
    trust = fit_trust(model, data, out, cfg.preprocess.channels)
    store.save_run_info(out, cfg, model, data.classes, trust=trust)
    split = data.eval_split
    with torch.inference_mode():
        metrics = evaluate_split(model, data, split, cfg.preprocess.channels, out / layout.PLOTS,
                                 calibrator=Calibrator.from_dict(trust["calibration"]))
    metrics = {**(keep or {}), **metrics, **trust["report"]}
    atomic.write_json(out / layout.METRICS, metrics)
    write_model_card(out, cfg, data, metrics, split, n_params=sum(p.numel() for p in model.parameters()),
                     notes=get_paradigm(cfg.train.paradigm).notes(out))
    return metrics


def calibrate_run(run_dir: str | Path) -> dict[str, Any]:
    """Calibrate and gate a finished run (``medlite calibrate RUNDIR``), on its own data and stored split.

    Refits both from the run's weights (a run that has them gets the same result again), rewrites ``run.json``,
    ``ood_gate.safetensors``, ``metrics.json`` (the test metrics with calibrated probabilities and, for binary
    runs, the validation threshold re-tuned on them) and the model card; the weights are untouched.

    Returns:
        the new metrics; ``metrics["stale_exports"]`` lists exported files made before this calibration (they
        carry the old contract: export again; each is also warned about).

    Raises:
        MedliteError: not a finished run, or its data cannot be read any more.
    """
    model, cfg, _ = store.load_run_model(run_dir)
    run_dir = Path(run_dir)
    data = prepare_data(cfg, manifest=run_dir / layout.SPLITS, progress=False)
    metrics_path = run_dir / layout.METRICS
    old = atomic.read_json(metrics_path) if metrics_path.is_file() else {}
    metrics = score_run(run_dir, cfg, model, data, keep=old)
    exports = run_dir / layout.EXPORT_DIR
    stale = sorted(str(p) for p in exports.glob("*.onnx")) if exports.is_dir() else []
    for path in stale:
        warnings.warn(f"{path}: exported before this calibration, so it predicts without it; "
                      f"export again: medlite export {run_dir}", UserWarning, stacklevel=2)
    return {**metrics, "stale_exports": stale}
