"""SimCLR self-supervised pre-training ("pre-warming", HybridNet-XR -PW) and its evaluation.

Chen et al., ICML 2020 (arXiv 2002.05709) adapted to radiographs as METHODS.md §7 describes: two X-ray-safe
views per image (:class:`~medlite.data.augment.SimCLRViews`: crop, small rotation, flip, brightness/contrast/
gamma, mild blur and noise; no hue/saturation/grayscale), the encoder's pooled features ``h``, a 2-layer
projection head to 128-d, NT-Xent with tau 0.5. Labels are ignored: every image of the training split is used,
labelled or not, together with the images of any extra ``unlabelled`` sources (``--unlabelled``: other sources or
plain image folders, preprocessed like the run's data; see :mod:`medlite.data.unlabelled`).

Monitoring: every validation epoch a weighted k-nearest-neighbour classifier (cosine similarity, k = 20, as in
Wu et al. 2018 / lightly's ``knn_predict``) labels the validation images from the labelled training images;
its accuracy (``val_knn_acc``) and macro AUC (``val_auc``, which checkpointing and early stopping follow) are
logged. After training the encoder is saved (``encoder.safetensors``, the classifier left out) and a linear
probe (logistic regression on frozen ``h`` of the labelled training images) becomes the classifier, so the run
directory holds a usable model whose test metrics measure the representation.

``simclr-pw`` chains this phase (``RUNDIR/pretrain``, ``pretrain_epochs``) with supervised fine-tuning from
the encoder (``RUNDIR``, ``epochs``): :func:`pretrain_encoder`.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from medlite.data.augment import SimCLRViews, XrayAugmentConfig
from medlite.losses.contrastive import NTXentLoss
from medlite.metrics.probes import knn_predict, linear_probe
from medlite.models.checkpoint import save_encoder
from medlite.models.heads import SimCLRProjectionHead, pooled_features
from medlite.models.inputs import embed_images, normalise_batch
from medlite.paradigms.supervised import SupervisedTask
from medlite.paradigms.task import ClassifierTask, TrainFn
from medlite.rundir import layout

if TYPE_CHECKING:
    from medlite.config import RunConfig
    from medlite.data.prepared import PreparedData


class SimCLRTask(ClassifierTask):
    """SimCLR pre-training of a zoo model's encoder with a kNN validation monitor.

    Args:
        model: the zoo model; its classifier is untouched during pre-training.
        temperature: NT-Xent tau (0.5 for batches up to 512, METHODS.md §7).
        gather_distributed: under DDP, NT-Xent negatives from every process's batch (:class:`NTXentLoss`).
        projection_dim: output width of the projection head (128); its hidden width is ``model.num_features``.
        knn_images: uint8 (N, S, S) array holding the kNN reference images (usually the preprocessing cache).
        knn_indices: int (M,) indices of labelled training images in ``knn_images`` used as the kNN bank.
        knn_labels: int64 (M,) their classes.
        knn_k: neighbours of the kNN monitor.
        views: augmentation of each view; ``None`` is :meth:`XrayAugmentConfig.simclr`.
        **kwargs: :class:`ClassifierTask` settings (lr, optimiser, warm-up, seed ...); ``augment`` is ignored.
    """

    uses_labels = False

    def __init__(
        self,
        model: nn.Module,
        *,
        temperature: float = 0.5,
        gather_distributed: bool = True,
        projection_dim: int = 128,
        knn_images: np.ndarray | None = None,
        knn_indices: np.ndarray | None = None,
        knn_labels: np.ndarray | None = None,
        knn_k: int = 20,
        views: XrayAugmentConfig | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs["augment"] = None  # the two views replace the supervised augmentation
        super().__init__(model, **kwargs)
        self.views = SimCLRViews(views)
        self.projection = SimCLRProjectionHead(model.num_features, model.num_features, projection_dim)
        self.criterion = NTXentLoss(temperature, gather_distributed=gather_distributed)
        self.knn_images = knn_images
        self.knn_indices = np.zeros(0, np.int64) if knn_indices is None else np.asarray(knn_indices, np.int64)
        self.knn_labels = np.zeros(0, np.int64) if knn_labels is None else np.asarray(knn_labels, np.int64)
        self.knn_k = knn_k
        self._val_features: list[torch.Tensor] = []

    @classmethod
    def from_config(cls, model: nn.Module, *, cfg: RunConfig, data: PreparedData, out: Path,
                    **kwargs: Any) -> SimCLRTask:
        """The kNN bank is at most 2,048 labelled training images (a fixed random subset), which bounds the
        cost of the per-epoch monitor to one forward pass over them."""
        labelled = data.indices("train")
        if len(labelled) > 2048:
            labelled = np.sort(np.random.default_rng(cfg.train.seed).choice(labelled, 2048, replace=False))
        return cls(
            model,
            temperature=cfg.train.temperature,
            gather_distributed=cfg.train.simclr_gather_distributed,
            knn_images=data.cached.images,
            knn_indices=labelled,
            knn_labels=data.cached.labels[labelled],
            **kwargs,
        )

    def prepare_inputs(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 (B, 1, S, S) -> normalised float; with ``train`` both views stacked: (2B, in_chans, S, S)."""
        if not train:
            return super().prepare_inputs(images, train=False)
        v1, v2 = self.views(images.float().div_(255.0))
        # One pass over both views (2B images) uses the CPU better than two passes of B.
        x = normalise_batch(torch.cat([v1, v2]), self.mean, self.std, self.in_chans)
        return (
            x.contiguous(memory_format=torch.channels_last)
            if self.channels_last and x.device.type == "cpu"
            else x
        )

    def training_loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """NT-Xent between the projections of the two views in ``x`` (2B images); ``targets`` are ignored."""
        z1, z2 = self.projection(pooled_features(self.model, x)).chunk(2)
        return self.criterion(z1, z2)

    # -- kNN monitor ----------------------------------------------------------------------------------
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, targets = batch
        self._val_features.append(
            pooled_features(self.model, self.prepare_inputs(images, train=False)).float()
        )
        self._val_targets.append(targets)

    def on_validation_epoch_end(self) -> None:
        if not self._val_features or len(self.knn_indices) == 0 or self.knn_images is None:
            self._val_features.clear()
            self._val_targets.clear()
            return
        features = torch.cat(self._val_features)
        targets = torch.cat(self._val_targets)
        self._val_features.clear()
        self._val_targets.clear()
        with torch.no_grad():
            bank = embed_images(
                self.model,
                self.knn_images,
                self.knn_indices,
                lambda b: self.prepare_inputs(b, train=False),
                device=self.device,
            )
            probs = knn_predict(
                bank, torch.from_numpy(self.knn_labels), features, self.num_classes, self.knn_k
            )
        # kNN accuracy and macro AUC: what checkpointing and early stopping follow.
        self.log_validation(probs, targets, acc_name="val_knn_acc")

    # -- after training -------------------------------------------------------------------------------
    @classmethod
    def notes(cls, run_dir: Path) -> list[str]:
        return ["test metrics are those of a linear probe (logistic regression) on the frozen SimCLR encoder"]

    def finalize(self, data: PreparedData, out: Path) -> None:
        """Save the encoder, then fit a linear probe on the labelled training images as the classifier."""
        model = self.model.eval()
        save_encoder(model, out / layout.ENCODER)
        labelled = data.indices("train")
        device = next(model.parameters()).device
        features = embed_images(
            model, data.cached.images, labelled, lambda b: self.prepare_inputs(b, train=False), device=device
        ).cpu()
        balanced = bool((self.class_weights != 1).any())  # the run balances its loss (--balance loss)
        linear_probe(
            model, features.numpy(), data.cached.labels[labelled], self.num_classes, balanced=balanced
        )


def pretrain_encoder(cfg: RunConfig, out: Path, train_fn: TrainFn, *, callbacks: Sequence[Any] = (),
                     progress: bool = True) -> Path:
    """Run (or resume, or reuse) the SimCLR phase of a ``simclr-pw`` run in ``out``; return its encoder file.

    The phase is a complete run directory with ``paradigm: simclr`` and ``epochs = pretrain_epochs`` and the
    same data settings and seed, hence the same split, trained by ``train_fn`` (the training workflow). A
    finished phase is reused, an interrupted one resumed from its ``last.ckpt``; one that never reached a
    checkpoint is started again.
    """
    encoder = out / layout.ENCODER
    if encoder.is_file() and (out / layout.WEIGHTS).is_file():
        return encoder
    resume = (out / layout.LAST_CKPT).is_file()
    if not resume and out.exists():
        shutil.rmtree(out)  # nothing in it survives a restart: no checkpoint was ever written
    phase = cfg.train.model_copy(update={"paradigm": "simclr", "epochs": cfg.train.pretrain_epochs})
    train_fn(cfg.model_copy(update={"train": phase}), out=out, resume=resume, callbacks=callbacks,
             progress=progress)
    return encoder


class PreWarmedTask(SupervisedTask):
    """``simclr-pw`` (HybridNet-XR -PW): supervised fine-tuning from the encoder of a SimCLR phase run first
    as the complete run directory ``RUNDIR/pretrain``."""

    @classmethod
    def before_fit(cls, cfg: RunConfig, out: Path, train_fn: TrainFn, *, callbacks: Sequence[Any] = (),
                   progress: bool = True) -> str | None:
        return str(pretrain_encoder(cfg, out / layout.PRETRAIN_DIR, train_fn, callbacks=callbacks,
                                    progress=progress))
