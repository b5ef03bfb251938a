"""Static int8 quantisation of an exported ONNX model with ONNX Runtime, calibrated on training images.

Recipe (``onnxruntime.quantization``):

1. ``quant_pre_process``: symbolic shape inference and ONNX Runtime's graph optimisations, which fold
   BatchNorm into the preceding convolution so that each conv (+ activation) is quantised as one unit and no
   separate, badly-ranged BatchNorm output needs its own scale. When it fails (an op it cannot shape-infer)
   the un-processed model is quantised instead, with a warning.
2. ``quantize_static`` in QDQ format with MinMax calibration over at most 128 training images preprocessed
   exactly like the training data (the run's uint8 cache, normalised by the contract):

   * weights **per output channel** (depthwise convolutions have very different ranges per channel, and one
     scale per tensor would wipe out the small ones);
   * weights and activations **uint8** (U8U8), not the usual uint8-activation / int8-weight (U8S8) pair.
     On x86 CPUs without VNNI (AVX2 and plain AVX-512, e.g. the first development machine, an AMD EPYC), ONNX
     Runtime's U8S8 kernels add pairs of u8 x s8 products in int16, which saturates: a hybridnet_xr_100
     trained on phantoms kept only 68 % top-1 agreement with fp32 (U8S8) against 99.1 % (U8U8);
     ``reduce_range`` (7-bit weights) gave 97.8 %. U8U8 is exact on every CPU;
   * the **stem stays fp32**: the nodes that read the network input (the first convolution) see the image
     itself, and rounding it to 8 bits costs the most agreement for the least work (99.8 % agreement with
     the stem in fp32 in the same experiment);
   * optionally the **leading layers stay fp32** (``fp32_leading``): on trained pediatric X-ray models the
     disagreements come from the early, high-resolution layers. Keeping the first 25 % of the weighted layers
     in fp32 raised top-1 agreement on 527 validation images from 0.979-0.987 to 0.989-0.994 (hybridnet_xr_50 /
     _100, mobilenet_v2_050), the first 50 % to 0.998-1.000, while the *last* 25 % changed nothing
     (BENCHMARKS.md). :func:`medlite.deploy.export_run` uses this as a fallback when parity is missed.

The QDQ model keeps the fp32 model's metadata; ``precision`` becomes ``"int8"`` and ``quantization`` records
the settings.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from medlite.deploy.contract import normalise, read_metadata, write_metadata
from medlite.errors import DataError

_CALIBRATION_BATCH = 16
_WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed uint8 images to ONNX Runtime's calibrator as normalised float batches.

    Args:
        images: uint8 (N, S, S) preprocessed images (e.g. rows of the run's cache).
        contract: the model contract (``in_chans``, ``input_size``, ``mean``, ``std``, ``input_name``).
        batch_size: images per calibration batch (the exported batch axis is dynamic).
    """

    def __init__(self, images: np.ndarray, contract: dict[str, Any],
                 batch_size: int = _CALIBRATION_BATCH) -> None:
        if len(images) == 0:
            raise DataError("int8 calibration needs at least one training image")
        self.images = images
        self.contract = contract
        self.batch_size = batch_size
        self._start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next ``{input_name: float32 (b, in_chans, S, S)}`` batch, or ``None`` when all were given."""
        if self._start >= len(self.images):
            return None
        chunk = self.images[self._start:self._start + self.batch_size]
        self._start += self.batch_size
        return {self.contract.get("input_name", "input"): normalise(chunk, self.contract)}

    def rewind(self) -> None:
        """Start again from the first image."""
        self._start = 0

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)


def _stem_nodes(graph: Any) -> list[str]:
    """Names of the nodes of an ``onnx.GraphProto`` that read its first input (the stem convolution)."""
    first = graph.input[0].name
    return [node.name for node in graph.node if first in node.input]


def _leading_nodes(graph: Any, fraction: float) -> list[str]:
    """Names of the nodes up to and including the ``ceil(fraction * L)``-th of the graph's L weighted layers.

    ONNX graphs list nodes in topological order, so these are the layers nearest the input (for a CNN, the
    high-resolution ones) plus everything computed between them (activations, pooling, residual adds).
    """
    import math

    nodes = graph.node
    weighted = [i for i, node in enumerate(nodes) if node.op_type in _WEIGHTED_OPS]
    count = math.ceil(fraction * len(weighted))
    return [node.name for node in nodes[:weighted[count - 1] + 1]] if count else []


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration_images: np.ndarray,
    contract: dict[str, Any],
    *,
    per_channel: bool = True,
    weight_type: Literal["uint8", "int8"] = "uint8",
    keep_stem_fp32: bool = True,
    fp32_leading: float = 0.0,
) -> dict[str, Any]:
    """Write a statically quantised int8 (QDQ) copy of ``fp32_path`` to ``out_path`` atomically.

    Args:
        fp32_path: an fp32 model written by :func:`medlite.deploy.onnx_export.export_onnx`.
        out_path: destination ``.onnx`` file.
        calibration_images: uint8 (N, S, S) preprocessed training images (N <= a few hundred is plenty).
        contract: the model contract used to normalise them.
        per_channel: per-output-channel weight scales.
        weight_type: ``"uint8"`` (exact on every CPU) or ``"int8"`` (faster on CPUs with VNNI, saturates
            without it); see the module docstring.
        keep_stem_fp32: leave the nodes reading the network input in fp32.
        fp32_leading: fraction in [0, 1) of the weighted layers (Conv, Gemm, MatMul), counted from the input,
            left in fp32 with every node between them.

    Returns:
        The settings used: ``quant_format``, ``per_channel``, ``weight_type``, ``activation_type``,
        ``calibrate_method``, ``calibration_images``, ``fp32_leading``, ``fp32_nodes`` and ``pre_processed``
        (whether step 1 succeeded).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process


    if not 0.0 <= fp32_leading < 1.0:
        raise ValueError(f"fp32_leading must be in [0, 1), got {fp32_leading}")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    stem = out_path.with_name(f".{out_path.stem}.{os.getpid()}")
    prepared, tmp = stem.with_suffix(".pre.onnx"), stem.with_suffix(".tmp.onnx")
    pre_processed = True
    try:
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        except Exception as err:  # noqa: BLE001 - shape inference raises assorted types on unusual graphs
            warnings.warn(f"{fp32_path.name}: quantisation pre-processing failed ({type(err).__name__}); "
                          "quantising the un-optimised graph", UserWarning, stacklevel=2)
            pre_processed = False
        source = prepared if pre_processed else fp32_path
        graph = onnx.load(str(source), load_external_data=False).graph
        stem = _stem_nodes(graph) if keep_stem_fp32 else []
        excluded = list(dict.fromkeys(stem + _leading_nodes(graph, fp32_leading)))  # ordered, no repeats
        quantize_static(
            str(source), str(tmp), ImageCalibrationReader(calibration_images, contract),
            quant_format=QuantFormat.QDQ, per_channel=per_channel, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8 if weight_type == "uint8" else QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded,
        )
        settings = {"quant_format": "QDQ", "per_channel": per_channel,
                    "weight_type": "uint8 (asymmetric)" if weight_type == "uint8" else "int8 (symmetric)",
                    "activation_type": "uint8 (asymmetric)", "calibrate_method": "MinMax",
                    "calibration_images": int(len(calibration_images)), "fp32_leading": fp32_leading,
                    "fp32_nodes": excluded,
                    "pre_processed": pre_processed}
        write_metadata(tmp, {**read_metadata(fp32_path), "precision": "int8", "quantization": settings})
        os.replace(tmp, out_path)
    finally:
        for path in (prepared, tmp):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return settings


def refit_int8_gate(int8_path: Path, images: np.ndarray, split: str, gate_file: str) -> dict[str, Any] | None:
    """Give the int8 model an OOD threshold of its own, from its scores on ``images`` (uint8 (N, S, S), the
    run's validation images), written as ``gate_file`` beside it and named in its metadata.

    The gate's means and covariance stay those of the fp32 features; only the threshold moves. Without this,
    int8 rounding of the pooled features raises every image's score, and the fp32 threshold flags far more than
    the intended 1 % of images like the training data (mobilenet_v2 on pediatric X-rays: 16.8 % of its test split,
    BENCHMARKS.md).

    Returns:
        ``{"threshold_fp32", "threshold", "flagged_at_fp32_threshold", "n", "split"}``, or ``None`` for a model
        without a gate.
    """
    from medlite.deploy.classifiers import OnnxClassifier  # here: classifiers loads ONNX Runtime sessions
    from medlite.metrics.ood import DEFAULT_QUANTILE

    classifier = OnnxClassifier(int8_path)
    gate = classifier.trust.gate
    if gate is None:
        return None
    logits, pooled = classifier.logits_and_pooled(images)
    scores = gate.score(features=pooled, logits=logits)
    fp32_threshold = gate.threshold
    flagged_before = float(gate.flag(scores).mean())
    gate.calibrate_threshold(scores, DEFAULT_QUANTILE)
    gate.save(int8_path.parent / gate_file)
    meta = read_metadata(int8_path)
    meta["ood_gate"] = {**meta["ood_gate"], **gate.to_dict(), "file": gate_file,
                        "threshold_from": f"{len(images)} {split} images through the int8 model"}
    write_metadata(int8_path, meta)
    return {"threshold_fp32": fp32_threshold, "threshold": gate.threshold,
            "flagged_at_fp32_threshold": flagged_before, "n": int(len(images)), "split": split}
