"""Prototypical-network pieces: class prototypes, distance logits and the episode loss.

Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017 (arXiv 1703.05175;
METHODS.md §9): a class is the mean embedding of its support images, and a query's class probabilities are a
softmax over negative squared Euclidean distances to the prototypes.

Because ``-||f - c_k||^2 = 2 c_k . f - ||c_k||^2 - ||f||^2`` and the last term is the same for every class,
the prototype classifier is a *linear* layer on the embedding (:func:`prototype_linear`): with a linear
embedding head it folds into a zoo model's own classifier, so a ProtoNet run is an ordinary model for
evaluation, export and explanation, with exactly the ProtoNet probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from medlite.errors import MedliteError

#: Bias of a class without reference images in the linear form: its probability is 0 for every input.
ABSENT_BIAS = -1e30


def class_prototypes(embeddings: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Mean embedding per class.

    Args:
        embeddings: float (N, D).
        labels: int64 (N,) in ``[0, num_classes)``.
        num_classes: C.

    Returns:
        float (C, D); a class without any embedding gets a row of NaN (it cannot be predicted).
    """
    sums = torch.zeros(num_classes, embeddings.shape[1], dtype=embeddings.dtype, device=embeddings.device)
    sums.index_add_(0, labels, embeddings)
    counts = torch.bincount(labels, minlength=num_classes).to(embeddings.dtype).unsqueeze(1)
    return sums / counts  # 0/0 = NaN for absent classes, on purpose


def prototype_logits(query: Tensor, prototypes: Tensor) -> Tensor:
    """Negative squared Euclidean distances ``-||q - c_k||^2``: (M, D), (C, D) -> (M, C).

    Classes whose prototype is NaN get ``-inf`` (probability 0).
    """
    logits = -torch.cdist(query.float(), prototypes.float().nan_to_num(0.0)).pow(2)
    absent = torch.isnan(prototypes).any(dim=1)
    return logits.masked_fill(absent.unsqueeze(0), float("-inf"))


def prototype_linear(prototypes: Tensor) -> tuple[Tensor, Tensor]:
    """``(weight (C, D), bias (C,))`` with ``f @ weight.T + bias = prototype_logits(f, prototypes) + ||f||^2``.

    The added ``||f||^2`` is the same for every class, so the softmax (and every prediction) is unchanged.
    Absent (NaN) classes get a zero weight and a bias of -1e30, below any logit of a present class (those are
    ``>= -||f - c_k||^2`` > -1e30 for any finite float32 embedding of reasonable size), so they are never predicted.
    """
    absent = torch.isnan(prototypes).any(dim=1)
    protos = prototypes.float().nan_to_num(0.0)
    bias = -(protos**2).sum(dim=1)
    return 2.0 * protos, bias.masked_fill(absent, ABSENT_BIAS)


def prototypical_loss(support: Tensor, support_labels: Tensor, query: Tensor, query_labels: Tensor) -> tuple[
        Tensor, Tensor]:
    """Episode loss and accuracy: cross-entropy of the queries under the support prototypes.

    Args:
        support: float (N*K, D) support embeddings.
        support_labels: int64 (N*K,) episode-local classes in ``[0, N)``, every class present.
        query: float (M, D) query embeddings.
        query_labels: int64 (M,) their episode-local classes.

    Returns:
        ``(loss, accuracy)``: scalar mean ``-log p(y | x)`` over the queries, and the share classified right.
    """
    n_way = int(support_labels.max()) + 1
    if torch.bincount(support_labels, minlength=n_way).min() == 0:
        raise MedliteError("prototypical loss: every episode class needs at least one support image")
    logits = prototype_logits(query, class_prototypes(support.float(), support_labels, n_way))
    loss = F.cross_entropy(logits, query_labels)
    return loss, (logits.argmax(dim=1) == query_labels).float().mean()


__all__ = ["class_prototypes", "prototype_linear", "prototype_logits", "prototypical_loss"]
