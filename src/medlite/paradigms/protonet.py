"""Prototypical networks on any zoo encoder (Snell et al. 2017; METHODS.md §9; the tiny-CNN comparative seed).

Training is episodic: every batch is one N-way K-shot Q-query episode of labelled training images
(:class:`~medlite.data.episodes.EpisodeSampler`); the encoder's pooled features go through a linear 128-d
:class:`~medlite.models.heads.EmbeddingHead`; the loss is the cross-entropy of the queries under a softmax over
negative squared Euclidean distances to the support prototypes.

Episodes are class-balanced by construction (K support images per class), so ``--balance`` and label
smoothing do not apply to the prototypical loss.

Validation (every epoch): prototypes of the labelled training images (at most ~2,048, a fixed stratified subset)
classify the whole validation split (``val_acc``, ``val_auc``, which checkpointing and early stopping follow),
and ``eval_episodes`` episodes drawn from the validation embeddings give ``val_episode_acc``.

After training (:meth:`ProtoNetTask.finalize`): the prototypes of *all* labelled training images, composed
with the linear embedding, become the model's linear classifier, so the run's ``model.safetensors`` is an
ordinary classifier with exactly the ProtoNet probabilities (``metrics.json`` is full test-set
classification; export, predict and explain work unchanged). The embedding head is saved as
``embedding.safetensors`` and ``episodic.json`` holds the mean accuracy ± 95 % CI over ``eval_episodes``
test episodes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlite.config import RunConfig
from medlite.data.episodes import EpisodeSampler, query_counts
from medlite.data.prepared import PreparedData
from medlite.losses.prototypical import class_prototypes, prototype_logits, prototypical_loss
from medlite.metrics.probes import episodes_possible, episodic_accuracy, fit_prototype_classifier
from medlite.models.checkpoint import save_weights
from medlite.models.heads import EmbeddingHead, pooled_features
from medlite.models.inputs import embed_images
from medlite.paradigms.task import ClassifierTask
from medlite.rundir import layout
from medlite.utils import atomic
from medlite.utils.seed import derive_seed

_BANK_LIMIT = 2048


def stratified_subset(indices: np.ndarray, labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most about ``limit`` of ``indices``, every class kept in proportion and with at least one image
    (all of them when there are fewer than ``limit``); sorted int64."""
    if len(indices) <= limit:
        return np.asarray(indices, dtype=np.int64)
    rng = np.random.default_rng(seed)
    keep = [rng.choice(indices[labels == c], max(1, round(limit * np.mean(labels == c))), replace=False)
            for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)).astype(np.int64)


class ProtoNetTask(ClassifierTask):
    """Episodic prototypical-network training of a zoo encoder with a linear embedding head.

    Args:
        model: the zoo model (its classifier is replaced by the prototype classifier after training).
        embedding_dim: width of the embedding (128).
        n_way: classes per episode (``None``: all).
        k_shot / q_query: support and query images per class and episode.
        episodes_per_epoch: training episodes per epoch.
        eval_episodes: validation and test episodes.
        bank_images: uint8 (N, S, S) array holding the labelled training images (the cache).
        bank_indices / bank_labels: the prototype bank for validation (labelled training images).
        **kwargs: :class:`ClassifierTask` settings; ``batch_size`` does not apply (a batch is an episode).
    """

    def __init__(self, model: nn.Module, *, embedding_dim: int = 128, n_way: int | None = None, k_shot: int = 5,
                 q_query: int = 15, episodes_per_epoch: int = 100, eval_episodes: int = 600,
                 bank_images: np.ndarray | None = None, bank_indices: np.ndarray | None = None,
                 bank_labels: np.ndarray | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.embedding = EmbeddingHead(model.num_features, embedding_dim)
        self.n_way, self.k_shot, self.q_query = n_way, k_shot, q_query
        self.episodes_per_epoch, self.eval_episodes = episodes_per_epoch, eval_episodes
        self.bank_images = bank_images
        self.bank_indices = np.zeros(0, np.int64) if bank_indices is None else np.asarray(bank_indices, np.int64)
        self.bank_labels = np.zeros(0, np.int64) if bank_labels is None else np.asarray(bank_labels, np.int64)
        self._val_embeddings: list[torch.Tensor] = []

    @classmethod
    def from_config(cls, model: nn.Module, *, cfg: RunConfig, data: PreparedData, out: Path,
                    **kwargs: Any) -> ProtoNetTask:
        t = cfg.train
        train_idx = data.indices("train")
        labels = data.cached.labels[train_idx]
        query_counts(labels, np.unique(labels), t.k_shot, t.q_query)  # fails now, not inside the first epoch
        bank = stratified_subset(train_idx, labels, _BANK_LIMIT, t.seed)
        return cls(model, embedding_dim=t.embedding_dim, n_way=t.n_way, k_shot=t.k_shot, q_query=t.q_query,
                   episodes_per_epoch=t.episodes_per_epoch, eval_episodes=t.eval_episodes,
                   bank_images=data.cached.images, bank_indices=bank, bank_labels=data.cached.labels[bank], **kwargs)

    def train_batch_sampler(self, labels: np.ndarray, epoch_fn: Callable[[], int]) -> EpisodeSampler:
        return EpisodeSampler(labels, n_way=self.n_way, k_shot=self.k_shot, q_query=self.q_query,
                              episodes=self.episodes_per_epoch, seed=self.seed, epoch_fn=epoch_fn)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Prepared images (B, in_chans, S, S) -> embeddings (B, embedding_dim)."""
        return self.embedding(pooled_features(self.model, x))

    # -- training ---------------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        torch.manual_seed(derive_seed(self.seed, self.current_epoch, batch_idx, self.global_rank))
        images, targets = batch  # one episode: N*K support images (class by class), then the queries
        classes = torch.unique(targets)
        n_support = len(classes) * self.k_shot
        local = torch.searchsorted(classes, targets)
        emb = self.embed(self.prepare_inputs(images, train=True))
        loss, acc = prototypical_loss(emb[:n_support], local[:n_support], emb[n_support:], local[n_support:])
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(targets))
        self.log("train_episode_acc", acc, on_step=False, on_epoch=True, batch_size=len(targets))
        return loss

    # -- validation -------------------------------------------------------------------------------------
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, targets = batch
        self._val_embeddings.append(self.embed(self.prepare_inputs(images, train=False)).float())
        self._val_targets.append(targets)

    def _bank_prototypes(self) -> torch.Tensor:
        bank = embed_images(self.model, self.bank_images, self.bank_indices,
                            lambda b: self.prepare_inputs(b, train=False), device=self.device, head=self.embedding)
        labels = torch.from_numpy(self.bank_labels).to(self.device)
        return class_prototypes(bank, labels, self.num_classes)

    def on_validation_epoch_end(self) -> None:
        if not self._val_embeddings or self.bank_images is None or len(self.bank_indices) == 0:
            self._val_embeddings.clear()
            self._val_targets.clear()
            return
        embeddings, targets = torch.cat(self._val_embeddings), torch.cat(self._val_targets)
        self._val_embeddings.clear()
        self._val_targets.clear()
        with torch.no_grad():
            probs = prototype_logits(embeddings, self._bank_prototypes()).softmax(dim=1)
        self.log_validation(probs, targets)
        present = torch.unique(targets)
        if len(present) >= 2 and int(torch.bincount(targets)[present].min()) > self.k_shot:  # silent: every epoch
            episodic = episodic_accuracy(embeddings.cpu(), targets.cpu().numpy(), n_way=self.n_way,
                                         k_shot=self.k_shot, q_query=self.q_query, episodes=self.eval_episodes,
                                         seed=self.seed)
            self.log("val_episode_acc", episodic["accuracy"])

    @classmethod
    def notes(cls, run_dir: Path) -> list[str]:
        """The test episodes' accuracy (``episodic.json``)."""
        return episodic_note(run_dir / layout.EPISODIC)

    # -- after training -------------------------------------------------------------------------------
    def finalize(self, data: PreparedData, out: Path) -> None:
        """Fold the prototypes of every labelled training image into the classifier; score test episodes."""
        model, head = self.model.eval(), self.embedding.eval()
        device = next(model.parameters()).device

        def prepare(b: torch.Tensor) -> torch.Tensor:
            return self.prepare_inputs(b, train=False)

        train_idx = data.indices("train")
        with torch.no_grad():
            bank = embed_images(model, data.cached.images, train_idx, prepare, device=device, head=head).cpu()
        fit_prototype_classifier(model, bank, data.cached.labels[train_idx], self.num_classes, head=head)
        save_weights(head, out / layout.EMBEDDING, metadata={"medlite_part": "protonet_embedding"})
        split = data.eval_split
        split_idx = data.indices(split, labelled_only=False)
        if not episodes_possible(data.cached.labels[split_idx], self.k_shot, f"the {split} split"):
            return
        with torch.no_grad():
            features = embed_images(model, data.cached.images, split_idx, prepare, device=device, head=head).cpu()
        episodic = episodic_accuracy(features, data.cached.labels[split_idx], n_way=self.n_way, k_shot=self.k_shot,
                                     q_query=self.q_query, episodes=self.eval_episodes, seed=self.seed)
        atomic.write_json(out / layout.EPISODIC, {**episodic, "split": split})


def episodic_note(path: Path) -> list[str]:
    """One line on an ``episodic.json`` (ProtoNet runs, the prototype baseline), or none without the file."""
    if not path.is_file():
        return []
    e = atomic.read_json(path)
    per_class = e.get("queries_per_class") or [e["q_query"]]  # older episodic.json files: the request only
    lo, hi, asked = min(per_class), max(per_class), e.get("q_query_requested", e["q_query"])
    used = str(lo) if lo == hi else f"{lo}-{hi}"
    queries = f"{asked} queries" if lo == asked else f"{used} queries per class of {asked} asked"
    return [f"{e['episodes']} {e['split']} episodes ({e['n_way']}-way {e['k_shot']}-shot, {queries}): accuracy "
            f"{e['accuracy']:.3f} (95% CI {e['ci95'][0]:.3f}-{e['ci95'][1]:.3f})"]


__all__ = ["ProtoNetTask", "episodic_note"]
