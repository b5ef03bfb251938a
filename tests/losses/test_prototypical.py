"""Prototypes, distance logits, their linear form and the episode loss against NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlite.errors import MedliteError
from medlite.losses.prototypical import class_prototypes, prototype_linear, prototype_logits, prototypical_loss


def _reference_loss(support, s_labels, query, q_labels):
    """Snell et al. 2017, eq. 2 and the episode loss, written out in NumPy."""
    classes = np.unique(s_labels)
    protos = np.stack([support[s_labels == c].mean(0) for c in classes])
    d2 = ((query[:, None, :] - protos[None]) ** 2).sum(-1)
    logits = -d2
    log_p = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(
        1, keepdims=True)
    loss = -log_p[np.arange(len(q_labels)), q_labels].mean()
    return loss, (logits.argmax(1) == q_labels).mean()


def test_prototypes_are_class_means_and_absent_classes_are_nan():
    emb = torch.tensor([[0.0, 2.0], [2.0, 4.0], [10.0, 10.0]])
    protos = class_prototypes(emb, torch.tensor([0, 0, 2]), 4)
    np.testing.assert_allclose(protos[0], [1.0, 3.0])
    np.testing.assert_allclose(protos[2], [10.0, 10.0])
    assert torch.isnan(protos[1]).all() and torch.isnan(protos[3]).all()
    logits = prototype_logits(torch.tensor([[1.0, 3.0]]), protos)
    assert logits[0, 0] == 0 and logits[0, 2] == -(81 + 49)
    assert torch.isinf(logits[0, 1]) and logits.softmax(1)[0, 1] == 0


def test_episode_loss_matches_numpy():
    rng = np.random.default_rng(0)
    support = rng.normal(size=(15, 8)).astype(np.float32)
    s_labels = np.repeat(np.arange(3), 5)
    query = rng.normal(size=(9, 8)).astype(np.float32)
    q_labels = np.array([0, 1, 2, 2, 1, 0, 0, 1, 2])
    loss, acc = prototypical_loss(torch.from_numpy(support), torch.from_numpy(s_labels), torch.from_numpy(query),
                                  torch.from_numpy(q_labels))
    ref_loss, ref_acc = _reference_loss(support, s_labels, query, q_labels)
    assert float(loss) == pytest.approx(ref_loss, rel=1e-5)
    assert float(acc) == pytest.approx(ref_acc)


def test_gradients_reach_the_embeddings():
    support = torch.randn(6, 4, requires_grad=True)
    query = torch.randn(4, 4, requires_grad=True)
    loss, _ = prototypical_loss(support, torch.tensor([0, 0, 0, 1, 1, 1]), query, torch.tensor([0, 1, 0, 1]))
    loss.backward()
    assert support.grad.abs().sum() > 0 and query.grad.abs().sum() > 0


def test_the_linear_form_gives_the_same_probabilities():
    rng = np.random.default_rng(1)
    protos = torch.from_numpy(rng.normal(size=(4, 16))).float()
    protos[2] = float("nan")  # a class with no reference image
    feats = torch.from_numpy(rng.normal(size=(10, 16))).float()
    weight, bias = prototype_linear(protos)
    linear = feats @ weight.T + bias
    np.testing.assert_allclose(linear.softmax(1), prototype_logits(feats, protos).softmax(1), atol=1e-5)
    # exactly the distances up to the per-row constant ||f||^2
    d = prototype_logits(feats, protos)
    present = [0, 1, 3]
    np.testing.assert_allclose(linear[:, present] - (feats**2).sum(1, keepdim=True), d[:, present], atol=1e-4)


def test_a_class_without_support_is_refused():
    with pytest.raises(MedliteError, match="at least one support image"):
        prototypical_loss(torch.randn(2, 3), torch.tensor([0, 2]), torch.randn(2, 3), torch.tensor([0, 2]))
