"""The LightningModule every training paradigm shares: inputs, optimiser, schedule, validation metrics.

A paradigm subclasses :class:`ClassifierTask` and overrides :meth:`ClassifierTask.training_loss`; everything
else (turning uint8 batches into normalised, augmented tensors; AdamW/SGD with linear warm-up and cosine
decay; validation macro AUC for early stopping; per-epoch reseeding so resumed runs are reproducible) lives
here once. A paradigm is a plug-in: its module defines the task class and one line of
:data:`medlite.paradigms.PARADIGMS` names it; the training workflow calls the hooks below and nothing else.

Hooks, in the order the workflow calls them:

* :meth:`ClassifierTask.before_fit` (classmethod): work before the model is built, e.g. ``simclr-pw``'s SimCLR
  phase; it may return the weights to initialise from. The train function is passed in, never imported.
* :meth:`ClassifierTask.from_config` (classmethod): build the task from the run config and prepared data.
* :meth:`ClassifierTask.train_batch_sampler`: a batch sampler (episodes), or ``None``.
* :meth:`ClassifierTask.finalize`: a closing step on the best weights (linear probe, AdaBN, prototypes ...).
* :meth:`ClassifierTask.notes` (classmethod): lines about the paradigm's own records in a finished run
  directory, for the model card and the CLI summary.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Sampler
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_auroc

from medlite.data.augment import XrayAugment, XrayAugmentConfig
from medlite.models.inputs import normalise_batch
from medlite.utils.seed import derive_seed

if TYPE_CHECKING:
    from medlite.config import RunConfig
    from medlite.data.prepared import PreparedData

#: The training workflow as passed to :meth:`ClassifierTask.before_fit`.
TrainFn = Callable[..., Any]


class ClassifierTask(pl.LightningModule):
    """Train a registered classifier on uint8 batches ``(B, 1, S, S)``.

    Args:
        model: a medlite zoo model (uniform interface, ``model.cfg`` set).
        num_classes: number of classes C (>= 2); the model outputs C logits.
        in_chans: channels the model expects (the 1-channel cache is repeated when 3).
        lr / weight_decay / optimizer: AdamW (default), Adam (``weight_decay`` as an L2 penalty) or SGD with
            Nesterov momentum 0.9.
        warmup_epochs: linear warm-up length in epochs (fractions allowed), then the schedule.
        schedule: ``"cosine"`` (decay to 0 over the run) or ``"step"`` (multiply by ``lr_step_gamma`` every
            ``lr_step_epochs`` epochs, as PyTorch's ``StepLR``).
        class_weights: float (C,) loss weights, or ``None`` for an unweighted loss.
        label_smoothing: cross-entropy label smoothing in [0, 1).
        augment: batched X-ray-safe augmentation settings, or ``None`` for none.
        seed: run seed; each step reseeds torch from (seed, epoch, batch, rank) so a resumed run repeats exactly.
        channels_last: use the channels-last memory format (1.3-1.5x faster convolutions on CPU).

    Extension points for paradigms: :meth:`training_loss` (or ``training_step``), :meth:`from_config` (build
    the task from a run config when it needs more than the common settings: teachers, target images ...),
    :meth:`finalize` (a closing step on the best weights), :meth:`train_batch_sampler` (e.g. episodes),
    :meth:`lr_factor` (the schedule), :attr:`uses_labels` and :attr:`supports_early_stopping`.
    """

    #: ``False`` for self-supervised paradigms: they train on every training image, labelled or not.
    uses_labels: ClassVar[bool] = True
    #: ``False`` for paradigms whose schedule has stages that must all run (early stopping is then off).
    supports_early_stopping: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int,
        in_chans: int = 1,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        optimizer: str = "adamw",
        warmup_epochs: float = 1.0,
        class_weights: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        augment: XrayAugmentConfig | None = None,
        seed: int = 0,
        channels_last: bool = True,
        schedule: str = "cosine",
        lr_step_epochs: int = 10,
        lr_step_gamma: float = 0.5,
    ) -> None:
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.mean = float(model.cfg.mean)
        self.std = float(model.cfg.std)
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer_name = optimizer
        self.warmup_epochs = warmup_epochs
        self.schedule = schedule
        self.lr_step_epochs = max(int(lr_step_epochs), 1)
        self.lr_step_gamma = float(lr_step_gamma)
        self.label_smoothing = label_smoothing
        self.seed = seed
        self.channels_last = channels_last
        self.augment = XrayAugment(augment) if augment is not None else None
        self.register_buffer("class_weights", class_weights if class_weights is not None else torch.ones(num_classes))
        self._val_probs: list[torch.Tensor] = []
        self._val_targets: list[torch.Tensor] = []

    @classmethod
    def before_fit(cls, cfg: RunConfig, out: Path, train_fn: TrainFn, *, callbacks: Sequence[Any] = (),
                   progress: bool = True) -> str | None:
        """Work done before the model is built; returns a weights file to initialise it from, or ``None``.

        ``train_fn(config, out=..., callbacks=..., progress=...)`` is the training workflow itself (so a
        paradigm can run another training phase as a complete run directory without importing the workflow).
        """
        return None

    @classmethod
    def from_config(cls, model: nn.Module, *, cfg: RunConfig, data: PreparedData, out: Path,
                    **kwargs: Any) -> ClassifierTask:
        """Build the task of a run: ``cfg`` is the run config, ``data`` the prepared data, ``out`` the run
        directory, ``kwargs`` the common settings."""
        return cls(model, **kwargs)

    @classmethod
    def notes(cls, run_dir: Path) -> list[str]:
        """Lines about this paradigm's own records in a finished ``run_dir`` (model card, CLI summary)."""
        return []

    def finalize(self, data: PreparedData, out: Path) -> None:
        """Called on the best weights (in ``self.model``) before the run is evaluated; nothing by default."""

    def train_batch_sampler(self, labels: np.ndarray, epoch_fn: Callable[[], int]) -> Sampler[list[int]] | None:
        """A batch sampler over the training split (``labels`` int64 (N,)), or ``None`` for seeded shuffled
        batches; episodic paradigms return one episode per batch."""
        return None

    # -- inputs -------------------------------------------------------------------------------------------
    def prepare_inputs(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 (B, 1, S, S) -> float (B, in_chans, S, S), augmented when ``train``, normalised."""
        x = images.float().div_(255.0)
        if train and self.augment is not None:
            x = self.augment(x)
        x = normalise_batch(x, self.mean, self.std, self.in_chans)
        if self.channels_last and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # -- training ---------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Class-weighted, label-smoothed cross-entropy; logits (B, C), targets int64 (B,)."""
        return F.cross_entropy(logits.float(), targets, weight=self.class_weights,
                               label_smoothing=self.label_smoothing)

    def training_loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The paradigm's loss for one prepared batch; supervised training is plain cross-entropy."""
        return self.cross_entropy(self.model(x), targets)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # Dropout and augmentation draw from torch's global RNG. Seeding it per (epoch, batch) makes every step
        # identical whether or not the run was interrupted and resumed; Lightning consumes global random
        # numbers at different moments in the two cases (e.g. when it creates the DataLoader iterator).
        torch.manual_seed(derive_seed(self.seed, self.current_epoch, batch_idx, self.global_rank))
        images, targets = batch
        loss = self.training_loss(self.prepare_inputs(images, train=True), targets)
        # sync_dist: under DDP the logged loss is the mean over every process's batch (a no-op in one process).
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(targets),
                 sync_dist=True)
        return loss

    # -- validation -------------------------------------------------------------------------------------
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, targets = batch
        logits = self.model(self.prepare_inputs(images, train=False)).float()
        self.log("val_loss", F.cross_entropy(logits, targets), on_epoch=True, batch_size=len(targets),
                 sync_dist=True)
        self._val_probs.append(logits.softmax(dim=1))
        self._val_targets.append(targets)

    def on_validation_epoch_end(self) -> None:
        if not self._val_probs:
            return
        probs, targets = torch.cat(self._val_probs), torch.cat(self._val_targets)
        self._val_probs.clear()
        self._val_targets.clear()
        self.log_validation(probs, targets)

    def validation_scores(self, probs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Accuracy and macro AUC of this process's (B, C) probabilities and (B,) targets, gathered over every
        process. The macro AUC averages the classes present: a small validation split may lack a class, and
        early stopping needs a number every epoch."""
        probs = self.all_gather(probs).reshape(-1, self.num_classes)
        targets = self.all_gather(targets).reshape(-1)
        acc = multiclass_accuracy(probs, targets, num_classes=self.num_classes, average="micro")
        present = torch.unique(targets)
        auc = multiclass_auroc(probs, targets, num_classes=self.num_classes, average=None)[present].mean()
        return acc, auc

    def log_validation(self, probs: torch.Tensor, targets: torch.Tensor, acc_name: str = "val_acc") -> None:
        """Log ``acc_name`` and ``val_auc`` (which checkpointing and early stopping follow)."""
        acc, auc = self.validation_scores(probs, targets)
        # Already gathered from every process, so identical on each: sync_dist averages equal numbers.
        self.log(acc_name, acc, prog_bar=True, sync_dist=True)
        self.log("val_auc", auc, prog_bar=True, sync_dist=True)

    # -- optimisation -----------------------------------------------------------------------------------
    def configure_optimizers(self):  # noqa: ANN201 (Lightning's return type is a union of many shapes)
        # No weight decay on norms and biases (1-D tensors), as in timm's param groups.
        # self.parameters(): the model plus any trainable head a paradigm adds (e.g. SimCLR's projection).
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if self.optimizer_name == "sgd":
            optimizer = torch.optim.SGD(groups, lr=self.lr, momentum=0.9, nesterov=True)
        elif self.optimizer_name == "adam":
            optimizer = torch.optim.Adam(groups, lr=self.lr)
        else:
            optimizer = torch.optim.AdamW(groups, lr=self.lr)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        epochs = max(self.trainer.max_epochs or 1, 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_factor(step, total, epochs))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_factor(self, step: int, total: int, epochs: int) -> float:
        """Multiplier of the peak learning rate at optimiser step ``step`` of ``total`` (over ``epochs`` epochs).

        Linear warm-up over ``warmup_epochs``, then cosine decay to 0 at ``total``, or ``StepLR``-style steps.
        """
        warmup = min(int(self.warmup_epochs * total / epochs), total - 1)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if self.schedule == "step":
            epoch = int(step * epochs / total)
            return self.lr_step_gamma ** (epoch // self.lr_step_epochs)
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
