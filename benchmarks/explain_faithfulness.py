"""Where do the saliency maps of medlite models point? Localisation and faithfulness on ChestX6 phantoms.

Usage::

    python benchmarks/explain_faithfulness.py OUT [--size 96] [--epochs 15] [--per-class 80] [--n 200]
        [--pretrain-epochs 20] [--scorecam-max-channels 64] [--faithfulness] [--skip-pw] [--skip-kd]
        [--pediatric DIR] [--docs DIR]

Trains (or reuses, when ``OUT/<label>/model.safetensors`` exists) four runs on procedural ChestX6 phantoms
(seed 0, ``--per-class`` images per class, preprocessed to ``--size`` px):

* ``mobilenet_v2``: supervised;
* ``hybridnet_xr_100``: supervised;
* ``hybridnet_xr_100-PW``: paradigm ``simclr-pw`` (SimCLR pre-training, then supervised fine-tuning);
* ``hybridnet_xr_100-KD``: paradigm ``kd`` with the mobilenet_v2 run as teacher.

All four are then explained on the same held-out phantoms (a separate folder rendered with seed 1, lesion
masks included) with :func:`medlite.explain.evaluate_explanations`: Grad-CAM and Score-CAM, energy in mask
and pointing game on the images with a lesion (with ``--faithfulness`` also deletion / insertion AUC and
ROAD). To bound the CPU time, Score-CAM scores the ``--scorecam-max-channels`` channels of largest spatial
variance per image (default 64 of hybridnet_xr_100's 256 and mobilenet_v2's 1280: "Faster Score-CAM", the
same rule for every model); ``0`` runs the official all-channel method.

Prints a markdown table (mean +- standard error), says whether "PW gives more focused maps than KD" holds
(energy in mask, difference beyond 2 standard errors), writes ``OUT/summary.json`` and a comparison grid of
one phantom. With ``--pediatric DIR`` (a Kermany-style class folder, e.g. ``pediatric-cxr/train``) it also
trains hybridnet_xr_100 on those real X-rays (``--pediatric-epochs`` x ``--pediatric-batches`` batches of
32) and writes a Grad-CAM / Score-CAM / LIME grid of one image. ``--docs DIR`` copies both grids there.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from _runner import train_in_process

from medlite.data.synthetic import write_phantom_dataset
from medlite.explain import evaluate_explanations, explain_images
from medlite.rundir import layout
from medlite.utils import atomic


def _fmt(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    se = (stat["std"] or 0.0) / math.sqrt(stat["n"]) if stat["n"] > 1 else 0.0
    return f"{stat['mean']:.3f} ± {se:.3f}"


def _pw_vs_kd(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    pw, kd = results.get("hybridnet_xr_100-PW"), results.get("hybridnet_xr_100-KD")
    if pw is None or kd is None:
        return ["PW versus KD: not measured (a run is missing)."]
    for method in ("gradcam", "scorecam"):
        a, b = pw["methods"][method]["energy_in_mask"], kd["methods"][method]["energy_in_mask"]
        diff = a["mean"] - b["mean"]
        se = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
        verdict = ("holds" if diff > 2 * se else "does not hold (KD is more focused)" if diff < -2 * se
                   else "is not supported (difference within 2 standard errors)")
        lines.append(f"{method}: energy in mask PW {a['mean']:.3f} vs KD {b['mean']:.3f} "
                     f"(difference {diff:+.3f} ± {se:.3f}): 'PW gives more focused maps than KD' {verdict}.")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for runs, metrics and grids (reused when re-run)")
    parser.add_argument("--size", type=int, default=96, help="model input side in pixels (default 96)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--pretrain-epochs", type=int, default=20, help="SimCLR epochs of the -PW run")
    parser.add_argument("--per-class", type=int, default=80, help="training phantoms per class")
    parser.add_argument("--eval-per-class", type=int, default=40, help="held-out phantoms per class")
    parser.add_argument("--n", type=int, default=200, help="held-out images explained per model")
    parser.add_argument("--scorecam-max-channels", type=int, default=64,
                        help="Score-CAM channels per image, top variance (0 = all, the official method)")
    parser.add_argument("--faithfulness", action="store_true",
                        help="also deletion / insertion AUC and ROAD (about 220 forward passes per image)")
    parser.add_argument("--skip-pw", action="store_true")
    parser.add_argument("--skip-kd", action="store_true")
    parser.add_argument("--pediatric", type=Path, default=None, help="class folder of real pediatric X-rays")
    parser.add_argument("--pediatric-epochs", type=int, default=4)
    parser.add_argument("--pediatric-batches", type=int, default=40, help="training batches per epoch")
    parser.add_argument("--docs", type=Path, default=None, help="copy the example grids into this folder")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)  # split / metric chatter of tiny phantom sets
    args.out.mkdir(parents=True, exist_ok=True)

    common = dict(source="synthetic", synthetic_per_class=args.per_class, synthetic_size=128, size=args.size,
                  epochs=args.epochs, batch_size=32, seed=0)
    runs = {"mobilenet_v2": train_in_process(args.out / "mobilenet_v2", model="mobilenet_v2", **common),
            "hybridnet_xr_100": train_in_process(args.out / "hybridnet_xr_100", model="hybridnet_xr_100", **common)}
    if not args.skip_pw:
        runs["hybridnet_xr_100-PW"] = train_in_process(args.out / "hybridnet_xr_100-PW", model="hybridnet_xr_100",
                                             paradigm="simclr-pw", pretrain_epochs=args.pretrain_epochs,
                                             **common)
    if not args.skip_kd:
        runs["hybridnet_xr_100-KD"] = train_in_process(args.out / "hybridnet_xr_100-KD", model="hybridnet_xr_100",
                                             paradigm="kd", teacher=[str(runs["mobilenet_v2"])], **common)

    held_out = args.out / "phantoms-heldout"
    if not (held_out / "manifest.csv").is_file():
        write_phantom_dataset(held_out, classes="chestx6", per_class=args.eval_per_class, size=128, seed=1)
    results: dict[str, dict[str, Any]] = {}
    for label, run in runs.items():
        cached = args.out / "metrics" / label / "explain_metrics.json"
        if cached.is_file():
            results[label] = json.loads(cached.read_text())
            continue
        started = time.perf_counter()
        groups = ("localisation", "deletion", "road") if args.faithfulness else ("localisation",)
        results[label] = evaluate_explanations(
            run, data=str(held_out), n=args.n, out=cached.parent, methods=("gradcam", "scorecam"),
            batch_size=64, metrics=groups,
            method_options={"scorecam": {"max_channels": args.scorecam_max_channels or None}})
        print(f"explained {label} in {time.perf_counter() - started:.0f} s", flush=True)

    print(f"\nChestX6 phantoms, {args.size} px, {results[next(iter(results))]['n_images']} held-out images "
          f"({results[next(iter(results))]['n_with_mask']} with a lesion mask); mean ± standard error\n")
    print("| model | test acc | method | energy in mask | pointing game | deletion AUC | insertion AUC "
          "| ROAD | s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, metrics in results.items():
        acc = atomic.read_json(runs[label] / layout.METRICS)["accuracy"]
        for method, m in metrics["methods"].items():
            print(f"| {label} | {acc:.3f} | {method} | {_fmt(m.get('energy_in_mask'))} | "
                  f"{_fmt(m.get('pointing_game'))} | {_fmt(m.get('deletion_auc'))} | "
                  f"{_fmt(m.get('insertion_auc'))} | {_fmt(m.get('road_combined'))} | {m['seconds']:.0f} |")
    verdict = _pw_vs_kd(results)
    print("\n" + "\n".join(verdict))

    lesion_image = sorted((held_out / "Tuberculosis").glob("*.png"))[0]
    grid = explain_images(list(runs.values()), [lesion_image], methods=("gradcam", "scorecam"),
                          out=args.out / "grids")[0]["grid"]
    grids = {"explain_grid_phantom.png": Path(grid)}
    if args.pediatric is not None:
        real = train_in_process(args.out / "pediatric-hybridnet_xr_100", model="hybridnet_xr_100",
                      source=str(args.pediatric), size=args.size, epochs=args.pediatric_epochs, batch_size=32,
                      limit_train_batches=args.pediatric_batches, seed=0, group_from_filename=True)
        image = sorted((args.pediatric / "bacterial").glob("*"))[0]
        grid = explain_images(real, [image], methods=("gradcam", "scorecam", "lime"),
                              out=args.out / "grids-real")
        grids["explain_grid_pediatric.png"] = Path(grid[0]["grid"])
    if args.docs is not None:
        args.docs.mkdir(parents=True, exist_ok=True)
        for name, path in grids.items():
            shutil.copyfile(path, args.docs / name)
    atomic.write_json(args.out / "summary.json", {
        "size": args.size, "results": results, "verdict": verdict,
        "grids": {k: str(v) for k, v in grids.items()}})


if __name__ == "__main__":
    main()
