"""N-way K-shot Q-query episodes for prototypical networks (Snell et al. 2017; METHODS.md §9).

An episode draws ``n_way`` classes, then ``k_shot`` support and ``q_query`` query images of each, without
replacement and disjoint (a support image is never its own query). :class:`EpisodeSampler` is a batch sampler:
each batch is one episode laid out as ``[support of class 0..N-1 (K each), query of class 0..N-1]``, so the
paradigm can split it by position. Episodes depend only on ``(seed, epoch, episode)``, so an interrupted and
resumed run sees the same episodes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from medlite.errors import DataError
from medlite.utils.seed import derive_seed


@dataclass(frozen=True)
class Episode:
    """Positions (into the sampled index list) and classes of one episode.

    Attributes:
        indices: int64 (N*K + M,) dataset positions: the N*K support images, then the M query images.
        classes: int64 (N,) the global class of each episode-local class ``0..N-1``.
        n_support: N*K, where the query images start.
    """

    indices: np.ndarray
    classes: np.ndarray
    n_support: int


def query_counts(labels: np.ndarray, classes: np.ndarray, k_shot: int, q_query: int) -> dict[int, int]:
    """Queries per class: ``q_query``, fewer for a class with under ``k_shot + q_query`` images.

    Raises:
        DataError: a class has ``k_shot`` images or fewer (no query would be left).
    """
    counts = {}
    for c in classes:
        n = int(np.sum(labels == c))
        if n <= k_shot:
            raise DataError(f"class index {int(c)} has {n} image(s) in this split; a {k_shot}-shot episode needs "
                            f"at least {k_shot + 1} (lower --k-shot or raise --fraction)")
        counts[int(c)] = min(q_query, n - k_shot)
    return counts


def sample_episode(labels: np.ndarray, n_way: int, k_shot: int, q_query: int, rng: np.random.Generator,
                   queries: dict[int, int] | None = None) -> Episode:
    """One episode over a label array (positions index ``labels``).

    Args:
        labels: int (N,) class of every image of the split.
        n_way: classes per episode (at most the number of classes present).
        k_shot: support images per class.
        q_query: query images per class (fewer for a small class, see :func:`query_counts`).
        rng: the random generator.
        queries: precomputed :func:`query_counts` (saves a pass over ``labels``).
    """
    present = np.unique(labels)
    classes = np.sort(rng.choice(present, size=n_way, replace=False)) if n_way < len(present) else present
    queries = queries or query_counts(labels, classes, k_shot, q_query)
    support, query = [], []
    for c in classes:
        pool = rng.permutation(np.flatnonzero(labels == c))
        support.append(pool[:k_shot])
        query.append(pool[k_shot:k_shot + queries[int(c)]])
    indices = np.concatenate(support + query).astype(np.int64)
    return Episode(indices=indices, classes=classes.astype(np.int64), n_support=len(classes) * k_shot)


class EpisodeSampler:
    """Batch sampler of ``episodes`` episodes per epoch over a split's labels.

    Args:
        labels: int (N,) labels of the dataset the loader indexes (its positions are yielded).
        n_way: classes per episode; ``None`` or a value >= the classes present means all of them.
        k_shot / q_query: support and query images per class.
        episodes: episodes per epoch.
        seed: run seed.
        epoch_fn: returns the current epoch (the trainer's), so episodes follow ``(seed, epoch)``.
    """

    def __init__(self, labels: np.ndarray, *, n_way: int | None, k_shot: int, q_query: int, episodes: int,
                 seed: int, epoch_fn: Callable[[], int] | None = None) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        present = np.unique(self.labels)
        if len(present) < 2:
            raise DataError(f"episodes need at least 2 classes with images; this split has {len(present)}")
        self.n_way = len(present) if n_way is None else min(int(n_way), len(present))
        if self.n_way < 2:
            raise DataError(f"--n-way must be >= 2, got {n_way}")
        self.k_shot, self.q_query, self.episodes, self.seed = int(k_shot), int(q_query), int(episodes), seed
        self.epoch_fn = epoch_fn
        self.epoch = 0
        self.queries = query_counts(self.labels, present, self.k_shot, self.q_query)
        short = {c: q for c, q in self.queries.items() if q < self.q_query}
        if short:
            warnings.warn(f"episodes: classes {sorted(short)} have too few images for {self.q_query} queries after "
                          f"{self.k_shot} support images; using {min(short.values())}-{max(short.values())}",
                          UserWarning, stacklevel=2)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.episodes

    def episode(self, epoch: int, i: int) -> Episode:
        """Episode ``i`` of ``epoch`` (the same for every call)."""
        rng = np.random.default_rng(derive_seed(self.seed, epoch, i))
        return sample_episode(self.labels, self.n_way, self.k_shot, self.q_query, rng, self.queries)

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
        for i in range(self.episodes):
            yield self.episode(epoch, i).indices.tolist()


__all__ = ["Episode", "EpisodeSampler", "query_counts", "sample_episode"]
