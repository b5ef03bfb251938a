"""Low-label learning on real data: random init vs weight selection vs dual-model self-KD vs SimCLR-PW vs ProtoNets.

Usage (the figures in BENCHMARKS.md came from this)::

    python benchmarks/low_label.py --data ../shared/data/pneumoniamnist.npz \\
        --data ../shared/data/pediatric-cxr/train --img-size 64 --out bench-low-label --workers 2 --threads 1

For every ``--data`` source, one fixed split (MedMNIST: official; folders: patient-grouped 70/10/20 from the
Kermany file names), and for every labelled fraction (``--fractions``, default 1 %, 5 %, 10 %) and seed
(``--seeds``, default 0 1 2; the seed draws the nested, stratified labelled subset and the initialisation):

* ``random``: ``--student`` (hybridnet_xr_50) supervised from a random initialisation;
* ``weight selection``: the same, initialised by uniform weight selection from the teacher;
* ``dual-skd``: dual-model weight selection + self-KD from the teacher (EMA auxiliary student, alpha 0.5, T 4);
* ``SimCLR-PW``: fine-tuned from a SimCLR encoder of the student pre-trained on all training images (labels
  ignored; one pre-training per source, seed 0, shared by every fraction and seed);
* ``ProtoNet``: ``protonet`` with each ``--proto-encoders`` encoder (all classes per episode, 5-shot, 5 queries,
  20 episodes per epoch, Adam 1e-3 halved every 10 epochs, 128-d embedding; full test-set classification);
* ``CE + prototypes``: the ``random`` runs' encoders as nearest-prototype classifiers (no extra training).

The teacher is ``--teacher`` (hybridnet_xr_150) trained supervised on 100 % of the training split (seed 0).
Every run is a fresh process writing a run directory under ``--out``; finished runs are reused. Prints, per
source, mean ± sd over the seeds of test accuracy and macro AUC.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from _runner import Job, machine_line, run_queue, write_split
from paradigms import dataset_name

from medlite.metrics.auc import auc_summary

METHODS = ("random", "weight selection", "dual-skd", "SimCLR-PW")


def jobs_for(data: str, args: argparse.Namespace) -> list[Job]:
    name = dataset_name(data)
    root = args.out / name
    grouped = Path(data).is_dir()
    split = write_split(data, root / "split.csv", val_frac=0.1, test_frac=0.2, group_from_filename=grouped)
    common: dict[str, Any] = {"source": data, "size": args.img_size, "progress": False, "split_from": str(split),
                              "group_from_filename": grouped, "early_stopping_patience": 0}
    supervised = {**common, "model": args.student, "epochs": args.epochs, "batch_size": args.batch_size,
                  "lr": args.lr}
    teacher, encoder = root / f"teacher-{args.teacher}", root / f"{args.student}-simclr"
    jobs = [
        Job(f"{name}/teacher", {**supervised, "model": args.teacher, "epochs": args.teacher_epochs, "batch_size": 64,
                                "seed": 0, "out": str(teacher)}, meta={"data": name, "method": "teacher"}),
        Job(f"{name}/simclr", {**supervised, "paradigm": "simclr", "epochs": args.pretrain_epochs, "batch_size": 64,
                               "seed": 0, "out": str(encoder)}, meta={"data": name, "method": "simclr"}),
    ]
    for fraction in args.fractions:
        for seed in args.seeds:
            tag = f"{fraction:g}-s{seed}"
            meta = {"data": name, "fraction": fraction, "seed": seed}
            run = {**supervised, "fraction": fraction, "seed": seed}
            jobs += [
                Job(f"{name}/{tag}/random", {**run, "out": str(root / f"random-{tag}")},
                    meta={**meta, "method": "random"}),
                Job(f"{name}/{tag}/ws", {**run, "init_select": str(teacher), "out": str(root / f"ws-{tag}")},
                    after=[f"{name}/teacher"], meta={**meta, "method": "weight selection"}),
                Job(f"{name}/{tag}/dskd", {**run, "paradigm": "dual-skd", "teacher": [str(teacher)],
                                           "out": str(root / f"dskd-{tag}")},
                    after=[f"{name}/teacher"], meta={**meta, "method": "dual-skd"}),
                Job(f"{name}/{tag}/pw", {**run, "init": str(encoder), "out": str(root / f"pw-{tag}")},
                    after=[f"{name}/simclr"], meta={**meta, "method": "SimCLR-PW"}),
            ]
            for encoder_name in args.proto_encoders:
                jobs.append(Job(
                    f"{name}/{tag}/proto-{encoder_name}",
                    {**common, "model": encoder_name, "paradigm": "protonet", "fraction": fraction, "seed": seed,
                     "epochs": args.proto_epochs, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
                     "warmup_epochs": 0.0, "schedule": "step", "lr_step_epochs": 10, "k_shot": args.k_shot,
                     "q_query": 5, "episodes_per_epoch": 20, "eval_episodes": 600,
                     "out": str(root / f"proto-{encoder_name}-{tag}")},
                    meta={**meta, "method": f"ProtoNet {encoder_name}"}))
    return jobs


def prototype_baselines(jobs: list[Job], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """``CE + prototypes`` of every finished ``random`` run (cached in its ``eval-prototypes/``)."""
    from medlite.workflows.evaluate import evaluate_with_prototypes

    rows = {}
    for job in jobs:
        if job.meta.get("method") != "random" or not (Path(job.spec["out"]) / "metrics.json").is_file():
            continue
        target = Path(job.spec["out"]) / "eval-prototypes"
        if (target / "metrics.json").is_file():
            metrics = json.loads((target / "metrics.json").read_text())
        else:
            metrics = evaluate_with_prototypes(job.spec["out"], k_shot=args.k_shot, q_query=5, episodes=600)["metrics"]
        rows[job.name.replace("/random", "/ce-proto")] = {"metrics": metrics}
    return rows


def _cell(values: list[float]) -> str:
    if not values:
        return "—"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def format_tables(results: dict[str, dict[str, Any]], jobs: list[Job], args: argparse.Namespace) -> str:
    methods = [*METHODS, *(f"ProtoNet {e}" for e in args.proto_encoders), "CE + prototypes"]
    cells: dict[tuple[str, str, float], dict[str, list[float]]] = {}
    for job in jobs:
        meta = job.meta
        if "fraction" not in meta:
            continue
        entries = [(job.name, meta["method"])]
        if meta["method"] == "random":
            entries.append((job.name.replace("/random", "/ce-proto"), "CE + prototypes"))
        for key, method in entries:
            if key in results:
                m = results[key]["metrics"]
                slot = cells.setdefault((meta["data"], method, meta["fraction"]), {"acc": [], "auc": []})
                slot["acc"].append(m["accuracy"])
                if m["auc_macro"] is not None:  # null when a class is absent from the test labels
                    slot["auc"].append(m["auc_macro"])
    out = []
    for data in dict.fromkeys(j.meta["data"] for j in jobs):
        teacher = results.get(f"{data}/teacher")
        caption = (f"teacher {args.teacher} on 100 %: accuracy {teacher['metrics']['accuracy']:.3f}, "
                   f"{auc_summary(teacher['metrics'])}" if teacher else "teacher missing")
        out.append(f"\n**{data}** ({args.img_size} px; {caption}); accuracy / macro AUC, mean ± sd over seeds "
                   f"{', '.join(map(str, args.seeds))}\n")
        header = "| method | " + " | ".join(f"{f:.0%} labels" for f in args.fractions) + " |"
        out += [header, "|---|" + "---|" * len(args.fractions)]
        for method in methods:
            row = [f"{_cell(cells.get((data, method, f), {}).get('acc', []))} / "
                   f"{_cell(cells.get((data, method, f), {}).get('auc', []))}" for f in args.fractions]
            out.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", required=True, help="a source (repeat for several)")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--student", default="hybridnet_xr_50")
    parser.add_argument("--teacher", default="hybridnet_xr_150")
    parser.add_argument("--proto-encoders", nargs="+", default=["mobilenet_v2", "squeezenet1_1", "efficientnet_lite0"])
    parser.add_argument("--k-shot", type=int, default=5, help="ProtoNet support images per class")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--proto-epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench-low-label"))
    args = parser.parse_args(argv)
    jobs = [job for data in args.data for job in jobs_for(data, args)]
    results = run_queue(jobs, workers=args.workers, threads=args.threads)
    results.update(prototype_baselines(jobs, args))
    print(f"\n{machine_line(args.threads, args.workers)}")
    print(format_tables(results, jobs, args))


if __name__ == "__main__":
    main()
