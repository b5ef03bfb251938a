"""N-way K-shot episodes: layout, disjoint support and query, determinism, small classes."""

from __future__ import annotations

import numpy as np
import pytest

from medlite.data.episodes import EpisodeSampler, sample_episode
from medlite.errors import DataError

LABELS = np.repeat(np.arange(4), [30, 12, 20, 25])


def test_episode_layout_and_disjoint_sets():
    ep = sample_episode(LABELS, 3, 5, 4, np.random.default_rng(0))
    assert len(ep.classes) == 3 and ep.n_support == 15 and len(ep.indices) == 15 + 12
    support, query = ep.indices[:15], ep.indices[15:]
    assert not set(support) & set(query) and len(set(ep.indices)) == len(ep.indices)
    assert LABELS[support].tolist() == np.repeat(ep.classes, 5).tolist()  # class by class, K each
    assert LABELS[query].tolist() == np.repeat(ep.classes, 4).tolist()


def test_all_classes_by_default_and_a_subset_otherwise():
    sampler = EpisodeSampler(LABELS, n_way=None, k_shot=2, q_query=3, episodes=10, seed=0)
    assert sampler.n_way == 4
    seen = set()
    for indices in EpisodeSampler(LABELS, n_way=2, k_shot=2, q_query=3, episodes=30, seed=0):
        classes = set(LABELS[indices])
        assert len(classes) == 2
        seen.add(tuple(sorted(classes)))
    assert len(seen) > 3  # different class pairs in different episodes


def test_episodes_depend_only_on_seed_and_epoch():
    epoch = {"value": 0}
    sampler = EpisodeSampler(LABELS, n_way=None, k_shot=5, q_query=5, episodes=4, seed=7,
                             epoch_fn=lambda: epoch["value"])
    first = list(sampler)
    assert list(sampler) == first and len(first) == 4
    epoch["value"] = 1
    assert list(sampler) != first
    epoch["value"] = 0
    again = EpisodeSampler(LABELS, n_way=None, k_shot=5, q_query=5, episodes=4, seed=7, epoch_fn=lambda: 0)
    assert list(again) == first


def test_small_classes_get_fewer_queries_and_tiny_ones_are_refused():
    labels = np.repeat([0, 1], [20, 7])
    with pytest.warns(UserWarning, match=r"classes \[1\] have too few images"):
        sampler = EpisodeSampler(labels, n_way=None, k_shot=5, q_query=5, episodes=2, seed=0)
    indices = next(iter(sampler))
    assert np.sum(labels[indices[10:]] == 1) == 2
    with pytest.raises(DataError, match="class index 1 has 5 image"):
        EpisodeSampler(np.repeat([0, 1], [20, 5]), n_way=None, k_shot=5, q_query=5, episodes=2, seed=0)
    with pytest.raises(DataError, match="at least 2 classes"):
        EpisodeSampler(np.zeros(30, int), n_way=None, k_shot=5, q_query=5, episodes=2, seed=0)
