"""``medlite.train``: from a data source to a complete run directory in one call.

Steps: open the source -> preprocess into the uint8 cache -> split (stratified, patient-grouped, labelled
fraction) -> write config, split manifest and versions -> train the paradigm with Lightning (best and last
checkpoints, early stopping on validation macro AUC) -> export the best weights as safetensors -> evaluate on
the test split -> metrics, plots and model card. ``resume=True`` continues from ``last.ckpt`` with the split
manifest and config stored in the run directory.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlite.config import RunConfig, load_config, resolve_config
from medlite.data.augment import XrayAugmentConfig
from medlite.data.module import XrayDataModule, class_weights
from medlite.data.prepared import PreparedData, prepare_data
from medlite.data.sources import is_synthetic
from medlite.data.splits import SplitManifest
from medlite.data.unlabelled import StackedImages, load_unlabelled
from medlite.errors import MedliteError
from medlite.metrics.plots import plot_history
from medlite.models import create_model
from medlite.models.checkpoint import load_weights, save_weights
from medlite.models.selection import select_weights
from medlite.paradigms import get_paradigm
from medlite.rundir import layout, store
from medlite.utils import atomic
from medlite.utils.seed import seed_everything
from medlite.workflows.launch import (
    Launch,
    check_world_size,
    ddp_strategy,
    external_launch,
    follower_config,
    sync_ranks,
)
from medlite.workflows.trust import score_run


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    run_dir: Path
    metrics: dict[str, Any]
    epochs_run: int
    wall_time_s: float
    best_val_auc: float | None
    synthetic: bool = False  # trained on generated phantoms, not X-rays (say so beside every figure)
    rank: int = 0  # global rank under torchrun/srun; only rank 0 wrote the run directory


def _has_checkpoint(out: Path) -> bool:
    # A simclr-pw run interrupted in its SimCLR phase has its checkpoint in pretrain/.
    return any((d / layout.LAST_CKPT).is_file() for d in (out, out / layout.PRETRAIN_DIR))


def _is_finished(out: Path) -> bool:
    return (out / layout.WEIGHTS).is_file() and (out / layout.METRICS).is_file()


def _remove_unstarted(out: Path) -> None:
    """Delete what a run writes before its first checkpoint (config, split manifest, versions, logs)."""
    for name in (layout.CONFIG, layout.SPLITS, layout.VERSIONS):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / layout.LOGS, ignore_errors=True)


def _resolve(config: RunConfig | str | Path | None, out: Path, resume: bool, overrides: dict[str, Any]) -> RunConfig:
    unstarted = (out / layout.CONFIG).is_file() and not _has_checkpoint(out) and not _is_finished(out)
    if resume:
        store.require_run_dir(out)
        if unstarted:
            raise MedliteError(f"{out}: nothing to resume, the run stopped before its first checkpoint; run the "
                               f"same command without --resume to start it again")
        if not _has_checkpoint(out):
            raise MedliteError(f"{out}: nothing to resume (no {layout.LAST_CKPT})")
        cfg = load_config(out / layout.CONFIG, stored=True, **overrides)
        if _is_finished(out):
            done = len(store.read_history(out))
            stored_epochs = load_config(out / layout.CONFIG, stored=True).train.epochs
            if cfg.train.epochs <= stored_epochs:
                raise MedliteError(f"{out}: the run is complete ({done} of {stored_epochs} epochs, "
                                   f"{layout.WEIGHTS} and {layout.METRICS} written); nothing changed. To train "
                                   f"it further pass --resume with --epochs above {stored_epochs}")
        return cfg
    if unstarted:
        # Killed (kill -9, power cut) before any epoch finished: nothing worth keeping, so start over.
        warnings.warn(f"{out}: an earlier run stopped before its first checkpoint; starting it again", stacklevel=2)
        _remove_unstarted(out)
    elif out.exists() and (out / layout.CONFIG).exists():
        raise MedliteError(f"{out}: already holds a run; use --resume to continue it or choose another --out")
    return resolve_config(config, **overrides)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's banner lines (accelerator availability, tips) and its advice that does not apply.

    Only Lightning's own loggers and these specific warnings are touched, and only inside the block.
    """
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        # A run directory already holds config.yaml and splits.csv when Lightning first writes a checkpoint.
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        # On 2 cores with a memmap the main process is the fastest loader; Lightning suggests workers.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
        # DDP: channels_last gradients on CPU (harmless copy) and the collective Lightning's all_gather calls.
        warnings.filterwarnings("ignore", message=".*Grad strides do not match bucket view strides.*")
        warnings.filterwarnings("ignore", message=".*distributed.nn.functional.all_gather is deprecated.*")
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _trainer(cfg: RunConfig, out: Path, has_val: bool, callbacks: Sequence[Any], progress: bool,
             early_stopping: bool = True):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from medlite.workflows.epoch_log import training_progress

    t = cfg.train
    monitor = "val_auc" if has_val else None
    checkpoint = ModelCheckpoint(dirpath=out, filename="best", monitor=monitor, mode="max", save_last=True,
                                 save_top_k=1, enable_version_counter=False)
    all_callbacks: list[Any] = [checkpoint, *callbacks]
    if has_val and early_stopping and t.early_stopping_patience > 0:
        all_callbacks.append(EarlyStopping(monitor="val_auc", mode="max", patience=t.early_stopping_patience))
    if progress:
        all_callbacks.append(training_progress())
    accelerator = t.accelerator if t.accelerator != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    strategy: Any = "auto"
    if t.devices * t.num_nodes > 1:
        # Spawned workers (the Python API stays usable from notebooks), unless torchrun/srun started the ranks.
        strategy = ddp_strategy(accelerator, external_launch())
    return pl.Trainer(
        default_root_dir=out, max_epochs=t.epochs, accelerator=accelerator, devices=t.devices,
        num_nodes=t.num_nodes, strategy=strategy, precision="bf16-mixed" if accelerator == "cuda" else "32-true",
        deterministic=t.deterministic, callbacks=all_callbacks,
        logger=CSVLogger(out, name="", version=layout.LOGS), enable_progress_bar=progress, enable_model_summary=False,
        log_every_n_steps=1, limit_train_batches=t.limit_train_batches, num_sanity_val_steps=0,
    ), checkpoint


def _build_task(cfg: RunConfig, data: PreparedData, out: Path, resume: bool, callbacks: Sequence[Any],
                progress: bool) -> tuple[Any, Any, XrayDataModule, bool]:
    """The model, the paradigm's task, the DataModule and whether there is a validation split."""
    t = cfg.train
    num_classes = len(data.classes)
    paradigm = get_paradigm(t.paradigm)
    # e.g. simclr-pw: the SimCLR phase as the complete run directory out/pretrain, then fine-tuning from it.
    init = paradigm.before_fit(cfg, out, train, callbacks=callbacks, progress=progress) or store.resolve_init(t.init)
    model = create_model(t.model, num_classes=num_classes, in_chans=cfg.preprocess.channels, init=init)
    if getattr(model, "init_report", None) is not None:
        warnings.warn(f"init {init}: {model.init_report.summary()}", stacklevel=2)
    if t.init_select is not None and not resume:  # a resumed run restores its weights from last.ckpt
        report = select_weights(model, store.resolve_weights(t.init_select), method=t.select_method, seed=t.seed)
        warnings.warn(f"weight selection: {report.summary()}", stacklevel=2)
    train_idx = data.indices("train")
    weights = class_weights(data.cached.labels[train_idx], num_classes) if t.balance == "loss" else None
    augment = {"none": None, "supervised": XrayAugmentConfig.supervised(), "simclr": XrayAugmentConfig.simclr()}
    task = paradigm.from_config(
        model, cfg=cfg, data=data, out=out, num_classes=num_classes, in_chans=cfg.preprocess.channels, lr=t.lr,
        weight_decay=t.weight_decay,
        optimizer=t.optimizer, warmup_epochs=t.warmup_epochs, label_smoothing=t.label_smoothing,
        class_weights=None if weights is None else torch.from_numpy(weights), augment=augment[t.augment],
        seed=t.seed, schedule=t.schedule, lr_step_epochs=t.lr_step_epochs, lr_step_gamma=t.lr_step_gamma,
    )
    split_indices = {s: data.indices(s, labelled_only=task.uses_labels) for s in ("train", "val", "test")}
    images, labels = data.cached.images, data.cached.labels
    if t.unlabelled and t.paradigm == "simclr":  # simclr-pw's fine-tuning phase uses the labelled images only
        images, labels, split_indices["train"] = _with_unlabelled(t.unlabelled, cfg, images, labels,
                                                                  split_indices["train"])
    datamodule = XrayDataModule(images, labels, split_indices, batch_size=t.batch_size,
                                seed=t.seed, balanced_sampler=t.balance == "sampler" and task.uses_labels,
                                num_workers=t.num_workers, batch_sampler=task.train_batch_sampler)
    has_val = len(split_indices["val"]) > 0
    return model, task, datamodule, has_val


def _with_unlabelled(sources: Sequence[str], cfg: RunConfig, images: np.ndarray, labels: np.ndarray,
                     train_idx: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
    """Append the images of ``sources`` (preprocessed like ``cfg``) to the training images of a SimCLR run.

    Returns the stacked images (no copy), labels with 0 for the unlabelled images (SimCLR never reads them) and
    the training indices into the stack.
    """
    arrays, indices, offset = [images], [np.asarray(train_idx, np.int64)], len(images)
    for spec in sources:
        extra, use = load_unlabelled(spec, cfg)
        arrays.append(extra)
        indices.append(offset + use)
        offset += len(extra)
    stacked = StackedImages(arrays)
    padded = np.concatenate([labels, np.zeros(len(stacked) - len(labels), labels.dtype)])
    return stacked, padded, np.concatenate(indices)


@contextlib.contextmanager
def _discard_if_unstarted(out: Path, created: bool) -> Iterator[None]:
    """On a user error or an interrupt before the first checkpoint, remove the files this run wrote, so ``out``
    can be used again (there is nothing to resume)."""
    try:
        yield
    except (MedliteError, KeyboardInterrupt):
        if not _has_checkpoint(out):
            _remove_unstarted(out)
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise


def train(
    config: RunConfig | str | Path | None = None,
    *,
    out: str | Path,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    progress: bool = True,
    **overrides: Any,
) -> TrainResult:
    """Train a model and fill ``out`` with a complete run directory.

    Args:
        config: a :class:`RunConfig`, a path to a ``run.yaml``, or ``None`` for defaults.
        out: the run directory (created; must not already hold a run unless ``resume``).
        resume: continue the run in ``out`` from its ``last.ckpt`` (config and split manifest come from ``out``).
        callbacks: extra Lightning callbacks.
        progress: show a progress bar.
        **overrides: flat settings applied over ``config`` (``model=``, ``epochs=``, ``source=``, ``lr=`` ...).

    Returns:
        A :class:`TrainResult`; ``result.metrics`` is the test-split ``metrics.json``.
    """
    started = time.perf_counter()
    out = Path(out)
    launch = external_launch()  # torchrun/srun: one rank per process, rank 0 writes (medlite.workflows.launch)
    if launch is not None and launch.rank > 0:
        return _follow_rank_zero(launch, config, out=out, resume=resume, callbacks=callbacks, progress=progress,
                                **overrides)
    cfg = _resolve(config, out, resume, overrides)
    t = cfg.train
    check_world_size(launch, t.devices, t.num_nodes)
    synthetic = is_synthetic(cfg.data.source)
    if synthetic:
        warnings.warn(f"training on generated phantoms ({cfg.data.source}), not on X-rays: its figures say "
                      f"nothing about real images", stacklevel=2)
    seed_everything(t.seed, t.deterministic)
    data = prepare_data(cfg, manifest=out / layout.SPLITS if resume else None, progress=progress)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if resume and cfg.train.epochs != load_config(out / layout.CONFIG, stored=True).train.epochs:
        atomic.write_text(out / layout.CONFIG, cfg.to_yaml())  # trained further: the card and the next resume
    if not resume:
        atomic.write_text(out / layout.CONFIG, cfg.to_yaml())
        SplitManifest.from_source(data.source, data.splits, fraction_indices=np.flatnonzero(data.in_fraction),
                                  record_indices=data.cached.record_indices).save(out / layout.SPLITS)
    atomic.write_json(out / layout.VERSIONS, store.library_versions())

    with _discard_if_unstarted(out, created):
        model, task, datamodule, has_val = _build_task(cfg, data, out, resume, callbacks, progress)
        if resume:
            # Lightning's CSVLogger starts metrics.csv afresh; keep the epochs logged before the interruption.
            logs = out / layout.LOGS / "metrics.csv"
            if logs.is_file():
                count = len(list(logs.parent.glob("metrics*.csv")))
                logs.rename(logs.with_name(f"metrics.before-resume-{count}.csv"))
        ckpt_path = out / layout.LAST_CKPT if resume and (out / layout.LAST_CKPT).is_file() else None
        with quiet_lightning():
            trainer, checkpoint = _trainer(cfg, out, has_val, callbacks, progress,
                                           early_stopping=task.supports_early_stopping)
            try:
                trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
            except SystemExit:
                # Lightning answers Ctrl-C with a graceful shutdown, then sys.exit(1), and leaves SIGINT ignored.
                if not trainer.interrupted:
                    raise
                signal.signal(signal.SIGINT, signal.default_int_handler)
                hint = (f"continue with: medlite train --out {out} --resume" if (out / layout.LAST_CKPT).is_file()
                        else "it stopped before its first checkpoint, so nothing was kept")
                raise KeyboardInterrupt(f"training interrupted; {hint}") from None

    best_path = Path(checkpoint.best_model_path) if checkpoint.best_model_path else out / layout.LAST_CKPT
    if not best_path.is_file():
        # A finished run trained further whose new epochs did not beat it: finish_run deleted best.ckpt after
        # writing its model to model.safetensors, so that file is still the best model.
        task.load_state_dict(torch.load(out / layout.LAST_CKPT, map_location="cpu", weights_only=True)["state_dict"])
        load_weights(model, out / layout.WEIGHTS)
    else:
        # The whole task: paradigms keep more than the model in it (a projection head, an auxiliary student ...).
        task.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"])
    task.to(memory_format=torch.contiguous_format)
    task.finalize(data, out)  # e.g. SimCLR's encoder + linear probe, DG's AdaBN
    metrics = finish_run(out, cfg, model, data, history_dir=out / layout.LOGS)
    sync_ranks()  # the other ranks of a torchrun/srun job wait for the finished run directory
    # Read back from history.csv rather than the trainer: with spawned DDP workers the trainer in this
    # process never sees the epochs run or the best score.
    history = store.read_history(out)
    val_aucs = [float(r["val_auc"]) for r in history if r.get("val_auc")]
    return TrainResult(run_dir=out, metrics=metrics, epochs_run=len(history),
                       wall_time_s=time.perf_counter() - started, best_val_auc=max(val_aucs, default=None),
                       synthetic=synthetic)


def _follow_rank_zero(launch: Launch, config: RunConfig | str | Path | None, *, out: Path, resume: bool,
                      callbacks: Sequence[Any], progress: bool, **overrides: Any) -> TrainResult:
    """Train as rank ``launch.rank`` > 0 of a torchrun/srun job: the same data, split and model as rank 0,
    nothing written. Returns rank 0's result, read from the run directory after the closing barrier
    (``metrics`` is empty when that directory is not visible from this node)."""
    started = time.perf_counter()
    cfg = follower_config(config, out, resume, overrides)
    t = cfg.train
    check_world_size(launch, t.devices, t.num_nodes)
    seed_everything(t.seed, t.deterministic)
    # The split is a function of the config (and of rank 0's manifest when resuming): every rank draws the same.
    data = prepare_data(cfg, manifest=out / layout.SPLITS if resume else None, progress=False)
    _, task, datamodule, has_val = _build_task(cfg, data, out, resume, callbacks, progress)
    ckpt_path = out / layout.LAST_CKPT if resume and (out / layout.LAST_CKPT).is_file() else None
    with quiet_lightning():
        trainer, _ = _trainer(cfg, out, has_val, callbacks, progress, early_stopping=task.supports_early_stopping)
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
    sync_ranks()  # rank 0 has written model.safetensors, metrics.json and the card
    finished = (out / layout.METRICS).is_file()
    history = store.read_history(out) if finished else []
    val_aucs = [float(r["val_auc"]) for r in history if r.get("val_auc")]
    return TrainResult(run_dir=out, metrics=atomic.read_json(out / layout.METRICS) if finished else {},
                       epochs_run=len(history), wall_time_s=time.perf_counter() - started,
                       best_val_auc=max(val_aucs, default=None), synthetic=is_synthetic(cfg.data.source),
                       rank=launch.rank)


def finish_run(out: Path, cfg: RunConfig, model: nn.Module, data: PreparedData, history_dir: Path) -> dict[str, Any]:
    """Write best weights, history, calibration and OOD gate, test metrics, plots and the model card of a
    finished training run."""
    save_weights(model, out / layout.WEIGHTS)
    history = store.write_history(history_dir, out)
    if history:
        plot_history(history, out / layout.PLOTS / "learning_curves.png")
    metrics = score_run(out, cfg, model, data)
    best = out / layout.BEST_CKPT
    if best.exists():
        best.unlink()  # model.safetensors now holds these weights; last.ckpt stays for --resume
    return metrics
