"""The LightningDataModule that feeds cached uint8 images to every training paradigm.

Images stay uint8 (1, S, S) until they reach the paradigm, which converts, augments and normalises whole
batches on the training device (DESIGN.md: "augment batched tensors"). Shuffling is seeded by (seed, epoch),
so an interrupted and resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from medlite.utils.seed import derive_seed


class CachedImages(Dataset):
    """Index a uint8 image array; items are ``(uint8 tensor (1, S, S), int64 label)``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: Sequence[int]) -> None:
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = int(self.indices[i])
        image = torch.from_numpy(np.array(self.images[j], dtype=np.uint8, copy=True))[None]
        return image, torch.tensor(self.labels[j])


class EpochSeededSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on ``(seed, epoch)``.

    With ``weights`` it draws ``len(weights)`` indices with replacement in proportion to them (class-balanced
    sampling); otherwise it returns a permutation. ``epoch_fn`` (e.g. the trainer's current epoch) takes
    precedence over :meth:`set_epoch`: Lightning's own epoch counter for ``set_epoch`` lags by one after resuming
    from a checkpoint written at the end of validation.
    """

    def __init__(self, n: int, seed: int, weights: np.ndarray | None = None,
                 epoch_fn: Callable[[], int] | None = None) -> None:
        self.n = n
        self.seed = seed
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.epoch = 0
        self.epoch_fn = epoch_fn

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=generator)
        else:
            order = torch.randperm(self.n, generator=generator)
        return iter(order.tolist())


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse-frequency weights per class, normalised to mean 1 over the classes present; float32 (C,)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max((counts > 0).sum(), 1), 0.0)
    return weights.astype(np.float32)


class XrayDataModule(pl.LightningDataModule):
    """Train / val / test loaders over one cached image array.

    Args:
        images: uint8 (N, S, S) array (usually the preprocessing cache's memmap).
        labels: int64 (N,) class indices.
        split_indices: ``{"train": idx, "val": idx, "test": idx}``; ``train`` already reduced to the labelled fraction.
        batch_size: images per batch (per process under DDP).
        seed: shuffling seed.
        balanced_sampler: draw training images in inverse proportion to their class frequency.
        num_workers: DataLoader workers (0 is fastest for a memmap on 2 cores).
        batch_sampler: ``f(train_labels, epoch_fn) -> batch sampler or None``; a sampler replaces the shuffled
            batches of the training loader (episodic training yields one episode per batch).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        split_indices: dict[str, np.ndarray],
        *,
        batch_size: int = 32,
        seed: int = 0,
        balanced_sampler: bool = False,
        num_workers: int = 0,
        batch_sampler: Callable[[np.ndarray, Callable[[], int]], Sampler[list[int]] | None] | None = None,
    ) -> None:
        super().__init__()
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.split_indices = split_indices
        self.batch_size = batch_size
        self.seed = seed
        self.balanced_sampler = balanced_sampler
        self.num_workers = num_workers
        self.batch_sampler = batch_sampler

    def _dataset(self, split: str) -> CachedImages:
        return CachedImages(self.images, self.labels, self.split_indices.get(split, np.zeros(0, np.int64)))

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset("train")
        weights = None
        if self.balanced_sampler:
            train_labels = self.labels[dataset.indices]
            weights = class_weights(train_labels, int(self.labels.max()) + 1)[train_labels]
        trainer = self.trainer
        epoch_fn = (lambda: trainer.current_epoch) if trainer is not None else None
        if self.batch_sampler is not None:
            episodes = self.batch_sampler(self.labels[dataset.indices], epoch_fn or (lambda: 0))
            if episodes is not None:
                return DataLoader(dataset, batch_sampler=episodes, num_workers=self.num_workers,
                                  persistent_workers=self.num_workers > 0)
        sampler = EpochSeededSampler(len(dataset), self.seed, weights, epoch_fn=epoch_fn)
        # drop_last avoids a final batch of 1, which BatchNorm cannot normalise in training mode.
        drop_last = len(dataset) > self.batch_size
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(self._dataset(split), batch_size=max(self.batch_size, 64), shuffle=False,
                          num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_loader(self, split: str) -> DataLoader:
        """A non-shuffled loader over any split (used by evaluation)."""
        return self._eval_loader(split)
