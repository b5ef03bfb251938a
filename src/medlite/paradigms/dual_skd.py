"""Dual-model weight selection with self-knowledge distillation (Tsutsumi et al. 2025; METHODS.md §2).

Two students of one architecture are initialised with *complementary* weight selections from one larger
model of the same family (:func:`~medlite.models.selection.select_weights` with ``pair=0`` / ``pair=1``: the
even and the odd channels when the teacher is twice as wide). Student A is trained; student B is its
auxiliary teacher: never back-propagated (stop-gradient, eval-mode forward) and updated after every
optimiser step as an exponential moving average of A, ``theta_B <- m theta_B + (1 - m) theta_A``
(parameters and BatchNorm statistics; m = 0.996, or 0.99 when stage 1 has under 2,000 steps).

Stage 1 loss on each labelled batch (one augmented view into both):
``(1 - alpha) * CE(y, z_A) + alpha * T^2 * KL(softmax(z_B / T) || softmax(z_A / T))``, alpha 0.5, T 4
(:class:`~medlite.losses.distill.KDLoss` with its hard-label weight ``1 - alpha``). Stage 2 fine-tunes A with
CE alone for the last ``finetune_epochs`` of the run (10 % of ``epochs`` by default, so the run's length is the
same as every other paradigm's) at ``lr x finetune_lr_factor`` (0.1). Weight selection skips classifiers, so B's
classifier starts as a copy of A's (two unrelated random heads would make the first distillation steps noise).

Ablation switches (``skd_mode``): ``swap`` (A starts from the second subset, B from the first), ``mutual``
(both trained, each distilling from the other's detached logits; no EMA), ``ema-only`` (B starts as a copy of
A, which takes the single-student selection: mean-teacher self-distillation without complementary selection).

Every validation epoch logs A's and B's accuracy and macro AUC (``val_auc_a``, ``val_auc_b``: B's curve is in
``history.csv``); checkpointing follows the better of the two (``val_auc``). At the end the better student on
the validation split becomes the run's model, and ``dual_skd.json`` records which one was kept and why.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics.functional.classification import multiclass_auroc

from medlite.config import RunConfig
from medlite.data.prepared import PreparedData
from medlite.errors import MedliteError
from medlite.losses.distill import KDLoss
from medlite.models import create_model
from medlite.models.inputs import predict_proba
from medlite.models.selection import select_weights
from medlite.paradigms.task import ClassifierTask
from medlite.rundir import layout, store
from medlite.utils import atomic

SKD_MODES = ("ema", "swap", "mutual", "ema-only")


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * source`` for parameters and float buffers (in place);
    integer buffers (BatchNorm step counters) are copied."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s.detach(), 1.0 - momentum)
    for t, s in zip(target.buffers(), source.buffers(), strict=True):
        if t.dtype.is_floating_point:
            t.lerp_(s, 1.0 - momentum)
        else:
            t.copy_(s)


def _macro_auc(probs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    present = torch.unique(targets)
    return multiclass_auroc(probs, targets, num_classes=num_classes, average=None)[present].mean()


def dual_skd_note(run_dir: Path) -> list[str]:
    """The model-card line of a dual-skd run: which student was kept and why."""
    if not (run_dir / layout.DUAL_SKD).is_file():
        return []
    d = atomic.read_json(run_dir / layout.DUAL_SKD)
    scores = ", ".join(f"{k} {v['auc_macro']:.3f}" for k, v in d.get("val", {}).items())
    return [f"dual-skd ({d['mode']}): kept student {d['kept']}"
            + (f" (val macro AUC {scores})" if scores else f" ({d['reason']})")]


class DualSKDTask(ClassifierTask):
    """Train student A with self-distillation from its auxiliary student B.

    Args:
        model: student A (already initialised, e.g. by weight selection).
        auxiliary: student B, the same architecture (its own initialisation).
        mode: one of :data:`SKD_MODES`.
        alpha: weight of the distillation term in [0, 1].
        temperature: T > 0.
        momentum: EMA momentum m; ``None`` picks 0.996, or 0.99 when stage 1 has under 2,000 steps.
        stage1_epochs: epochs of stage 1; later epochs are the CE fine-tune of A.
        finetune_lr_factor: learning-rate multiplier of stage 2.
        selection: a description of the two students' initialisations (recorded in ``dual_skd.json``).
        **kwargs: :class:`ClassifierTask` settings.
    """

    supports_early_stopping = False  # stage 2 must run; the best checkpoint is still kept

    def __init__(self, model: nn.Module, *, auxiliary: nn.Module, mode: str = "ema", alpha: float = 0.5,
                 temperature: float = 4.0, momentum: float | None = None, stage1_epochs: int = 1,
                 finetune_lr_factor: float = 0.1, selection: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if mode not in SKD_MODES:
            raise MedliteError(f"skd_mode must be one of {', '.join(SKD_MODES)}, got {mode!r}")
        if not 0.0 <= alpha <= 1.0:
            raise MedliteError(f"skd_alpha must be in [0, 1], got {alpha!r}")
        self.auxiliary = auxiliary
        self.mode = mode
        self.skd_loss = KDLoss(alpha=1.0 - alpha, temperature=temperature)  # KDLoss weighs the hard-label term
        self.alpha = float(alpha)
        self.requested_momentum = momentum
        self.momentum = 0.996 if momentum is None else float(momentum)
        self.stage1_epochs = max(int(stage1_epochs), 1)
        self.finetune_lr_factor = float(finetune_lr_factor)
        self.selection = selection or {}
        self.auxiliary.requires_grad_(mode == "mutual")
        self._val_probs_b: list[torch.Tensor] = []

    @classmethod
    def from_config(cls, model: nn.Module, *, cfg: RunConfig, data: PreparedData, out: Path,
                    **kwargs: Any) -> DualSKDTask:
        """Select A and B from ``cfg.train.teacher[0]`` (complementary subsets; ``swap`` exchanges them).

        A resumed run (``out/last.ckpt`` exists) restores both students from its checkpoint, so nothing is
        selected and the teacher file is not read again.
        """
        t = cfg.train
        teacher = store.resolve_weights(t.teacher[0])
        stage2 = t.finetune_epochs if t.finetune_epochs is not None else max(1, round(0.1 * t.epochs))
        if t.finetune_epochs is not None and t.finetune_epochs >= t.epochs:
            raise MedliteError(f"--finetune-epochs {t.finetune_epochs} leaves no stage-1 epoch of --epochs {t.epochs}")
        stage2 = min(stage2, t.epochs - 1)
        first, second = (1, 0) if t.skd_mode == "swap" else (0, 1)
        resumed = (out / layout.LAST_CKPT).is_file()
        overlapping: list[tuple[int, int]] = []
        if t.skd_mode == "ema-only":
            if not resumed:
                overlapping = select_weights(model, teacher, method=t.select_method, seed=t.seed).overlapping
            auxiliary = copy.deepcopy(model)
        else:
            auxiliary = create_model(t.model, num_classes=len(data.classes), in_chans=cfg.preprocess.channels)
            if not resumed:
                report = select_weights(model, teacher, method=t.select_method, pair=first, seed=t.seed)
                select_weights(auxiliary, teacher, method=t.select_method, pair=second, seed=t.seed)
                overlapping = report.overlapping
                auxiliary.get_classifier().load_state_dict(model.get_classifier().state_dict())
        selection = {"teacher": str(teacher), "method": t.select_method,
                     "A": "single-student selection" if t.skd_mode == "ema-only" else f"subset {first} of the pair",
                     "B": "copy of A" if t.skd_mode == "ema-only" else f"subset {second} of the pair, A's classifier",
                     "overlapping_pairs": overlapping}
        return cls(model, auxiliary=auxiliary, mode=t.skd_mode, alpha=t.skd_alpha, temperature=t.skd_temperature,
                   momentum=t.ema_momentum, stage1_epochs=t.epochs - stage2,
                   finetune_lr_factor=t.finetune_lr_factor, selection=selection, **kwargs)

    # -- schedule -------------------------------------------------------------------------------------
    def lr_factor(self, step: int, total: int, epochs: int) -> float:
        """Stage 1: warm-up and cosine over its own steps; stage 2: constant ``finetune_lr_factor``."""
        stage1 = max(int(round(total * min(self.stage1_epochs, epochs) / epochs)), 1)
        if step < stage1:
            return super().lr_factor(step, stage1, min(self.stage1_epochs, epochs))
        return self.finetune_lr_factor

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.channels_last:
            self.auxiliary.to(memory_format=torch.channels_last)
        if self.requested_momentum is None:
            epochs = max(self.trainer.max_epochs or 1, 1)
            stage1_steps = int(self.trainer.estimated_stepping_batches) * min(self.stage1_epochs, epochs) // epochs
            self.momentum = 0.99 if stage1_steps < 2000 else 0.996

    @property
    def in_stage1(self) -> bool:
        return self.current_epoch < self.stage1_epochs

    # -- training -------------------------------------------------------------------------------------
    def training_loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        ce = dict(weight=self.class_weights, label_smoothing=self.label_smoothing)
        logits_a = self.model(x)
        if not self.in_stage1:
            self.auxiliary.eval()
            return self.cross_entropy(logits_a, targets)
        if self.mode == "mutual":
            logits_b = self.auxiliary(x)
            return (self.skd_loss(logits_a, logits_b.detach(), targets, **ce)
                    + self.skd_loss(logits_b, logits_a.detach(), targets, **ce))
        self.auxiliary.eval()  # Lightning puts every submodule in train mode at each epoch start
        with torch.no_grad():
            logits_b = self.auxiliary(x)
        return self.skd_loss(logits_a, logits_b, targets, **ce)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # After the optimiser step: B follows A (stage 1 of the EMA modes only).
        if self.in_stage1 and self.mode != "mutual":
            ema_update(self.auxiliary, self.model, self.momentum)

    # -- validation -----------------------------------------------------------------------------------
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)  # A: val_loss, probabilities
        images, _ = batch
        self._val_probs_b.append(self.auxiliary(self.prepare_inputs(images, train=False)).float().softmax(dim=1))

    def on_validation_epoch_end(self) -> None:
        if not self._val_probs:
            self._val_probs_b.clear()
            return
        targets = torch.cat(self._val_targets)
        scores, accs = {}, {}
        for name, chunks in (("a", self._val_probs), ("b", self._val_probs_b)):
            accs[name], scores[name] = self.validation_scores(torch.cat(chunks), targets)
            self.log(f"val_acc_{name}", accs[name])
            self.log(f"val_auc_{name}", scores[name])
        self._val_probs.clear()
        self._val_probs_b.clear()
        self._val_targets.clear()
        # Checkpointing (and so the kept epoch) follows the better student; val_acc is that student's.
        better = "b" if scores["b"] > scores["a"] else "a"
        self.log("val_auc", scores[better], prog_bar=True)
        self.log("val_acc", accs[better], prog_bar=True)

    @classmethod
    def notes(cls, run_dir: Path) -> list[str]:
        return dual_skd_note(run_dir)

    # -- after training -------------------------------------------------------------------------------
    def finalize(self, data: PreparedData, out: Path) -> None:
        """Keep the better of A and B on the validation split (in ``self.model``); write ``dual_skd.json``."""
        record: dict[str, Any] = {"mode": self.mode, "alpha": self.alpha, "temperature": self.skd_loss.temperature,
                                  "ema_momentum": None if self.mode == "mutual" else self.momentum,
                                  "stage1_epochs": self.stage1_epochs, "finetune_lr_factor": self.finetune_lr_factor,
                                  "selection": self.selection}
        val = data.indices("val", labelled_only=False)
        kept = "A"
        if len(val):
            labels = torch.from_numpy(np.asarray(data.cached.labels[val], dtype=np.int64))
            scores = {}
            for name, student in (("A", self.model), ("B", self.auxiliary)):
                probs = torch.from_numpy(predict_proba(student, data.cached.images[val], in_chans=self.in_chans))
                scores[name] = {"auc_macro": float(_macro_auc(probs, labels, self.num_classes)),
                                "accuracy": float((probs.argmax(1) == labels).float().mean())}
            record["val"] = scores
            if scores["B"]["auc_macro"] > scores["A"]["auc_macro"]:
                kept = "B"
                self.model.load_state_dict(self.auxiliary.state_dict())
            record["reason"] = "higher validation macro AUC (A wins ties)"
        else:
            record["reason"] = "no validation split: the online student A is kept"
        record["kept"] = kept
        atomic.write_json(out / layout.DUAL_SKD, record)


__all__ = ["SKD_MODES", "DualSKDTask", "ema_update"]
