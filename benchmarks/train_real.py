"""Train zoo models on real chest X-rays and print a Markdown results table.

Examples (the figures in BENCHMARKS.md came from these):

    python benchmarks/train_real.py ../shared/data/pneumoniamnist.npz --models hybridnet_xr_50 hybridnet_xr_100 \
        mobilenet_v2 --img-size 64 --epochs 15 --batch-size 64 --lr 2e-3 --out bench_runs/pmnist
    python benchmarks/train_real.py ../shared/data/pediatric-cxr/train --group-from-filename \
        --shared-split bench_runs/ped-split.csv --models hybridnet_xr_50 hybridnet_xr_100 --img-size 224 \
        --epochs 15 --batch-size 64 --lr 2e-3 --out bench_runs/ped

``--shared-split FILE`` draws one stratified (with ``--group-from-filename``: patient-grouped) split the first
time, saves it as a manifest and trains every model, in this call and later ones, on exactly that split.

Each run is a normal medlite run directory; the table reports its ``metrics.json`` (test split, or the
validation split when ``--test-frac 0``), parameters and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch
import yaml
from _runner import write_split

import medlite
from medlite.metrics.profile import count_parameters


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system, all threads), in seconds."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB): the peak training memory when
    one model is trained per call (later models of one call report the maximum over all so far)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a source: folder, CSV or MedMNIST .npz")
    parser.add_argument("--models", nargs="+", default=["hybridnet_xr_100", "mobilenet_v2"])
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--val-frac", type=float, default=0.1)
    parser.add_argument("--test-frac", type=float, default=0.2)
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--group-from-filename", action="store_true")
    parser.add_argument("--split-from", default=None, help="reuse the split of a run directory or manifest CSV")
    parser.add_argument("--shared-split", type=Path, default=None,
                        help="manifest CSV of one split for every run: drawn and written if it does not exist")
    parser.add_argument("--patience", type=int, default=0, help="early-stopping patience (0 = off)")
    parser.add_argument("--paradigm", default="supervised", help="supervised, simclr-pw, kd, ... (run name suffix)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more run settings, YAML values (e.g. pretrain_epochs=20 teacher=[runs/big])")
    parser.add_argument("--out", type=Path, default=Path("bench_runs"))
    args = parser.parse_args()
    extra = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        extra[key] = yaml.safe_load(value)

    if args.split_from and args.shared_split:
        parser.error("--split-from and --shared-split both fix the split; give one")
    split_from = args.split_from
    if args.shared_split is not None:
        split_from = write_split(args.data, args.shared_split, seed=args.seed, val_frac=args.val_frac,
                                 test_frac=args.test_frac, group_from_filename=args.group_from_filename,
                                 size=args.img_size)
    rows = []
    for name in args.models:
        suffix = "" if args.paradigm == "supervised" else f"-{args.paradigm}"
        run = args.out / f"{name}{suffix}-{args.img_size}px-s{args.seed}"
        started = time.perf_counter()
        cpu_started = _cpu_seconds()
        result = medlite.train(
            out=run, source=args.data, model=name, img_size=args.img_size, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, val_frac=args.val_frac, test_frac=args.test_frac,
            fraction=args.fraction, seed=args.seed, group_from_filename=args.group_from_filename,
            split_from=split_from,
            early_stopping_patience=args.patience, paradigm=args.paradigm, progress=False, **extra,
        )
        wall = time.perf_counter() - started
        cpu = _cpu_seconds() - cpu_started
        m = result.metrics
        info = json.loads((run / "run.json").read_text())
        params = count_parameters(medlite.create_model(name, num_classes=info["num_classes"], in_chans=1))
        per_class = " / ".join(f"{c} {v['recall']:.3f}" for c, v in m["per_class"].items())
        auc = ("n/a (a class is absent from the test labels)" if m["auc_macro"] is None else
               f"{m['auc_macro']:.3f} [{m['ci95']['auc_macro'][0]:.3f}, {m['ci95']['auc_macro'][1]:.3f}]")
        rows.append(
            f"| {name}{suffix} | {params:,} | {args.img_size} | {result.epochs_run} | {m['accuracy']:.3f} "
            f"[{m['ci95']['accuracy'][0]:.3f}, {m['ci95']['accuracy'][1]:.3f}] | {auc} | "
            f"{m['balanced_accuracy']:.3f} | "
            f"{per_class} | {m['n']} | {wall / 60:.1f} | {cpu / 60:.1f} | {_peak_rss_mb():.0f} |"
        )
        print(rows[-1], flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | params | px | epochs | accuracy [95% CI] | macro AUC [95% CI] | balanced acc | "
          "class-wise accuracy (recall) | n | wall (min) | CPU (min) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
