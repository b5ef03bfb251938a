"""Domain-gap (DG) adaptation from a labelled source domain to an unlabelled target domain (HybridNet-XR -DG).

Two unsupervised adaptation methods, used together:

* **CORAL** (Sun & Saenko 2016, :class:`~medlite.losses.coral.CORALLoss`): during training every step also
  encodes a batch of target images and adds ``coral_weight * ||cov(h_source) - cov(h_target)||^2 / (4 d^2)``
  on the pooled features ``h`` to the source cross-entropy. Target batches are normalised with their own
  batch statistics but leave the running statistics alone, so validation on the source stays meaningful.
* **AdaBN** (Li et al., "Revisiting Batch Normalization for Practical Domain Adaptation", ICLR-W 2017,
  arXiv 1603.04779): after training, every batch-norm layer's running mean and variance are re-estimated on
  the target images (a cumulative average over all of them), so the deployed model normalises target
  activations with target statistics. Models without batch norm (ViTs, SqueezeNet) get CORAL only.

The target source (:func:`~medlite.data.unlabelled.load_unlabelled`: any source, or a plain folder of images) is
preprocessed exactly like the source; its ``train`` split is used when it defines splits (so its ``test`` split
stays unseen), otherwise all its images. Target labels are never read.

Run directory: ``model.safetensors`` is the adapted model (AdaBN applied), the one to deploy on the target
domain; its ``metrics.json`` scores it on the *source* test split (how much source performance it keeps).
``source_bn/`` is a run directory holding the same weights with the source statistics (with its own source
``metrics.json``), so ``medlite evaluate RUNDIR --data TARGET`` can report what AdaBN changed
(:func:`adaptation_summary`).
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medlite.config import RunConfig, load_config
from medlite.data.prepared import PreparedData
from medlite.data.unlabelled import load_unlabelled
from medlite.losses.coral import CORALLoss
from medlite.metrics.split_eval import evaluate_split
from medlite.models.checkpoint import save_weights
from medlite.models.heads import features_and_logits, pooled_features
from medlite.paradigms.task import ClassifierTask
from medlite.rundir import layout, store
from medlite.utils import atomic


def batch_norms(model: nn.Module) -> list[_BatchNorm]:
    """The model's batch-norm layers that track running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@contextlib.contextmanager
def frozen_bn_statistics(model: nn.Module) -> Iterator[None]:
    """Within the block, batch norm in train mode normalises with batch statistics but does not update its
    running statistics (momentum 0: ``running = 1 * running + 0 * batch``)."""
    layers = batch_norms(model)
    saved = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(layers, saved, strict=True):
            m.momentum = momentum


@torch.no_grad()
def adapt_batchnorm(
    model: nn.Module,
    images: np.ndarray,
    indices: np.ndarray,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 64,
) -> int:
    """AdaBN: re-estimate every batch-norm layer's running statistics on ``images[indices]``.

    Args:
        model: the model, adapted in place and left in eval mode.
        images: uint8 (N, S, S) images (array or memmap) of the target domain.
        indices: which of them to use (at least 2).
        prepare: uint8 (B, 1, S, S) tensor -> model input (normalisation, channels, device).
        batch_size: images per forward pass (> 1, since batch statistics need several images).

    Returns:
        The number of batch-norm layers re-estimated (0 for models without batch norm).
    """
    layers = batch_norms(model)
    if not layers or len(indices) < 2:
        model.eval()
        return 0
    saved = [m.momentum for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every target batch counts equally
        m.train()
    try:
        order = np.sort(np.asarray(indices))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            if len(chunk) < 2:
                break  # a single image has no batch variance
            model(prepare(torch.from_numpy(np.ascontiguousarray(images[chunk]))[:, None]))
    finally:
        for m, momentum in zip(layers, saved, strict=True):
            m.momentum = momentum
        model.eval()
    return len(layers)


class DomainGapTask(ClassifierTask):
    """Source cross-entropy + CORAL towards unlabelled target images; AdaBN on the target after training.

    Args:
        model: a zoo model.
        target_images: uint8 (N, S, S) target-domain images (same preprocessing as the source).
        target_indices: int (M,) indices of ``target_images`` to adapt to (M >= 2).
        coral_weight: weight of the CORAL term (>= 0; 0 leaves AdaBN only).
        **kwargs: :class:`ClassifierTask` settings; target batches get the same augmentation as source ones.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        target_images: np.ndarray,
        target_indices: np.ndarray,
        coral_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.target_images = target_images
        self.target_indices = np.asarray(target_indices, dtype=np.int64)
        self.coral_weight = float(coral_weight)
        self.coral = CORALLoss()

    @classmethod
    def from_config(cls, model: nn.Module, *, cfg: RunConfig, data: PreparedData, out: Path,
                    **kwargs: Any) -> DomainGapTask:
        images, indices = load_unlabelled(cfg.train.target, cfg, option="--target")
        if not batch_norms(model):
            warnings.warn(
                f"{cfg.train.model} has no batch norm: AdaBN does nothing, DG adapts with CORAL only",
                UserWarning,
                stacklevel=2,
            )
        return cls(
            model, target_images=images, target_indices=indices, coral_weight=cfg.train.coral_weight, **kwargs
        )

    def _target_batch(self, n: int) -> torch.Tensor:
        # ClassifierTask reseeds torch's global RNG every step, so a resumed run draws the same batches.
        pick = self.target_indices[torch.randint(len(self.target_indices), (max(n, 2),)).numpy()]
        return torch.from_numpy(np.ascontiguousarray(self.target_images[np.sort(pick)]))[:, None].to(
            self.device
        )

    def training_loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        features, logits = features_and_logits(self.model, x)
        loss = self.cross_entropy(logits, targets)
        if self.coral_weight > 0:
            with frozen_bn_statistics(self.model):
                target_features = pooled_features(
                    self.model, self.prepare_inputs(self._target_batch(len(x)), train=True)
                )
            coral = self.coral(features, target_features)
            self.log("train_coral", coral, on_step=False, on_epoch=True, batch_size=len(targets))
            loss = loss + self.coral_weight * coral
        return loss

    def finalize(self, data: PreparedData, out: Path) -> None:
        """Keep the source-statistics model as ``out/source_bn`` (scored on the source test split there), then
        apply AdaBN on the target images."""
        write_source_bn_run(out, self.model, data, self.in_chans)
        device = next(self.model.parameters()).device
        adapt_batchnorm(
            self.model,
            self.target_images,
            self.target_indices,
            lambda b: self.prepare_inputs(b.to(device), train=False),
        )


def write_source_bn_run(out: Path, model: nn.Module, data: PreparedData, in_chans: int) -> Path:
    """Make ``out/source_bn`` a run directory of ``model`` as it is now (before AdaBN): config and split
    copied, ``run.json``, weights, and ``metrics.json`` on the source's test split (else validation split)."""
    sub = out / layout.SOURCE_BN_DIR
    sub.mkdir(parents=True, exist_ok=True)
    for name in (layout.CONFIG, layout.SPLITS):
        if (out / name).is_file():
            shutil.copyfile(out / name, sub / name)
    store.save_run_info(sub, load_config(out / layout.CONFIG), model, data.classes)
    save_weights(model, sub / layout.WEIGHTS)
    with torch.inference_mode():
        metrics = evaluate_split(model.eval(), data, data.eval_split, in_chans)
    atomic.write_json(sub / layout.METRICS, metrics)
    return sub


def adaptation_summary(adapted: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """What AdaBN changed on another source: the DG run's metrics beside those of its ``source_bn`` weights.

    Args:
        adapted: metrics of the DG run itself on the other source (usually the target domain).
        baseline: metrics of its ``source_bn`` run directory on the same images.

    Returns:
        ``{"adabn": {...}, "source_bn": {...}, "delta_accuracy": float, "delta_auc_macro": float | None}``;
        the inner dicts hold accuracy, balanced accuracy and macro AUC.
    """
    keys = ("accuracy", "balanced_accuracy", "auc_macro")
    rows = {name: {k: m.get(k) for k in keys} for name, m in (("adabn", adapted), ("source_bn", baseline))}
    auc = (rows["adabn"]["auc_macro"], rows["source_bn"]["auc_macro"])
    return {
        **rows,
        "delta_accuracy": rows["adabn"]["accuracy"] - rows["source_bn"]["accuracy"],
        "delta_auc_macro": None if None in auc else auc[0] - auc[1],
    }
