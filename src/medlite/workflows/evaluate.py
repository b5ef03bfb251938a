"""``medlite evaluate``: re-score a finished run on its own split or on another source.

* :func:`evaluate_run`: ``metrics.json`` and plots of a run on its own split manifest, or on another source
  whose classes are matched to the run's by name (cross-dataset evaluation).
* :func:`evaluate`: the same, plus for a ``dg`` run on another source what AdaBN changed there.
* :func:`evaluate_with_prototypes`: the "CE-pretrained encoder + prototypes" few-shot baseline of any run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medlite.data.prepared import prepare_data, prepare_other_source
from medlite.errors import MedliteError
from medlite.metrics.probes import episodes_possible, episodic_accuracy, fit_prototype_classifier
from medlite.metrics.split_eval import evaluate_split
from medlite.models.inputs import embed_images, model_input_fn
from medlite.paradigms.domain_gap import adaptation_summary
from medlite.rundir import layout, store
from medlite.utils import atomic
from medlite.workflows.trust import run_calibrator

_SPLITS = ("train", "val", "test")


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise MedliteError(f"--split must be train, val or test, got {split!r}")


def evaluate_run(
    run_dir: str | Path, data: str | None = None, split: str = "test", out: str | Path | None = None
) -> dict[str, Any]:
    """Re-evaluate a finished run and write ``metrics.json`` (into ``out``, default the run directory).

    Args:
        run_dir: a finished run directory.
        data: another source with the run's class names, in any order (cross-dataset evaluation); default the
            run's own data and split manifest. Its images get the run's preprocessing.
        split: which split to score; for a source without splits, all of its images are scored.
        out: where to write ``metrics.json`` and plots; defaults to ``run_dir`` (own data) or
            ``run_dir/eval-<name>`` (other data).
    """
    _check_split(split)
    model, cfg, info = store.load_run_model(run_dir)
    run_dir = Path(run_dir)
    if data is None:
        prepared = prepare_data(cfg, manifest=run_dir / layout.SPLITS, progress=False)
    else:
        prepared = prepare_other_source(cfg, data, info["classes"], split)
    target = layout.evaluation_dir(run_dir, data, out)
    with torch.inference_mode():
        metrics = evaluate_split(model, prepared, split, info["in_chans"], target / layout.PLOTS,
                                 calibrator=run_calibrator(info))
    if target.resolve() == run_dir.resolve() and (run_dir / layout.METRICS).is_file():
        # The run's own metrics.json also holds what training recorded (calibration, OOD gate, paradigm
        # entries); re-scoring replaces only what it recomputes.
        metrics = {**atomic.read_json(run_dir / layout.METRICS), **metrics}
    atomic.write_json(target / layout.METRICS, metrics)
    return metrics


def evaluate(run_dir: str | Path, data: str | None = None, split: str = "test",
             out: str | Path | None = None) -> dict[str, Any]:
    """:func:`evaluate_run`; for a ``dg`` run on another source ``metrics["adaptation"]`` compares the adapted
    model with the same weights before AdaBN (scored into ``RUNDIR/source_bn/eval-<name>``)."""
    metrics = evaluate_run(run_dir, data=data, split=split, out=out)
    source_bn = Path(run_dir) / layout.SOURCE_BN_DIR
    if data is not None and (source_bn / layout.WEIGHTS).is_file():
        baseline = evaluate_run(source_bn, data=data, split=split, out=layout.eval_dir(source_bn, data))
        metrics["adaptation"] = adaptation_summary(metrics, baseline)
    return metrics


def evaluate_with_prototypes(run_dir: str | Path, *, split: str = "test", n_way: int | None = None,
                             k_shot: int = 5, q_query: int = 15, episodes: int = 600,
                             out: str | Path | None = None) -> dict[str, Any]:
    """The "encoder + prototypes" baseline of a finished run (any paradigm, e.g. supervised CE).

    Prototypes are the mean pooled features of the run's labelled training images; ``split`` is classified by
    the nearest prototype (full metrics, ``metrics.json``) and scored over ``episodes`` episodes drawn from it
    (``episodic.json``), both written to ``out`` (default ``RUNDIR/eval-prototypes``).
    """
    _check_split(split)
    model, cfg, info = store.load_run_model(run_dir)
    data = prepare_data(cfg, manifest=Path(run_dir) / layout.SPLITS, progress=False)
    in_chans = int(info["in_chans"])
    prepare = model_input_fn(model, in_chans)
    train_idx = data.indices("train")
    with torch.no_grad():
        bank = embed_images(model, data.cached.images, train_idx, prepare)
    fit_prototype_classifier(model, bank, data.cached.labels[train_idx], len(data.classes))
    target = Path(out) if out is not None else Path(run_dir) / layout.PROTOTYPES_DIR
    target.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_split(model, data, split, in_chans, target / layout.PLOTS)
    split_idx = data.indices(split, labelled_only=False)
    atomic.write_json(target / layout.METRICS, metrics)
    episodic = None
    if episodes_possible(data.cached.labels[split_idx], k_shot, f"the {split} split"):
        with torch.no_grad():
            features = embed_images(model, data.cached.images, split_idx, prepare)
        episodic = episodic_accuracy(features, data.cached.labels[split_idx], n_way=n_way, k_shot=k_shot,
                                     q_query=q_query, episodes=episodes, seed=cfg.train.seed)
        episodic["split"] = split
        atomic.write_json(target / layout.EPISODIC, episodic)
    return {"metrics": metrics, "episodic": episodic, "out": str(target)}
