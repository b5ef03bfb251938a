"""CPU latency/throughput of eager PyTorch fp32 and ONNX Runtime fp32 / int8; the int8 accuracy change.

Usage::

    python benchmarks/deploy_latency.py [--models hybridnet_xr_100 ...] [--img-size 224] [--threads 2]
        [--data SOURCE] [--runs RUNDIR ...] [--iters 50] [--warmup 10]

Latency (table 1), per model, on a random-init network (weights do not change the work done):

* eager: ``model.eval()``, ``torch.inference_mode()``, channels-last, ``torch.set_num_threads(threads)``;
* ONNX fp32 / int8: the model exported by :func:`medlite.deploy.onnx_export.export_onnx` (opset 17) and
  quantised by :func:`medlite.deploy.quantize.quantize_int8` (QDQ, per-channel), one ONNX Runtime CPU session
  with ``intra_op_num_threads = threads`` and one inter-op thread;
* p50 / p90 (min): batch 1, ``iters`` calls timed one by one with ``time.perf_counter`` after ``warmup``
  calls; the minimum approximates the uncontended cost on a shared machine;
  throughput: images/s at batch 32 over ``max(3, iters // 10)`` calls after 2 warm-up calls.

int8 calibration images: 64 images of ``--data`` preprocessed at ``--img-size`` when given, else random
uint8 images (the calibration only sets ranges; it does not change the latency).

Accuracy (table 2), for each ``--runs RUNDIR``: the run is exported (fp32 + int8, into a temporary folder) and
scored on its validation split (``--split test``: its test split, which the export never sees), or on
``--data`` when given (its ``val`` split when it defines one, else all of it): accuracy of eager fp32 and ONNX
int8 (binary runs decide at their tuned threshold), their difference, int8-vs-fp32 top-1 agreement, and the
share of leading layers the export kept in fp32 to pass its parity check
(:data:`medlite.deploy.onnx_export.INT8_FP32_LEADING`). Nothing is trained here.

Timings on a shared machine vary; the CPU, thread count and library versions are printed with the tables.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from _runner import batched_proba

from medlite.data.preprocess import PreprocessConfig
from medlite.deploy import OnnxClassifier
from medlite.deploy.onnx_export import export_onnx, export_run
from medlite.deploy.quantize import quantize_int8
from medlite.metrics.profile import cpu_name
from medlite.models import create_model

STUDENTS = ("hybridnet_xr_50", "hybridnet_xr_100", "hybridnet_xr_150", "mobilenet_v2_050", "mobilenet_v2",
            "squeezenet1_1", "efficientnet_lite0", "mobilenetv3_ofa_595")
CALIBRATION_IMAGES = 64


def _latency_ms(fn: Callable[[], Any], warmup: int, iters: int) -> tuple[float, float, float]:
    """p50, p90 and minimum of ``iters`` timed calls, in ms (the minimum shows the uncontended cost)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    q = statistics.quantiles(times, n=10)
    return statistics.median(times), q[8], min(times)


def _throughput(fn: Callable[[], Any], batch: int, iters: int) -> float:
    for _ in range(2):
        fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return batch * iters / (time.perf_counter() - start)


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _calibration(data: str | None, size: int) -> np.ndarray:
    if data is None:
        return np.random.default_rng(0).integers(0, 256, (CALIBRATION_IMAGES, size, size), dtype=np.uint8)
    from medlite.data.cache import build_cache
    from medlite.data.sources import open_source

    cached = build_cache(open_source(data), PreprocessConfig(size=size), progress=False)
    idx = np.linspace(0, len(cached) - 1, min(CALIBRATION_IMAGES, len(cached))).round().astype(int)
    return np.ascontiguousarray(cached.images[idx])


def bench_model(name: str, size: int, threads: int, warmup: int, iters: int, calib: np.ndarray,
                workdir: Path, weight_type: str = "uint8", fp32_leading: float = 0.0) -> dict[str, Any]:
    """Latency p50/p90 (ms, batch 1) and throughput (images/s, batch 32) of one model in three runtimes."""
    torch.set_num_threads(threads)
    model = create_model(name, num_classes=3, in_chans=1).eval()
    # A complete contract (three placeholder classes), so that `predict` can load the file (start-up test).
    contract = {"model": name, "classes": ["class0", "class1", "class2"], "num_classes": 3, "in_chans": 1,
                "input_size": size, "mean": model.cfg.mean, "std": model.cfg.std, "input_name": "input",
                "output": "logits", "preprocess": PreprocessConfig(size=size).model_dump(mode="json")}
    fp32, int8 = workdir / f"{name}.onnx", workdir / f"{name}.int8.onnx"
    export_onnx(model, fp32, input_size=size, in_chans=1, metadata=contract)
    quantize_int8(fp32, int8, calib, contract, weight_type=weight_type, fp32_leading=fp32_leading)
    x1 = torch.randn(1, 1, size, size)
    x32 = torch.randn(32, 1, size, size)
    row: dict[str, Any] = {"model": name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    eager = model.to(memory_format=torch.channels_last)
    e1, e32 = x1.to(memory_format=torch.channels_last), x32.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        row["eager"] = (*_latency_ms(lambda: eager(e1), warmup, iters),
                        _throughput(lambda: eager(e32), 32, max(3, iters // 10)))
    for key, path in (("onnx_fp32", fp32), ("onnx_int8", int8)):
        session = _session(path, threads)
        feed1, feed32 = {"input": x1.numpy()}, {"input": x32.numpy()}
        row[key] = (*_latency_ms(lambda s=session, f=feed1: s.run(None, f), warmup, iters),
                    _throughput(lambda s=session, f=feed32: s.run(None, f), 32, max(3, iters // 10)))
    row["int8_size_ratio"] = fp32.stat().st_size / int8.stat().st_size
    return row


def _eval_images(run: Path, data: str | None, split: str = "val") -> tuple[np.ndarray, np.ndarray, str]:
    from medlite.config import load_config
    from medlite.data.prepared import prepare_data

    cfg = load_config(run / "config.yaml")
    if data is None:
        prepared = prepare_data(cfg, manifest=run / "splits.csv", progress=False)
        idx, where = prepared.indices(split, labelled_only=False), split
    else:
        update = {"source": data, "val_frac": 0.0, "test_frac": 0.0, "fraction": 1.0}
        other = cfg.data.model_copy(update=update)
        prepared = prepare_data(cfg.model_copy(update={"data": other}), progress=False)
        idx, where = prepared.indices("val", labelled_only=False), f"{data} val"
        if len(idx) == 0:
            idx, where = np.arange(len(prepared.splits)), f"{data} (all)"
    return np.ascontiguousarray(prepared.cached.images[idx]), prepared.cached.labels[idx], where


def _decide(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    if threshold is not None and probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).astype(int)
    return probs.argmax(1)


def bench_run(run: Path, data: str | None, workdir: Path, split: str = "val") -> dict[str, Any]:
    """Accuracy of eager fp32 and ONNX int8 on the ``split`` images of a finished run (or of ``data``)."""
    from medlite.deploy import TorchClassifier

    out = workdir / f"export-{run.name}"
    report = export_run(run, int8=True, out=out)
    images, labels, where = _eval_images(run, data, split)
    eager = TorchClassifier(run)
    threshold = eager.contract.get("threshold")
    p_fp32 = batched_proba(eager, images)
    int8 = OnnxClassifier(out / "model.int8.onnx")
    p_int8 = batched_proba(int8, images)
    d_fp32, d_int8 = _decide(p_fp32, threshold), _decide(p_int8, threshold)
    return {"run": run.name, "model": eager.contract["model"], "split": where, "n": len(labels),
            "acc_fp32": float(np.mean(d_fp32 == labels)), "acc_int8": float(np.mean(d_int8 == labels)),
            "agreement": float(np.mean(d_fp32 == d_int8)),
            "max_prob_diff": float(np.abs(p_fp32 - p_int8).max()),
            "fp32_leading": report["int8"]["fp32_leading"]}


def _startup_s(onnx_path: Path, size: int) -> float:
    """Wall time of a fresh process that imports medlite.deploy and predicts one PNG with ``onnx_path``."""
    import subprocess
    import sys

    import cv2

    png = onnx_path.with_suffix(".png")
    cv2.imwrite(str(png), np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8))
    code = "from medlite.deploy import predict; import sys; predict(sys.argv[1], [sys.argv[2]])"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(onnx_path), str(png)], check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(STUDENTS),
                        help="registered model names (none: skip the latency table)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default=None, help="source for int8 calibration / accuracy (optional)")
    parser.add_argument("--runs", nargs="*", type=Path, default=[],
                        help="finished run directories (accuracy)")
    parser.add_argument("--int8-fp32-leading", type=float, default=0.0,
                        help="latency table: share of leading layers kept fp32 in the int8 model (0, 0.25, 0.5)")
    parser.add_argument("--split", choices=["val", "test"], default="val",
                        help="the runs' split to score int8 on (test: images the export's parity check never saw)")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--int8-weights", choices=["uint8", "int8"], default="uint8",
                        help="int8 weight type of the latency table (uint8 = medlite's export default)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="medlite-deploy-bench-") as tmp:
        workdir = Path(tmp)
        calib = _calibration(args.data, args.img_size)
        print(f"CPU: {cpu_name()}; threads {args.threads}; {args.img_size} px; torch {torch.__version__}; "
              f"onnxruntime {ort.__version__}; load average at start {os.getloadavg()[0]:.1f}\n")
        if args.models:
            print(f"batch-1 latency in ms as p50 / p90 (min); throughput at batch 32 in images/s; int8 weights "
                  f"{args.int8_weights}, leading layers in fp32 {args.int8_fp32_leading:.0%}\n")
            print("| model | params (M) | eager fp32 | ONNX fp32 | ONNX int8 | b32 eager / fp32 / int8 "
                  "| int8 size |")
            print("| --- | --- | --- | --- | --- | --- | --- |")
        for name in args.models:
            r = bench_model(name, args.img_size, args.threads, args.warmup, args.iters, calib, workdir,
                            args.int8_weights, args.int8_fp32_leading)
            cells = [f"{v[0]:.1f} / {v[1]:.1f} ({v[2]:.1f})"
                     for v in (r["eager"], r["onnx_fp32"], r["onnx_int8"])]
            b32 = " / ".join(f"{r[k][3]:.0f}" for k in ("eager", "onnx_fp32", "onnx_int8"))
            print(f"| {name} | {r['params_m']:.2f} | {' | '.join(cells)} | {b32} | "
                  f"1/{r['int8_size_ratio']:.1f} |", flush=True)
        if args.models:
            first = workdir / f"{args.models[0]}.onnx"
            print(f"\nstart-up of `predict` with {first.name} on one image (fresh process, no torch): "
                  f"{_startup_s(first, args.img_size):.2f} s")
        if args.runs:
            print("\n| run | model | images | acc eager fp32 | acc ONNX int8 | change | int8 agreement "
                  "| max prob diff | leading layers fp32 |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            for run in args.runs:
                r = bench_run(run, args.data, workdir, args.split)
                print(f"| {r['run']} | {r['model']} | {r['n']} ({r['split']}) | {r['acc_fp32']:.4f} | "
                      f"{r['acc_int8']:.4f} | {r['acc_int8'] - r['acc_fp32']:+.4f} | {r['agreement']:.4f} | "
                      f"{r['max_prob_diff']:.4f} | {r['fp32_leading']:.0%} |", flush=True)


if __name__ == "__main__":
    main()
