"""HybridNet-XR training paradigms on real data: supervised vs SimCLR pre-warming (-PW) vs distillation (-KD).

Usage (the figures in BENCHMARKS.md came from this)::

    python benchmarks/paradigms.py --data ../shared/data/pediatric-cxr/train --img-size 128 \\
        --data ../shared/data/pneumoniamnist.npz --img-size 64 --teacher-model hybridnet_xr_150 \\
        --out bench-paradigms --workers 2 --threads 1

For every ``--data`` source (each with its own ``--img-size``) and labelled fraction (``--fractions``, default
10 % and 100 %) it trains

* ``hybridnet_xr_100`` supervised, ``-PW`` (fine-tuned from a SimCLR encoder pre-trained on all training images,
  labels ignored, ``--pretrain-epochs``; the pre-training is shared by the fractions) and ``-KD`` (``kd``,
  alpha 0.5, T 4, teacher ``--teacher-model`` trained supervised on 100 % of the labels);
* ``mobilenet_v2`` supervised.

Folder sources get patient ids from the Kermany file names (``personNNN_...``) and one fixed, patient-grouped
70/10/20 split (``--val-frac``/``--test-frac``); MedMNIST npz files keep their official splits. Every run is a
fresh process writing a normal run directory under ``--out`` (its wall time, CPU time and peak resident memory
are its own); finished runs are reused when the script is run again. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from _runner import Job, machine_line, run_queue, write_split

STUDENT = "hybridnet_xr_100"
BASELINE = "mobilenet_v2"


def dataset_name(data: str) -> str:
    path = Path(data)
    return path.stem if path.suffix == ".npz" else path.resolve().parent.name if path.name == "train" else path.name


def jobs_for(data: str, size: int, args: argparse.Namespace) -> list[Job]:
    """The runs of one source: teacher, SimCLR encoder, then four models per fraction."""
    name = dataset_name(data)
    root = args.out / name
    grouped = Path(data).is_dir()
    split = write_split(data, root / "split.csv", val_frac=args.val_frac, test_frac=args.test_frac,
                        group_from_filename=grouped)
    common: dict[str, Any] = {"source": data, "size": size, "epochs": args.epochs, "batch_size": args.batch_size,
                              "lr": args.lr, "seed": 0, "progress": False, "group_from_filename": grouped,
                              "split_from": str(split), "early_stopping_patience": 0}
    teacher, encoder = root / f"teacher-{args.teacher_model}", root / f"{STUDENT}-simclr"
    jobs = [
        Job(f"{name}/teacher", {**common, "model": args.teacher_model, "out": str(teacher)},
            meta={"data": name, "labels": "100 %", "label": f"{args.teacher_model} supervised (KD teacher)"}),
        Job(f"{name}/simclr", {**common, "model": STUDENT, "paradigm": "simclr", "epochs": args.pretrain_epochs,
                               "out": str(encoder)},
            meta={"data": name, "labels": "none (SimCLR)", "label": f"{STUDENT} SimCLR encoder, linear probe"}),
    ]
    for fraction in args.fractions:
        tag = f"{fraction:g}"
        # A labelled fraction gets a smaller batch, so a 10 % run still takes a few hundred optimiser steps.
        base = {**common, "fraction": fraction,
                "batch_size": args.batch_size if fraction >= 1 else args.fraction_batch_size}
        meta = {"data": name, "labels": f"{fraction:.0%}".replace("%", " %")}
        jobs += [
            Job(f"{name}/{tag}/sup", {**base, "model": STUDENT, "out": str(root / f"sup-{tag}")},
                meta={**meta, "label": f"{STUDENT} supervised"}),
            Job(f"{name}/{tag}/pw", {**base, "model": STUDENT, "init": str(encoder), "out": str(root / f"pw-{tag}")},
                after=[f"{name}/simclr"], meta={**meta, "label": f"{STUDENT}-PW (SimCLR, then fine-tuned)"}),
            Job(f"{name}/{tag}/kd", {**base, "model": STUDENT, "paradigm": "kd", "teacher": [str(teacher)],
                                     "out": str(root / f"kd-{tag}")},
                after=[f"{name}/teacher"], meta={**meta, "label": f"{STUDENT}-KD ({args.teacher_model} teacher)"}),
            Job(f"{name}/{tag}/mnv2", {**base, "model": BASELINE, "out": str(root / f"mnv2-{tag}")},
                meta={**meta, "label": f"{BASELINE} supervised"}),
        ]
    return jobs


def format_table(results: dict[str, dict[str, Any]], jobs: list[Job]) -> str:
    """One Markdown row per finished run, in job order."""
    lines = ["| data | labels | model | accuracy [95% CI] | macro AUC | class-wise accuracy | wall (min) | "
             "CPU (min) | peak RSS (MB) |", "|---|---|---|---|---|---|---|---|---|"]
    for job in jobs:
        r = results.get(job.name)
        if r is None:
            continue
        m = r["metrics"]
        classes = ", ".join(f"{k} {v['recall']:.3f}" for k, v in m["per_class"].items())
        lo, hi = m["ci95"]["accuracy"]
        auc = "n/a" if m["auc_macro"] is None else f"{m['auc_macro']:.3f}"  # null: a class absent from the labels
        lines.append(f"| {job.meta['data']} | {job.meta['labels']} | {job.meta['label']} | {m['accuracy']:.3f} "
                     f"[{lo:.3f}, {hi:.3f}] | {auc} | {classes} | {r['wall_s'] / 60:.1f} | "
                     f"{r['cpu_s'] / 60:.1f} | {r['peak_rss_mb']:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", required=True, help="a source (repeat for several)")
    parser.add_argument("--img-size", type=int, action="append", help="input side per --data (default 64)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--pretrain-epochs", type=int, default=30, help="SimCLR epochs of the -PW variant")
    parser.add_argument("--teacher-model", default="resnet18", help="the larger zoo model used as KD teacher")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--fraction-batch-size", type=int, default=16, help="batch size of the runs on a fraction < 1")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--val-frac", type=float, default=0.1)
    parser.add_argument("--test-frac", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", type=Path, default=Path("bench-paradigms"))
    args = parser.parse_args(argv)
    sizes = args.img_size or [64]
    if len(sizes) not in (1, len(args.data)):
        parser.error("give one --img-size, or one per --data")
    sizes = sizes * len(args.data) if len(sizes) == 1 else sizes
    jobs = [job for data, size in zip(args.data, sizes, strict=True) for job in jobs_for(data, size, args)]
    results = run_queue(jobs, workers=args.workers, threads=args.threads)
    print(f"\n{machine_line(args.threads, args.workers)}\n")
    print(format_table(results, jobs))


if __name__ == "__main__":
    main()
