"""int8 quantisation recipes compared by top-1 agreement with eager fp32 on trained runs.

Usage::

    python benchmarks/int8_recipes.py RUNDIR... [--split val|test]

For each finished run directory: export fp32 ONNX once, then quantise it with every recipe below (QDQ,
per-channel, uint8 weights and activations, the stem in fp32, as :func:`medlite.deploy.quantize.quantize_int8`)
and score the run's ``--split`` images with eager PyTorch fp32 and each int8 model:

* ``minmax``: what the export tries first (MinMax over 128 training images spread over the training split);
* ``minmax-512``: the same with 512 calibration images;
* ``percentile``: percentile calibration at the 99.99th percentile (128 images);
* ``moving-average``: MinMax with a moving average over calibration batches (128 images);
* ``fp32-residual-adds`` / ``fp32-head`` / ``fp32-last-25%``: MinMax with the residual ``Add`` nodes, the
  pooling + classifier, or the last 25 % of the nodes left in fp32;
* ``fp32-leading-25%`` / ``fp32-leading-50%``: MinMax with the first 25 % / 50 % of the weighted layers
  (and the nodes between them) in fp32 -- the export's fallbacks;
* ``u8s8``: MinMax with int8 instead of uint8 weights (``--int8-weights int8``; exact only on CPUs with VNNI).

Prints one Markdown row per run and recipe: agreement, accuracy of fp32 and int8, and the int8 file size.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from _runner import batched_proba
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from medlite.config import load_config
from medlite.data.prepared import prepare_data
from medlite.deploy import OnnxClassifier, TorchClassifier, run_contract
from medlite.deploy.onnx_export import _subset, export_run
from medlite.deploy.quantize import ImageCalibrationReader, _leading_nodes, _stem_nodes


def _recipes(graph: onnx.GraphProto) -> dict[str, dict[str, Any]]:
    """Recipe name -> calibration images, method, extra options and nodes kept in fp32 (besides the stem)."""
    nodes = list(graph.node)
    head = [n.name for n in nodes if n.op_type in ("GlobalAveragePool", "ReduceMean", "Gemm", "Flatten")]
    return {
        "minmax": {},
        "minmax-512": {"images": 512},
        "percentile": {"method": CalibrationMethod.Percentile, "extra": {"CalibPercentile": 99.99}},
        "moving-average": {"extra": {"CalibMovingAverage": True}},
        "fp32-residual-adds": {"fp32": [n.name for n in nodes if n.op_type == "Add"]},
        "fp32-head": {"fp32": head},
        "fp32-last-25%": {"fp32": [n.name for n in nodes[len(nodes) - len(nodes) // 4:]]},
        "fp32-leading-25%": {"fp32": _leading_nodes(graph, 0.25)},
        "fp32-leading-50%": {"fp32": _leading_nodes(graph, 0.5)},
        "u8s8": {"weights": QuantType.QInt8},
    }


def compare(run: Path, split: str, workdir: Path) -> list[dict[str, Any]]:
    """Agreement and accuracy of every recipe on ``split`` of one run."""
    export_run(run, out=workdir)
    prepared = workdir / "prepared.onnx"
    quant_pre_process(str(workdir / "model.onnx"), str(prepared), skip_symbolic_shape=False)
    data = prepare_data(load_config(run / "config.yaml"), manifest=run / "splits.csv", progress=False)
    idx = data.indices(split, labelled_only=False)
    images, labels = np.ascontiguousarray(data.cached.images[idx]), data.cached.labels[idx]
    train = data.indices("train", labelled_only=False)
    contract = run_contract(run)
    reference = batched_proba(TorchClassifier(run), images).argmax(1)
    graph = onnx.load(str(prepared)).graph
    stem = _stem_nodes(graph)
    rows = []
    for name, recipe in _recipes(graph).items():
        calibration = np.ascontiguousarray(data.cached.images[_subset(train, recipe.get("images", 128))])
        out = workdir / f"{name}.onnx"
        quantize_static(
            str(prepared), str(out), ImageCalibrationReader(calibration, contract), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QUInt8,
            weight_type=recipe.get("weights", QuantType.QUInt8),
            calibrate_method=recipe.get("method", CalibrationMethod.MinMax),
            nodes_to_exclude=list(dict.fromkeys(stem + recipe.get("fp32", []))), extra_options=recipe.get("extra"),
        )
        decided = batched_proba(OnnxClassifier(out), images).argmax(1)
        rows.append({"run": run.name, "recipe": name, "n": len(labels),
                     "agreement": float(np.mean(decided == reference)),
                     "acc_fp32": float(np.mean(reference == labels)), "acc_int8": float(np.mean(decided == labels)),
                     "size_mb": out.stat().st_size / 1e6})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    parser.add_argument("--split", choices=["val", "test"], default="val")
    args = parser.parse_args()
    print("| run | recipe | images | int8 agreement | acc fp32 | acc int8 | int8 MB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for run in args.runs:
        with tempfile.TemporaryDirectory(prefix="medlite-int8-recipes-") as tmp:
            for r in compare(run, args.split, Path(tmp)):
                print(f"| {r['run']} | {r['recipe']} | {r['n']} ({args.split}) | {r['agreement']:.4f} | "
                      f"{r['acc_fp32']:.4f} | {r['acc_int8']:.4f} | {r['size_mb']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
