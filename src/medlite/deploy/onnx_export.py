"""Export a finished run to ONNX with its preprocessing contract, verified in ONNX Runtime.

:func:`export_run` writes ``RUNDIR/export/model.onnx`` (and, with ``int8=True``, ``model.int8.onnx``) plus
``parity.json``. The graph takes the normalised float32 batch ``(B, in_chans, S, S)`` with a dynamic batch
axis and returns three outputs (:mod:`medlite.deploy.graph_outputs`): ``logits`` (B, K), ``pooled`` (B, D),
the features the classifier reads, and ``cam_features`` (B, C, h, w), the map of the model's CAM layer. The
contract that produces that batch from an image file (input size, channels, intensity convention, resize
mode, CLAHE/denoise settings), the class names and, for binary models, the validation-tuned threshold travel
inside the file as JSON under ``metadata_props["medlite"]``, with ``outputs`` (the output names), ``cam``
(:func:`~medlite.deploy.graph_outputs.cam_head`: the classifier weights that turn ``cam_features`` into a class
activation map, or why the head allows none) and ``card`` (:func:`~medlite.rundir.card.card_summary`: training
data, test metrics with 95 % CIs, intended use; what the point-of-care page shows).

Exporter: the TorchScript-based exporter (``dynamo=False``) first: it is fast and reliable for these CNNs
and ViTs at the pinned default opset 17. It cannot export an adaptive average pool whose output does not
divide its input (VGG below 224 px); then the ``torch.export``-based exporter (opset >= 18) takes over.

Parity: eager PyTorch (fp32) and ONNX Runtime score the same preprocessed validation images of the run's own
split (at most 64); the report gives the largest and mean absolute difference of class probabilities, top-1
agreement, the agreement of binary decisions at the operating threshold and a batch-1 re-run (the dynamic
batch axis). fp32 must reach top-1 agreement >= 0.99 and max difference <= 1e-3 or the export fails and no
model file is left behind; int8 only warns below the agreement target.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from medlite._version import __version__
from medlite.data.prepared import PreparedData, prepare_data
from medlite.deploy.classifiers import OnnxClassifier
from medlite.deploy.contract import INPUT_NAME, OUTPUT_NAMES, normalise, run_contract, set_metadata
from medlite.deploy.graph_outputs import ExportGraph, cam_head
from medlite.deploy.quantize import quantize_int8, refit_int8_gate
from medlite.deploy.trust import Trust
from medlite.errors import MedliteError, ModelError
from medlite.models.inputs import predict_logits
from medlite.rundir import layout, store
from medlite.rundir.card import card_summary
from medlite.utils import atomic

DEFAULT_OPSET = 17
"""ONNX opset pinned for exports: torch 2.13's TorchScript exporter converts every registered model at it."""

MIN_OPSET = 13  # per-channel QDQ quantisation needs opset 13
TORCHSCRIPT_MAX_OPSET = 20
MAX_OPSET = 23
DYNAMO_MIN_OPSET = 18

# File names of the export folder (kept here too: tests and scripts import them from this module).
EXPORT_DIR, ONNX_FILE = layout.EXPORT_DIR, layout.ONNX_FILE
INT8_FILE, PARITY_FILE = layout.INT8_FILE, layout.PARITY_FILE

CAM_CHECK_IMAGES = 8  # real images on which the head is tested for global-average-pool + linear
PARITY_IMAGES = 512  # one flipped decision moves agreement by 0.2 %, well inside the 1 % int8 margin
CALIBRATION_IMAGES = 128
# int8 retries: fractions of the weighted layers, from the input, kept in fp32 until parity is met
INT8_FP32_LEADING = (0.0, 0.25, 0.5)
FP32_MAX_ABS_DIFF = 1e-3
MIN_TOP1_AGREEMENT = 0.99
TIE_TOLERANCE = 1e-6
_MB = 1e6


# --------------------------------------------------------------------------------------------- export
def _dynamic_axes() -> dict[str, dict[int, str]]:
    return {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}


def _export_torchscript(model: nn.Module, example: torch.Tensor, opset: int) -> Any:
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter is chosen on purpose (see the module docstring). Tracer warnings concern Python
        # ints taken from spatial shapes (ViT position grids); only the batch axis is dynamic, and it is
        # verified in ONNX Runtime after export.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), do_constant_folding=True,
                          dynamic_axes=_dynamic_axes())
    return onnx.load_model_from_string(buffer.getvalue())


def _export_dynamo(model: nn.Module, example: torch.Tensor, opset: int) -> Any:
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                    input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                    dynamic_shapes=({0: batch},), report=False, verify=False)
    return program.model_proto


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_size: int,
    in_chans: int,
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export an eval-mode model to ONNX with a dynamic batch axis, written atomically.

    The graph returns ``logits``, ``pooled`` and ``cam_features`` (:class:`~medlite.deploy.graph_outputs.
    ExportGraph`); every output has the dynamic batch axis.

    Args:
        model: a zoo model (``cfg.cam_layer``); exported in eval mode (its mode is restored afterwards).
        path: destination ``.onnx`` file.
        input_size: side ``S`` in pixels of the square input ``(B, in_chans, S, S)`` (fixed in the graph).
        in_chans: input channels.
        opset: ONNX opset, 13-23; the fallback exporter uses at least 18.
        metadata: JSON-serialisable dict stored under ``metadata_props["medlite"]`` (``exporter`` and
            ``opset`` are added).

    Returns:
        ``{"exporter": "torchscript" | "dynamo", "opset": int}``.

    Raises:
        ModelError: the opset is out of range or neither exporter can convert the model.
    """
    import onnx

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelError(f"--opset {opset}: must be between {MIN_OPSET} and {MAX_OPSET}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.onnx")
    # Batch 2, not 1: an exporter must not see a batch of 1 it could treat as a constant.
    example = torch.randn(2, in_chans, input_size, input_size, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    used = {"exporter": "torchscript", "opset": opset}
    try:
        graph = ExportGraph(model, example)
        try:
            if opset > TORCHSCRIPT_MAX_OPSET:
                raise ModelError(f"opset {opset} needs the torch.export-based exporter")
            proto = _export_torchscript(graph, example, opset)
        except Exception as first:  # noqa: BLE001 - exporter failures come as many exception types
            used = {"exporter": "dynamo", "opset": max(opset, DYNAMO_MIN_OPSET)}
            if not isinstance(first, ModelError):
                warnings.warn(f"TorchScript ONNX exporter failed ({type(first).__name__}: "
                              f"{str(first).splitlines()[0][:160]}); retrying with the torch.export-based "
                              f"exporter at opset {used['opset']}", UserWarning, stacklevel=2)
            try:
                proto = _export_dynamo(graph, example, used["opset"])
            except Exception as second:  # noqa: BLE001
                name = getattr(getattr(model, "cfg", None), "name", type(model).__name__)
                raise ModelError(f"{name}: ONNX export failed ({type(second).__name__}: "
                                 f"{str(second).splitlines()[0][:200]})") from second
        set_metadata(proto, {**(metadata or {}), **used})
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        model.train(was_training)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return used


# --------------------------------------------------------------------------------------------- parity
def parity_metrics(reference: np.ndarray, candidate: np.ndarray,
                   threshold: float | None = None) -> dict[str, Any]:
    """Agreement of two float (N, C) probability arrays (``reference`` = eager PyTorch fp32).

    Returns:
        ``n_images``, ``max_abs_prob_diff``, ``mean_abs_prob_diff``, ``top1_agreement`` (fraction in [0, 1];
        the candidate's top class agrees when the reference gives it the top probability up to
        :data:`TIE_TOLERANCE`, since the arg-max of exactly tied classes is arbitrary) and, when ``threshold``
        is given (binary), ``threshold_agreement`` of the decisions ``prob[:, 1] >= threshold``.
    """
    reference = np.asarray(reference, np.float64)
    candidate = np.asarray(candidate, np.float64)
    diff = np.abs(reference - candidate)
    chosen = reference[np.arange(len(candidate)), candidate.argmax(1)] if len(candidate) else reference[:, 0]
    out: dict[str, Any] = {
        "n_images": int(len(reference)),
        "max_abs_prob_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_prob_diff": float(diff.mean()) if diff.size else 0.0,
        "top1_agreement": float(np.mean(chosen >= reference.max(1) - TIE_TOLERANCE)) if len(chosen) else 1.0,
    }
    if threshold is not None and len(reference):
        decisions = (reference[:, 1] >= threshold) == (candidate[:, 1] >= threshold)
        out["threshold_agreement"] = float(np.mean(decisions))
    return out


def check_onnx(path: str | Path, images: np.ndarray, reference: np.ndarray,
               threshold: float | None = None) -> dict[str, Any]:
    """Score ``images`` (uint8 (N, S, S)) with the ONNX model at ``path`` and compare with ``reference``.

    The first image is also run alone: ``batch1_max_abs_diff`` is its difference to the batched result, which
    shows that the dynamic batch axis works.
    """
    session = OnnxClassifier(path)
    candidate = session.predict_proba(images)
    metrics = parity_metrics(reference, candidate, threshold)
    metrics["batch1_max_abs_diff"] = float(np.abs(session.predict_proba(images[:1]) - candidate[:1]).max())
    metrics["size_mb"] = round(Path(path).stat().st_size / _MB, 3)
    return metrics


def _subset(indices: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of ``indices``, spread evenly over them (deterministic, keeps the split's class mix)."""
    if len(indices) <= n:
        return indices
    return indices[np.linspace(0, len(indices) - 1, n).round().astype(int)]


def _parity_images(data: PreparedData) -> tuple[str, np.ndarray]:
    for split in ("val", "test", "train"):
        idx = data.indices(split, labelled_only=False)
        if len(idx):
            return split, np.ascontiguousarray(data.cached.images[_subset(idx, PARITY_IMAGES)])
    raise MedliteError("the run's split has no images to check parity on")


def _failures(metrics: dict[str, Any], max_diff: float | None) -> list[str]:
    """The parity criteria ``metrics`` misses (empty when it passes)."""
    failed = []
    if metrics["top1_agreement"] < MIN_TOP1_AGREEMENT:
        failed.append(f"top-1 agreement {metrics['top1_agreement']:.3f} < {MIN_TOP1_AGREEMENT}")
    if max_diff is None:  # int8: binary decisions at the operating threshold must agree as well
        if metrics.get("threshold_agreement", 1.0) < MIN_TOP1_AGREEMENT:
            failed.append(f"agreement at the threshold {metrics['threshold_agreement']:.3f} "
                          f"< {MIN_TOP1_AGREEMENT}")
        return failed
    worst = max(metrics["max_abs_prob_diff"], metrics["batch1_max_abs_diff"])
    if worst > max_diff:
        failed.append(f"max prob diff {worst:.2e} > {max_diff:.0e}")
    return failed


# ----------------------------------------------------------------------------------------- export_run
def export_run(
    run_dir: str | Path,
    format: str = "onnx",  # noqa: A002 - mirrors the CLI's --format
    int8: bool = False,
    opset: int = DEFAULT_OPSET,
    out: str | Path | None = None,
    int8_weights: Literal["uint8", "int8"] | None = None,
) -> dict[str, Any]:
    """Export the best model of a run to ONNX (optionally int8) and verify it against eager PyTorch.

    Args:
        run_dir: a finished run directory (``model.safetensors``, ``run.json``, ``splits.csv``).
        format: ``"onnx"`` (the only format so far).
        int8: also write ``model.int8.onnx``, statically quantised (QDQ, per-channel weights) with at most 128
            calibration images from the run's training split; below 99 % top-1 agreement it is redone with the
            first 25 %, then 50 % of the layers in fp32.
        opset: ONNX opset (default :data:`DEFAULT_OPSET`).
        out: output folder; default ``RUNDIR/export``.
        int8_weights: with ``int8``, the weight type: ``"uint8"`` (U8U8, the default, exact on every x86 CPU) or
            ``"int8"`` (U8S8, about twice the int8 throughput on CPUs with VNNI, wrong on CPUs without it; the
            parity check on *this* machine cannot vouch for another); see :mod:`medlite.deploy.quantize`.

    Returns:
        The parity report, also written to ``OUT/parity.json``: model, classes, opset, exporter, the split
        and number of parity images, the criteria, and ``fp32`` (and ``int8``) sections with ``path``,
        ``size_mb`` and the metrics of :func:`check_onnx`, ``passed``; the int8 section adds the
        quantisation settings and ``size_reduction`` (fp32 bytes / int8 bytes).

    Raises:
        MedliteError: unknown format, unfinished run, or the fp32 model fails the parity criteria (the
            report is still written; no model file is left behind).
    """
    if format.lower() != "onnx":
        raise MedliteError(f"--format {format!r}: only 'onnx' is supported")
    if int8_weights is not None and not int8:
        raise MedliteError("--int8-weights sets the int8 model's weight type; add --int8")
    if int8_weights not in (None, "uint8", "int8"):
        raise MedliteError(f"--int8-weights {int8_weights!r}: expected 'uint8' or 'int8'")
    model, cfg, info = store.load_run_model(run_dir)
    run_dir = Path(run_dir)
    contract = run_contract(run_dir)
    data = prepare_data(cfg, manifest=run_dir / layout.SPLITS, progress=False)
    if list(data.classes) != list(contract["classes"]):
        raise MedliteError(f"{run_dir}: data classes {data.classes} differ from run.json "
                           f"{contract['classes']}")
    split, images = _parity_images(data)
    with torch.inference_mode():
        logits = np.asarray(predict_logits(model, images, in_chans=contract["in_chans"]), np.float64)
    # The exported model serves calibrated probabilities (the contract's calibration): compare those.
    reference = Trust(contract, run_dir).probabilities(logits)
    threshold = contract.get("threshold") if contract["num_classes"] == 2 else None

    out_dir = Path(out) if out is not None else run_dir / EXPORT_DIR
    fp32_path = out_dir / ONNX_FILE
    tmp = out_dir / f".{ONNX_FILE}.{os.getpid()}.check.onnx"
    cam = cam_head(model, torch.from_numpy(normalise(images[:CAM_CHECK_IMAGES], contract)))
    metrics_file = run_dir / layout.METRICS
    card = card_summary(cfg, data, atomic.read_json(metrics_file) if metrics_file.is_file() else None)
    metadata = {**contract, "precision": "fp32", "medlite_version": __version__,
                "torch_version": torch.__version__, "outputs": list(OUTPUT_NAMES), "cam": cam, "card": card}
    report: dict[str, Any] = {
        "run_dir": str(run_dir), "model": contract["model"], "classes": contract["classes"], "format": "onnx",
        "parity_split": split, "n_parity_images": int(len(images)),
        "criteria": {"fp32_max_abs_prob_diff": FP32_MAX_ABS_DIFF, "min_top1_agreement": MIN_TOP1_AGREEMENT},
    }
    gate = (contract.get("ood_gate") or {}).get("file")
    if gate:  # the OOD gate's arrays travel beside the model (the contract names the file)
        with atomic.atomic_write(out_dir / gate, "wb") as handle:
            handle.write((run_dir / gate).read_bytes())
    try:
        report.update(export_onnx(model, tmp, input_size=contract["input_size"],
                                  in_chans=contract["in_chans"], opset=opset, metadata=metadata))
        fp32 = check_onnx(tmp, images, reference, threshold)
        failed = _failures(fp32, FP32_MAX_ABS_DIFF)
        fp32.update(passed=not failed, path=str(fp32_path))
        report["fp32"] = fp32
        if failed:
            atomic.write_json(out_dir / PARITY_FILE, report)
            raise MedliteError(f"{run_dir}: ONNX fp32 parity failed on {len(images)} {split} images "
                               f"({'; '.join(failed)}); see {out_dir / PARITY_FILE}")
        os.replace(tmp, fp32_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if int8:
        report["int8"] = _export_int8(fp32_path, out_dir, data, contract, images, reference, threshold,
                                      int8_weights or "uint8")
        report["int8"]["ood_gate"] = refit_int8_gate(out_dir / INT8_FILE, images, split, layout.INT8_OOD_GATE)
    atomic.write_json(out_dir / PARITY_FILE, report)
    return report


def describe_report(report: dict[str, Any]) -> str:
    """A few human-readable lines summarising an :func:`export_run` report (what the CLI prints)."""
    lines = [f"{report['model']}: ONNX opset {report['opset']} ({report['exporter']} exporter); parity on "
             f"{report['n_parity_images']} {report['parity_split']} images vs eager PyTorch fp32"]
    for key in ("fp32", "int8"):
        part = report.get(key)
        if part is None:
            continue
        smaller = f", {part['size_reduction']:.1f}x smaller" if "size_reduction" in part else ""
        at_threshold = part.get("threshold_agreement")
        decision = "" if at_threshold is None else f", threshold agreement {at_threshold:.3f}"
        if part.get("fp32_leading"):
            decision += f", first {part['fp32_leading']:.0%} of the layers kept fp32"
        lines.append(f"  {key}: {part['path']} ({part['size_mb']:.2f} MB{smaller}) max |dp| "
                     f"{part['max_abs_prob_diff']:.2e}, top-1 agreement {part['top1_agreement']:.3f}"
                     f"{decision} -> {'ok' if part['passed'] else 'BELOW TARGET'}")
    return "\n".join(lines)


def _export_int8(fp32_path: Path, out_dir: Path, data: PreparedData, contract: dict[str, Any], images: np.ndarray,
                 reference: np.ndarray, threshold: float | None, weight_type: str) -> dict[str, Any]:
    """Quantise ``fp32_path`` into ``out_dir/model.int8.onnx`` and check it like the fp32 model.

    When the int8 model misses the agreement criterion, it is quantised again with more of the leading layers
    in fp32 (:data:`INT8_FP32_LEADING`); ``attempts`` records each try, and the last one is kept.
    """
    idx = data.indices("train", labelled_only=False)
    calibration = np.ascontiguousarray(data.cached.images[_subset(idx, CALIBRATION_IMAGES)])
    int8_path = out_dir / INT8_FILE
    attempts = []
    for leading in INT8_FP32_LEADING:
        settings = quantize_int8(fp32_path, int8_path, calibration, contract, weight_type=weight_type,
                                 fp32_leading=leading)
        metrics = check_onnx(int8_path, images, reference, threshold)
        failed = _failures(metrics, None)
        attempts.append({"fp32_leading": leading, "fp32_nodes": len(settings["fp32_nodes"]),
                         "top1_agreement": metrics["top1_agreement"], "passed": not failed})
        if not failed:
            break
    metrics["passed"] = not failed
    metrics["size_reduction"] = round(fp32_path.stat().st_size / int8_path.stat().st_size, 2)
    if failed:
        warnings.warn(f"{int8_path}: int8 vs fp32 PyTorch on {len(images)} images: {'; '.join(failed)} even "
                      f"with the first {leading:.0%} of the layers in fp32; prefer {fp32_path.name} where that "
                      "matters", UserWarning, stacklevel=3)
    return {"path": str(int8_path), **settings, "calibration_split": "train", **metrics, "attempts": attempts}
