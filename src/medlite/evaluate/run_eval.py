"""Evaluate a run directory: test metrics, plots and the model card.

``finish_run`` closes a training run (best weights, history, metrics, plots, card); ``evaluate_run`` re-scores
a finished run, on its own split or on another source with the same class names (cross-dataset).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlite.config import RunConfig, load_config
from medlite.errors import MedliteError
from medlite.utils import rundir

RUN_INFO = "run.json"


def save_run_info(out: Path, cfg: RunConfig, model: nn.Module, classes: list[str]) -> None:
    """The model's contract: classes, architecture and the preprocessing every later step must reuse."""
    rundir.write_json(
        out / RUN_INFO,
        {
            "model": cfg.train.model,
            "paradigm": cfg.train.paradigm,
            "classes": classes,
            "num_classes": len(classes),
            "in_chans": cfg.preprocess.channels,
            "input_size": cfg.preprocess.size,
            "mean": model.cfg.mean,
            "std": model.cfg.std,
            "preprocess": cfg.preprocess.model_dump(mode="json"),
            "cam_layer": model.cfg.cam_layer,
        },
    )


def load_run_model(run_dir: str | Path) -> tuple[nn.Module, RunConfig, dict[str, Any]]:
    """The best model of a finished run (eval mode), its config and ``run.json``."""
    from medlite.models import create_model
    from medlite.models.adapt import load_weights

    run_dir = rundir.require_run_dir(run_dir)
    weights = run_dir / rundir.WEIGHTS
    if not weights.is_file():
        raise MedliteError(f"{run_dir}: no {rundir.WEIGHTS} (the run has not finished; resume it first)")
    cfg = load_config(run_dir / rundir.CONFIG)
    info = rundir.read_json(run_dir / RUN_INFO)
    model = create_model(info["model"], num_classes=info["num_classes"], in_chans=info["in_chans"])
    load_weights(model, weights)
    return model.eval(), cfg, info


def write_history(log_dir: Path, out: Path) -> list[dict[str, str]]:
    """Collapse Lightning's step-level ``metrics*.csv`` into one row per epoch in ``history.csv``.

    A resumed run has one file per session (``metrics.before-resume-K.csv`` then ``metrics.csv``); later files
    win for an epoch logged twice.
    """
    sources = sorted(log_dir.glob("metrics.before-resume-*.csv"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    sources += [log_dir / "metrics.csv"] if (log_dir / "metrics.csv").is_file() else []
    if not sources:
        return []
    by_epoch: dict[int, dict[str, str]] = {}
    for source in sources:
        with source.open() as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            if not row.get("epoch"):
                continue
            merged = by_epoch.setdefault(int(row["epoch"]), {"epoch": row["epoch"]})
            for key, value in row.items():
                if value and key not in ("step",) and not key.endswith("_step"):
                    merged[key.removesuffix("_epoch")] = value
    rows = [by_epoch[e] for e in sorted(by_epoch)]
    fields = ["epoch"] + sorted({k for r in rows for k in r} - {"epoch"})
    with rundir.atomic_write(out / rundir.HISTORY) as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def read_history(run_dir: Path) -> list[dict[str, str]]:
    """Rows of ``history.csv`` (one per epoch), or ``[]`` when the run has none."""
    path = Path(run_dir) / rundir.HISTORY
    if not path.is_file():
        return []
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _score(model: nn.Module, data: Any, split: str, in_chans: int) -> tuple[np.ndarray, np.ndarray]:
    from medlite.evaluate.inference import predict_proba

    idx = data.indices(split, labelled_only=False)
    images = data.cached.images[idx] if len(idx) else np.zeros((0, 1, 1), np.uint8)
    return predict_proba(model, images, in_chans=in_chans), data.cached.labels[idx]


def evaluate_prepared(
    model: nn.Module, data: Any, split: str, in_chans: int, out: Path, plots: bool = True
) -> dict[str, Any]:
    """Metrics of ``model`` on one split of prepared data, Youden threshold tuned on its validation split."""
    from medlite.evaluate.metrics import compute_metrics
    from medlite.evaluate.plots import plot_confusion, plot_roc

    probs, targets = _score(model, data, split, in_chans)
    if len(targets) == 0:
        raise MedliteError(f"the {split!r} split is empty; choose --split train/val/test with images in it")
    val_probs, val_targets = (None, None)
    if split != "val" and len(data.indices("val", labelled_only=False)):
        val_probs, val_targets = _score(model, data, "val", in_chans)
    metrics = compute_metrics(probs, targets, data.classes, val_probs=val_probs, val_targets=val_targets)
    if plots:
        plot_roc(probs, targets, data.classes, out / rundir.PLOTS / f"roc_{split}.png")
        plot_confusion(
            np.asarray(metrics["confusion_matrix"]),
            data.classes,
            out / rundir.PLOTS / f"confusion_{split}.png",
        )
    return metrics


def finish_run(out: Path, cfg: RunConfig, model: nn.Module, data: Any, history_dir: Path) -> dict[str, Any]:
    """Write best weights, history, test metrics, plots and the model card of a finished training run."""
    from medlite.evaluate.model_card import write_model_card
    from medlite.evaluate.plots import plot_history
    from medlite.models.adapt import save_weights

    save_weights(model, out / rundir.WEIGHTS)
    save_run_info(out, cfg, model, data.classes)
    history = write_history(history_dir, out)
    if history:
        plot_history(history, out / rundir.PLOTS / "learning_curves.png")
    split = "test" if len(data.indices("test", labelled_only=False)) else "val"
    metrics = evaluate_prepared(model.eval(), data, split, cfg.preprocess.channels, out)
    rundir.write_json(out / rundir.METRICS, metrics)
    write_model_card(out, cfg, data, metrics, split, n_params=sum(p.numel() for p in model.parameters()))
    best = out / "best.ckpt"
    if best.exists():
        best.unlink()  # model.safetensors now holds these weights; last.ckpt stays for --resume
    return metrics


def evaluate_run(
    run_dir: str | Path, data: str | None = None, split: str = "test", out: str | Path | None = None
) -> dict[str, Any]:
    """Re-evaluate a finished run and write ``metrics.json`` (into ``out``, default the run directory).

    Args:
        run_dir: a finished run directory.
        data: another source with the same class names (cross-dataset evaluation); default the run's own data
            and split manifest. Its images get the run's preprocessing.
        split: which split to score; for a source without splits, all of its images are scored.
        out: where to write ``metrics.json`` and plots; defaults to ``run_dir`` (own data) or
            ``run_dir/eval-<name>`` (other data).
    """
    from medlite.training import PreparedData, prepare_data

    model, cfg, info = load_run_model(run_dir)
    run_dir = Path(run_dir)
    if data is None:
        prepared = prepare_data(cfg, manifest=run_dir / rundir.SPLITS, progress=False)
        target = Path(out) if out else run_dir
    else:
        # The other source is scored whole (or by its own split); no carving of val/test out of it.
        other_data = cfg.data.model_copy(
            update={"source": data, "val_frac": 0.0, "test_frac": 0.0, "fraction": 1.0}
        )
        prepared = prepare_data(cfg.model_copy(update={"data": other_data}), progress=False)
        if prepared.classes != info["classes"]:
            raise MedliteError(f"{data}: classes {prepared.classes} differ from the run's {info['classes']}")
        if not np.any(prepared.splits == split):
            prepared = PreparedData(
                prepared.source,
                prepared.cached,
                np.full(len(prepared.splits), split),
                prepared.in_fraction,
                prepared.classes,
            )
        target = Path(out) if out else run_dir / f"eval-{Path(data).stem}"
    with torch.inference_mode():
        metrics = evaluate_prepared(model, prepared, split, info["in_chans"], target)
    rundir.write_json(target / rundir.METRICS, metrics)
    return metrics
