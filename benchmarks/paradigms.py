"""HybridNet-XR training paradigms on real data: supervised vs SimCLR pre-warming (-PW) vs distillation (-KD).

Usage::

    python benchmarks/paradigms.py --data ../shared/data/pediatric-cxr/train \\
        --data ../shared/data/pneumoniamnist.npz --fractions 0.1 1.0 --img-size 64 --epochs 15 \\
        --pretrain-epochs 30 --teacher-model resnet18 --out bench-paradigms

For every ``--data`` source and every labelled fraction it trains

* ``hybridnet_xr_100`` supervised, ``-PW`` (``simclr-pw``: SimCLR on all training images, then fine-tuning on
  the labelled fraction) and ``-KD`` (``kd``, alpha 0.5, T 4);
* ``mobilenet_v2`` supervised;

and, once per source, the KD teacher: ``--teacher-model`` trained supervised on 100 % of the labels.
Folder and CSV sources get patient ids from the Kermany file names (``personNNN_...``), so their validation
and test splits are patient-grouped; MedMNIST npz files keep their official splits. Each run is a separate
process (so its peak resident memory, ``ru_maxrss``, is its own) writing a normal run directory under
``--out``. Prints one markdown table: test accuracy, macro AUC, class-wise accuracy (per-class recall),
wall time (s) and peak memory (MB).

``--subset F`` keeps a stratified share F of every split (of patients, for grouped sources) for quick runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

STUDENT = "hybridnet_xr_100"
BASELINE = "mobilenet_v2"


def _is_npz(data: str) -> bool:
    return data.lower().endswith(".npz")


def subset_source(data: str, share: float, out_dir: Path, seed: int = 0) -> str:
    """A copy of ``data`` keeping ``share`` of each split (npz) or of the patients (folder/CSV)."""
    from medlite.data.sources import open_source

    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    if _is_npz(data):
        arrays = dict(np.load(data))
        kept: dict[str, np.ndarray] = {}
        for split in ("train", "val", "test"):
            labels = arrays[f"{split}_labels"].reshape(len(arrays[f"{split}_labels"]), -1)[:, 0]
            idx = np.concatenate(
                [
                    rng.permutation(np.flatnonzero(labels == c))[: max(1, round(share * (labels == c).sum()))]
                    for c in np.unique(labels)
                ]
            )
            kept[f"{split}_images"], kept[f"{split}_labels"] = (
                arrays[f"{split}_images"][np.sort(idx)],
                arrays[f"{split}_labels"][np.sort(idx)],
            )
        # Keep the file name: medlite names MedMNIST classes after it (pneumoniamnist -> normal, pneumonia).
        path = out_dir / f"share-{share:g}" / Path(data).name
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **kept)
        return str(path)
    source = open_source(data, group_from_filename=True)
    groups = sorted({r.group for r in source.records})
    chosen = set(rng.permutation(groups)[: max(2, round(share * len(groups)))].tolist())
    path = out_dir / f"{Path(data).name}-{share:g}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient_id"])
        for r in source.records:
            if r.group in chosen:
                writer.writerow([r.item, source.classes[r.label], r.group])
    return str(path)


def _worker(job: dict[str, Any]) -> None:
    """Child process: train one run and print its numbers as the last line of JSON."""
    import torch

    if job["threads"]:
        torch.set_num_threads(int(job["threads"]))
    from medlite.training import train

    result = train(**job["train"])
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    m = result.metrics
    row = {
        "accuracy": m["accuracy"],
        "auc_macro": m["auc_macro"],
        "n": m["n"],
        "class_accuracy": {k: v["recall"] for k, v in m["per_class"].items()},
        "wall_s": result.wall_time_s,
        "epochs": result.epochs_run,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": peak_gpu,
    }
    print(json.dumps(row))


def run(spec: dict[str, Any], threads: int | None) -> dict[str, Any]:
    """Train ``spec`` (keyword arguments of :func:`medlite.training.train`) in a fresh process."""
    out = Path(spec["out"])
    if (out / "metrics.json").is_file() and (out / "bench.json").is_file():
        return json.loads((out / "bench.json").read_text())  # finished earlier: reuse
    job = json.dumps({"threads": threads, "train": spec})
    proc = subprocess.run(
        [sys.executable, __file__, "--_worker", job], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"run {out} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    (out / "bench.json").write_text(json.dumps(row))
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", help="a source (repeat for several); required")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--pretrain-epochs", type=int, default=30, help="SimCLR epochs of the -PW variant")
    parser.add_argument("--teacher-model", default="resnet18", help="the larger zoo model used as KD teacher")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--subset", type=float, default=None, help="keep this share of each source (quick runs)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run")
    parser.add_argument("--out", type=Path, default=Path("bench-paradigms"))
    parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker is not None:
        _worker(json.loads(args._worker))
        return
    if not args.data:
        parser.error("--data is required")

    rows = []
    for data in args.data:
        name = Path(data).stem if _is_npz(data) else Path(data).resolve().parent.name
        source = subset_source(data, args.subset, args.out / "subsets") if args.subset else data
        common = {
            "source": source,
            "size": args.img_size,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "progress": False,
            "group_from_filename": Path(source).is_dir(),
        }
        teacher = args.out / name / f"teacher-{args.teacher_model}"
        variants: list[tuple[str, str, dict[str, Any]]] = []
        for fraction in args.fractions:
            tag = f"{fraction:g}"
            variants += [
                (f"{STUDENT} supervised", tag, {"model": STUDENT}),
                (
                    f"{STUDENT}-PW",
                    tag,
                    {"model": STUDENT, "paradigm": "simclr-pw", "pretrain_epochs": args.pretrain_epochs},
                ),
                (
                    f"{STUDENT}-KD ({args.teacher_model})",
                    tag,
                    {"model": STUDENT, "paradigm": "kd", "teacher": [str(teacher)]},
                ),
                (f"{BASELINE} supervised", tag, {"model": BASELINE}),
            ]
        teacher_row = run(
            {**common, "out": str(teacher), "model": args.teacher_model, "fraction": 1.0}, args.threads
        )
        rows.append((name, "1 (teacher)", f"{args.teacher_model} supervised", teacher_row))
        for label, tag, extra in variants:
            fraction = float(tag)
            out = args.out / name / f"{label.split(' ')[0]}-{extra.get('paradigm', 'supervised')}-{tag}"
            rows.append(
                (
                    name,
                    tag,
                    label,
                    run({**common, **extra, "fraction": fraction, "out": str(out)}, args.threads),
                )
            )
    print(format_table(rows))


def format_table(rows: list[tuple[str, str, str, dict[str, Any]]]) -> str:
    """One markdown table of all runs."""
    lines = [
        "| data | labels | model | accuracy | macro AUC | class-wise accuracy | epochs | wall s | peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for data, fraction, label, r in rows:
        classes = ", ".join(f"{k} {v:.3f}" for k, v in r["class_accuracy"].items())
        memory = f"{r['peak_rss_mb']:.0f}" + (
            f" (GPU {r['peak_gpu_mb']:.0f})" if r.get("peak_gpu_mb") else ""
        )
        auc = "-" if r["auc_macro"] is None else f"{r['auc_macro']:.3f}"
        lines.append(
            f"| {data} | {fraction} | {label} | {r['accuracy']:.3f} | {auc} | {classes} | {r['epochs']} | "
            f"{r['wall_s']:.0f} | {memory} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
