"""Calibration and the OOD gate of runs trained on real X-rays (issue 16 item 5).

For each run directory (calibrated first with :func:`medlite.api.calibrate` when it was trained before medlite
had calibration):

* **calibration in distribution**: ECE (15 bins) / Brier / NLL on its own test split, before and after the
  run's temperature, from ``metrics.json``;
* **calibration on a shifted set** (``--shifted SOURCE`` with ``--shifted-classes`` mapping that source's class
  names onto the run's, e.g. adult X-rays ``Normal=normal,Non-COVID=pneumonia``): the same figures there, and
  the share of those images the gate flags;
* **the exported gate** (``--onnx``): the run exported (fp32 and int8 ONNX) and scored on its test split by
  ONNX Runtime, against the PyTorch gate: OOD-score differences and agreement of the flags;
* **the gate** (:func:`medlite.api.evaluate_ood`): AUROC and FPR at 95 % TPR against the test split for each
  ``--ood`` source and for scikit-image photographs, rendered text and noise (written as PNGs to
  ``OUT/generated``, with the generators of ``benchmarks/ood_gate.py``), and the false-refusal rate on the
  test split.

Usage::

    python benchmarks/trust_real.py OUT --runs RUN... --ood ADULT_XRAYS... \\
        [--shifted SOURCE --shifted-classes A=a,B=b]

Writes ``OUT/trust_real.json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from ood_gate import _noise, _photos, _text_pages

from medlite import api
from medlite.data.files import walk_images
from medlite.data.prepared import prepare_data, prepare_other_source
from medlite.deploy.classifiers import load_classifier
from medlite.deploy.prediction import predict_arrays
from medlite.rundir import layout
from medlite.rundir.store import load_run_model
from medlite.utils import atomic
from medlite.workflows.trust import features_logits, run_calibrator, run_gate, trust_report


def _write_generated(out: Path, seed: int = 0) -> list[Path]:
    """scikit-image photographs (and crops), rendered text pages and noise, as 8-bit PNG folders."""
    rng = np.random.default_rng(seed)
    folders = []
    for name, images in (("skimage-photos", _photos(rng)), ("text", _text_pages(rng, 200)),
                         ("noise", _noise(rng, 200))):
        folder = out / name
        if not folder.is_dir():
            folder.mkdir(parents=True)
            for i, img in enumerate(images):
                cv2.imwrite(str(folder / f"{i:04d}.png"), np.round(img * 255).astype(np.uint8))
        folders.append(folder)
    return folders


def _shifted_manifest(source: Path, mapping: dict[str, str], out: Path) -> Path:
    """A CSV manifest of ``source``'s class folders named in ``mapping``, labelled with the run's class names."""
    rows = [(str(path), run_class) for folder, run_class in mapping.items()
            for path in walk_images(source / folder)]
    manifest = out / f"shifted-{source.name}.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return manifest


def _shifted(run: Path, manifest: Path) -> dict[str, Any]:
    model, cfg, info = load_run_model(run)
    data = prepare_other_source(cfg, manifest, info["classes"], "test")
    idx = data.indices("test", labelled_only=False)
    with torch.inference_mode():
        feats, logits = features_logits(model, data.cached.images[idx], model.cfg.mean, model.cfg.std,
                                        info["in_chans"])
    labels = np.asarray(data.cached.labels[idx])
    report = trust_report(run_calibrator(info), run_gate(run, info), feats, logits, labels, split="shifted")
    accuracy = float((run_calibrator(info).apply(logits).argmax(1) == labels).mean())
    return {"n": int(labels.size), "accuracy": accuracy, **report}


def _exported_gate(run: Path) -> dict[str, Any]:
    """fp32 and int8 ONNX against the run directory's own (PyTorch) gate, on the run's test split."""
    export = run / layout.EXPORT_DIR
    if not (export / layout.INT8_FILE).is_file():
        api.export(run, int8=True)
    _, cfg, _ = load_run_model(run)
    data = prepare_data(cfg, manifest=run / layout.SPLITS, progress=False)
    images = np.asarray(data.cached.images[data.indices(data.eval_split, labelled_only=False)])
    models = {"torch": run, "onnx": export / layout.ONNX_FILE, "int8": export / layout.INT8_FILE}
    rows = {name: predict_arrays(load_classifier(path), images) for name, path in models.items()}
    scores = {name: np.array([r["ood_score"] for r in rs], dtype=float) for name, rs in rows.items()}
    flagged = {name: np.array([str(r["status"]).startswith("flagged") for r in rs]) for name, rs in rows.items()}
    result: dict[str, Any] = {"n": len(images)}
    for name in ("onnx", "int8"):
        rel = np.abs(scores[name] - scores["torch"]) / np.maximum(scores["torch"], 1e-12)
        result[name] = {"flag_agreement": float((flagged[name] == flagged["torch"]).mean()),
                        "flagged": float(flagged[name].mean()), "score_rel_diff_median": float(np.median(rel)),
                        "score_rel_diff_max": float(rel.max())}
    result["torch_flagged"] = float(flagged["torch"].mean())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--ood", nargs="*", default=[], help="sources of other X-rays (folders of images)")
    parser.add_argument("--shifted", type=Path, help="a class-folder source of the same findings elsewhere")
    parser.add_argument("--shifted-classes", default="", help="SOURCE_CLASS=RUN_CLASS,... for --shifted")
    parser.add_argument("--onnx", action="store_true", help="also export and compare the ONNX / int8 gate")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    generated = _write_generated(args.out / "generated")
    mapping = dict(pair.split("=", 1) for pair in args.shifted_classes.split(",") if pair)
    manifest = _shifted_manifest(args.shifted, mapping, args.out) if args.shifted else None
    results_path = args.out / "trust_real.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for run in args.runs:
        started = time.perf_counter()
        info = json.loads((run / layout.RUN_INFO).read_text())
        if "calibration" not in info:
            api.calibrate(run)
        metrics = json.loads((run / layout.METRICS).read_text())
        entry: dict[str, Any] = {"model": info["model"], "classes": info["classes"], "size": info["input_size"],
                                 "calibration": metrics["calibration"], "test_accuracy": metrics["accuracy"]}
        ood = api.evaluate_ood(run, [*args.ood, *generated], out=args.out / f"eval-ood-{run.name}")
        entry["ood"] = {k: v for k, v in ood.items() if k != "out"}
        if manifest is not None:
            entry["shifted"] = {"source": str(args.shifted), "classes": mapping, **_shifted(run, manifest)}
        if args.onnx:
            entry["exported_gate"] = _exported_gate(run)
        entry["seconds"] = round(time.perf_counter() - started, 1)
        results[str(run)] = entry
        atomic.write_json(results_path, results)
        print(f"{run}: {entry['seconds']} s", flush=True)
    _print_tables(results)


def _cal(summary: dict[str, float]) -> str:
    return f"{summary['ece']:.3f} / {summary['brier']:.3f} / {summary['nll']:.3f}"


def _print_tables(results: dict[str, Any]) -> None:
    print("\n| run | T | test: before | test: after | shifted: before | shifted: after | shifted flagged |")
    print("|---|---|---|---|---|---|---|")
    for run, e in results.items():
        cal, sh = e["calibration"], e.get("shifted")
        shifted = (f"{_cal(sh['calibration']['before'])} | {_cal(sh['calibration']['after'])} | "
                   f"{sh['ood']['flagged']:.1%} (n = {sh['n']})") if sh else "| |"
        print(f"| {Path(run).name} | {cal['temperature']:.3f} | {_cal(cal['before'])} | {_cal(cal['after'])} | "
              f"{shifted} |")
    names = list(dict.fromkeys(n for e in results.values() for n in e["ood"]["ood"]))
    print("\n| run | test flagged | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for run, e in results.items():
        o = e["ood"]
        cells = [f"{o['ood'][n]['auroc']:.3f} / {o['ood'][n]['fpr_at_95_tpr']:.3f} / {o['ood'][n]['flagged']:.0%}"
                 if n in o["ood"] else "" for n in names]
        print(f"| {Path(run).name} | {o['in_distribution']['flagged']:.1%} (n = {o['in_distribution']['n']}) | "
              + " | ".join(cells) + " |")
    exported = {run: e["exported_gate"] for run, e in results.items() if "exported_gate" in e}
    if exported:
        print("\n| run | n | flagged: torch / onnx / int8 | flag agreement onnx / int8 | "
              "median (max) relative score difference onnx / int8 |")
        print("|---|---|---|---|---|")
        for run, g in exported.items():
            print(f"| {Path(run).name} | {g['n']} | {g['torch_flagged']:.1%} / {g['onnx']['flagged']:.1%} / "
                  f"{g['int8']['flagged']:.1%} | {g['onnx']['flag_agreement']:.3f} / "
                  f"{g['int8']['flag_agreement']:.3f} | "
                  f"{g['onnx']['score_rel_diff_median']:.1e} ({g['onnx']['score_rel_diff_max']:.1e}) / "
                  f"{g['int8']['score_rel_diff_median']:.1e} ({g['int8']['score_rel_diff_max']:.1e}) |")


if __name__ == "__main__":
    main()
