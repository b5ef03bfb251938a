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

from medlite.config import RunConfig, build_config, load_config
from medlite.data.module import XrayDataModule, class_weights
from medlite.errors import MedliteError
from medlite.utils import rundir
from medlite.utils.seed import seed_everything


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    run_dir: Path
    metrics: dict[str, Any]
    epochs_run: int
    wall_time_s: float
    best_val_auc: float | None


@dataclass
class PreparedData:
    """A source preprocessed, cached and split, ready for a DataModule."""

    source: Any
    cached: Any
    splits: np.ndarray  # str (N,) "train" / "val" / "test" per cached image
    in_fraction: np.ndarray  # bool (N,) whether a training image keeps its label
    classes: list[str]

    def indices(self, split: str, labelled_only: bool = True) -> np.ndarray:
        mask = self.splits == split
        if split == "train" and labelled_only:
            mask &= self.in_fraction
        return np.flatnonzero(mask)


def prepare_data(cfg: RunConfig, manifest: Path | None = None, progress: bool = True) -> PreparedData:
    """Open, cache and split the data of ``cfg``; with ``manifest`` reproduce a stored split exactly."""
    from medlite.data.cache import build_cache
    from medlite.data.sources import open_source
    from medlite.data.splits import SplitManifest, label_fraction, make_splits

    d = cfg.data
    source = open_source(d.source, strict=d.strict, group_from_filename=d.group_from_filename,
                         synthetic_per_class=d.synthetic_per_class, synthetic_size=d.synthetic_size,
                         seed=cfg.train.seed)
    cached = build_cache(source, cfg.preprocess, strict=d.strict, progress=progress)
    records = [source.records[i] for i in cached.record_indices]
    if manifest is not None:
        stored = SplitManifest.load(manifest)
        rows = stored.align(source)[cached.record_indices]
        splits, in_fraction = stored.splits[rows], stored.in_fraction[rows]
    else:
        if d.split_from is not None:
            splits = _shared_split(d.split_from, source, cached.record_indices)
        else:
            groups = [r.group for r in records] if any(r.group for r in records) else None
            predefined = [r.split for r in records] if source.has_splits else None
            splits = make_splits(cached.labels, groups, val_frac=d.val_frac, test_frac=d.test_frac,
                                 seed=cfg.train.seed, predefined=predefined)
        in_fraction = np.zeros(len(records), dtype=bool)
        train_idx = np.flatnonzero(splits == "train")
        in_fraction[label_fraction(train_idx, cached.labels, d.fraction, cfg.train.seed)] = True
    if not np.any(splits == "train"):
        raise MedliteError(f"{d.source}: the split has no training images")
    return PreparedData(source, cached, np.asarray(splits), np.asarray(in_fraction, dtype=bool), list(cached.classes))


def _shared_split(split_from: str | Path, source: Any, record_indices: np.ndarray) -> np.ndarray:
    """The split of a stored manifest (run directory or ``splits.csv``) for the cached images of ``source``."""
    from medlite.data.splits import apply_manifest

    path = Path(split_from)
    path = path / rundir.SPLITS if path.is_dir() else path
    if not path.is_file():
        raise MedliteError(f"--split-from {split_from}: no split manifest there (a run directory or its splits.csv)")
    splits = apply_manifest(source, path)[record_indices]
    if (splits == "").any():
        raise MedliteError(f"--split-from {path}: {int((splits == '').sum())} image(s) of {source.location} have no "
                           f"split there (the manifest did not use them)")
    return splits


def resolve_init(init: str | Path | None) -> str | None:
    """An ``--init`` value as a weights file: a file as given; a run directory as its ``encoder.safetensors``
    (SimCLR runs) or else its ``model.safetensors``."""
    if init is None:
        return None
    path = Path(init)
    if path.is_dir():
        for name in ("encoder.safetensors", rundir.WEIGHTS):
            if (path / name).is_file():
                return str(path / name)
        raise MedliteError(f"{path}: a run directory without {rundir.WEIGHTS} or encoder.safetensors (not finished?)")
    return str(path)


def _resolve(config: RunConfig | str | Path | None, out: Path, resume: bool, overrides: dict[str, Any]) -> RunConfig:
    if resume:
        rundir.require_run_dir(out)
        # A simclr-pw run interrupted in its SimCLR phase has its checkpoint in pretrain/.
        if not (out / rundir.LAST_CKPT).is_file() and not (out / "pretrain" / rundir.LAST_CKPT).is_file():
            raise MedliteError(f"{out}: nothing to resume (no {rundir.LAST_CKPT})")
        return load_config(out / rundir.CONFIG, **overrides)
    if out.exists() and (out / rundir.CONFIG).exists():
        raise MedliteError(f"{out}: already holds a run; use --resume to continue it or choose another --out")
    if isinstance(config, RunConfig):
        cfg = build_config(config.model_dump(mode="json"), **overrides)
    elif config is not None:
        cfg = load_config(config, **overrides)
    else:
        cfg = build_config(None, **overrides)
    return cfg.with_absolute_paths()


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
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger

    t = cfg.train
    monitor = "val_auc" if has_val else None
    checkpoint = ModelCheckpoint(dirpath=out, filename="best", monitor=monitor, mode="max", save_last=True,
                                 save_top_k=1, enable_version_counter=False)
    all_callbacks: list[Any] = [checkpoint, *callbacks]
    if has_val and early_stopping and t.early_stopping_patience > 0:
        all_callbacks.append(EarlyStopping(monitor="val_auc", mode="max", patience=t.early_stopping_patience))
    if progress:
        all_callbacks.append(RichProgressBar(leave=True))
    accelerator = t.accelerator if t.accelerator != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    strategy: Any = "auto"
    if t.devices * t.num_nodes > 1:
        # Spawned workers keep the Python API usable from notebooks and tests; gloo is the CPU backend.
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(start_method="spawn", process_group_backend="gloo" if accelerator == "cpu" else None)
    return pl.Trainer(
        default_root_dir=out, max_epochs=t.epochs, accelerator=accelerator, devices=t.devices,
        num_nodes=t.num_nodes, strategy=strategy, precision="bf16-mixed" if accelerator == "cuda" else "32-true",
        deterministic=t.deterministic, callbacks=all_callbacks,
        logger=CSVLogger(out, name="", version="logs"), enable_progress_bar=progress, enable_model_summary=False,
        log_every_n_steps=1, limit_train_batches=t.limit_train_batches, num_sanity_val_steps=0,
    ), checkpoint


def _build_task(cfg: RunConfig, data: PreparedData, out: Path, resume: bool, callbacks: Sequence[Any],
                progress: bool) -> tuple[Any, Any, XrayDataModule, bool]:
    """The model, the paradigm's task, the DataModule and whether there is a validation split."""
    from medlite.models import create_model
    from medlite.paradigms import get_paradigm

    t = cfg.train
    num_classes = len(data.classes)
    init = resolve_init(t.init)
    if t.paradigm == "simclr-pw":
        # Phase 1: SimCLR on the training images as the complete run directory out/pretrain; phase 2 (the rest of
        # this function) fine-tunes from its encoder.
        from medlite.paradigms.simclr import PRETRAIN_DIR, pretrain_encoder

        init = str(pretrain_encoder(cfg, out / PRETRAIN_DIR, callbacks=callbacks, progress=progress))
    model = create_model(t.model, num_classes=num_classes, in_chans=cfg.preprocess.channels, init=init)
    if getattr(model, "init_report", None) is not None:
        warnings.warn(f"init {init}: {model.init_report.summary()}", stacklevel=2)
    if t.init_select is not None and not resume:  # a resumed run restores its weights from last.ckpt
        from medlite.models.selection import select_weights

        report = select_weights(model, t.init_select, method=t.select_method, seed=t.seed)
        warnings.warn(f"weight selection: {report.summary()}", stacklevel=2)
    train_idx = data.indices("train")
    weights = class_weights(data.cached.labels[train_idx], num_classes) if t.balance == "loss" else None
    from medlite.data.augment import XrayAugmentConfig

    augment = {"none": None, "supervised": XrayAugmentConfig.supervised(), "simclr": XrayAugmentConfig.simclr()}
    task = get_paradigm(t.paradigm).from_config(
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
    from medlite.data.unlabelled import StackedImages, load_unlabelled

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
        from medlite.paradigms.simclr import PRETRAIN_DIR

        if not any((d / rundir.LAST_CKPT).is_file() for d in (out, out / PRETRAIN_DIR)):
            for name in (rundir.CONFIG, rundir.SPLITS, rundir.VERSIONS):
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(out / "logs", ignore_errors=True)
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
    from medlite.evaluate.run_eval import finish_run, read_history

    started = time.perf_counter()
    out = Path(out)
    cfg = _resolve(config, out, resume, overrides)
    t = cfg.train
    seed_everything(t.seed, t.deterministic)
    data = prepare_data(cfg, manifest=out / rundir.SPLITS if resume else None, progress=progress)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        from medlite.data.splits import SplitManifest

        rundir.write_text(out / rundir.CONFIG, cfg.to_yaml())
        SplitManifest.from_source(data.source, data.splits, fraction_indices=np.flatnonzero(data.in_fraction),
                                  record_indices=data.cached.record_indices).save(out / rundir.SPLITS)
    rundir.write_json(out / rundir.VERSIONS, rundir.library_versions())

    with _discard_if_unstarted(out, created):
        model, task, datamodule, has_val = _build_task(cfg, data, out, resume, callbacks, progress)
        if resume:
            # Lightning's CSVLogger starts metrics.csv afresh; keep the epochs logged before the interruption.
            logs = out / "logs" / "metrics.csv"
            if logs.is_file():
                count = len(list(logs.parent.glob("metrics*.csv")))
                logs.rename(logs.with_name(f"metrics.before-resume-{count}.csv"))
        ckpt_path = out / rundir.LAST_CKPT if resume and (out / rundir.LAST_CKPT).is_file() else None
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
                hint = (f"continue with: medlite train --out {out} --resume" if (out / rundir.LAST_CKPT).is_file()
                        else "it stopped before its first checkpoint, so nothing was kept")
                raise KeyboardInterrupt(f"training interrupted; {hint}") from None

    best_path = Path(checkpoint.best_model_path) if checkpoint.best_model_path else out / rundir.LAST_CKPT
    # The whole task: paradigms keep more than the model in it (a projection head, an auxiliary student ...).
    task.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"])
    task.to(memory_format=torch.contiguous_format)
    task.finalize(data, out)  # e.g. SimCLR's encoder + linear probe, DG's AdaBN
    metrics = finish_run(out, cfg, model, data, history_dir=out / "logs")
    # Read back from history.csv rather than the trainer: with spawned DDP workers the trainer in this
    # process never sees the epochs run or the best score.
    history = read_history(out)
    val_aucs = [float(r["val_auc"]) for r in history if r.get("val_auc")]
    return TrainResult(run_dir=out, metrics=metrics, epochs_run=len(history),
                       wall_time_s=time.perf_counter() - started, best_val_auc=max(val_aucs, default=None))
