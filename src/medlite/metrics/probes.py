"""Probes of a representation: episodic accuracy, prototype classifiers, kNN and the linear probe.

As lightly keeps its kNN / linear-probe benchmarks apart from its training code, these live here, below the
paradigms that use them:

* :func:`episodic_accuracy` scores M N-way K-shot episodes drawn from one split's embeddings (METHODS.md §9:
  "average accuracy over many episodes, mean ± 95 % CI"). The embeddings are computed once, so 600 episodes
  cost no more forward passes than one.
* :func:`fit_prototype_classifier` installs nearest-prototype classification (prototypes = class means of the
  labelled training images) as a model's linear classifier (ProtoNet runs, and the "CE-pretrained encoder +
  prototypes" baseline ``medlite evaluate RUN --prototypes``).
* :func:`knn_predict`: the weighted kNN monitor of SimCLR; :func:`linear_probe`: logistic regression on frozen
  features installed as the classifier.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from medlite.data.episodes import query_counts, sample_episode
from medlite.errors import MedliteError
from medlite.losses.prototypical import class_prototypes, prototype_linear, prototypical_loss
from medlite.models.heads import EmbeddingHead, set_classifier
from medlite.utils.seed import derive_seed


def episodic_accuracy(features: torch.Tensor, labels: np.ndarray, *, n_way: int | None = None, k_shot: int = 5,
                      q_query: int = 15, episodes: int = 600, seed: int = 0) -> dict[str, Any]:
    """Accuracy over ``episodes`` N-way K-shot episodes sampled from one split.

    Args:
        features: float (N, D) embeddings of the split's images.
        labels: int (N,) their classes.
        n_way: classes per episode (``None``: all present).
        k_shot / q_query: support and query images per class (fewer queries for small classes).
        episodes: M.
        seed: episodes depend only on it.

    Returns:
        ``{"episodes", "n_way", "k_shot", "q_query", "q_query_requested", "queries_per_class", "accuracy"
        (mean), "sd", "ci95": [lo, hi]}`` with the normal-approximation interval ``mean ± 1.96 sd / sqrt(M)``
        (Snell et al.'s reporting). ``q_query`` is the most queries a class had (``queries_per_class``, in class
        order, lists each; a small class gets fewer than ``q_query_requested``, with a warning).
    """
    labels = np.asarray(labels, dtype=np.int64)
    present = np.unique(labels)
    if len(present) < 2:
        raise MedliteError(f"episodic evaluation needs images of at least 2 classes, got {len(present)}")
    ways = len(present) if n_way is None else min(n_way, len(present))
    queries = query_counts(labels, present, k_shot, q_query)
    used = sorted(set(queries.values()))
    if used[0] < q_query:
        warnings.warn(f"episodes: the split has too few images for {q_query} queries per class after {k_shot} "
                      f"support images; used {'-'.join(map(str, sorted({used[0], used[-1]})))} (per class "
                      f"{[queries[int(c)] for c in present]})", UserWarning, stacklevel=2)
    accs = []
    for i in range(episodes):
        ep = sample_episode(labels, ways, k_shot, q_query, np.random.default_rng(derive_seed(seed, 600, i)), queries)
        local = torch.from_numpy(np.searchsorted(ep.classes, labels[ep.indices]))
        chosen = features[torch.from_numpy(ep.indices)]
        _, acc = prototypical_loss(chosen[: ep.n_support], local[: ep.n_support], chosen[ep.n_support:],
                                   local[ep.n_support:])
        accs.append(float(acc))
    mean, sd = float(np.mean(accs)), float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0
    half = 1.96 * sd / math.sqrt(len(accs))
    return {"episodes": episodes, "n_way": ways, "k_shot": k_shot, "q_query": used[-1], "q_query_requested": q_query,
            "queries_per_class": [queries[int(c)] for c in present], "accuracy": mean, "sd": sd,
            "ci95": [mean - half, mean + half]}


def episodes_possible(labels: np.ndarray, k_shot: int, where: str) -> bool:
    """Whether ``labels`` (int (N,)) allow K-shot episodes (>= 2 classes, each with more than ``k_shot`` images);
    warns with the class counts when not."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    present = counts[counts > 0]
    if len(present) >= 2 and (present > k_shot).all():
        return True
    warnings.warn(f"{where} has too few images per class for {k_shot}-shot episodes (counts {counts.tolist()}); "
                  f"no episodic accuracy", UserWarning, stacklevel=3)
    return False


def fit_prototype_classifier(model: nn.Module, features: torch.Tensor, labels: np.ndarray, num_classes: int,
                             head: nn.Module | None = None) -> torch.Tensor:
    """Make ``model``'s classifier the nearest-prototype rule (squared Euclidean) in place.

    Args:
        model: a zoo model; its classifier maps ``num_features`` -> ``num_classes``.
        features: float (N, E) embeddings of labelled reference images: the pooled features ``h``, or
            ``head(h)`` when ``head`` is given.
        labels: int (N,) their classes.
        num_classes: C; a class without reference images can never be predicted.
        head: the linear embedding (an ``nn.Linear`` or :class:`~medlite.models.heads.EmbeddingHead`,
            ``h -> W h + b``) that ``features`` went through; it is folded into the classifier.

    Returns:
        The prototypes, float (C, E).
    """
    prototypes = class_prototypes(features.float().cpu(), torch.as_tensor(labels, dtype=torch.int64), num_classes)
    weight, bias = prototype_linear(prototypes)
    if head is not None:
        linear = head.proj if isinstance(head, EmbeddingHead) else head
        if not isinstance(linear, nn.Linear):
            kind = type(head).__name__
            raise MedliteError(f"fit_prototype_classifier: the embedding head must be linear, not {kind}")
        w_e = linear.weight.detach().float().cpu()
        b_e = linear.bias.detach().float().cpu() if linear.bias is not None else torch.zeros(w_e.shape[0])
        # logits = weight (W_e h + b_e) + bias = (weight W_e) h + (weight b_e + bias)
        weight, bias = weight @ w_e, weight @ b_e + bias
    set_classifier(model, weight, bias)
    return prototypes


def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    query: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Weighted kNN class probabilities (Wu et al., CVPR 2018; the usual SSL monitor).

    Args:
        bank: (M, D) features of labelled reference images.
        bank_labels: int64 (M,) their classes in [0, num_classes).
        query: (N, D) features to classify.
        num_classes: C.
        k: neighbours (capped at M).
        temperature: the vote of a neighbour with cosine similarity s is ``exp(s / temperature)``.

    Returns:
        float32 (N, C) probabilities: each class's share of the k neighbours' vote mass.
    """
    bank = torch.nn.functional.normalize(bank.float(), dim=1)
    query = torch.nn.functional.normalize(query.float(), dim=1)
    sims, idx = (query @ bank.T).topk(min(k, bank.shape[0]), dim=1)
    votes = torch.zeros(query.shape[0], num_classes, device=query.device)
    votes.scatter_add_(1, bank_labels.to(query.device)[idx], (sims / temperature).exp())
    return votes / votes.sum(dim=1, keepdim=True)


def linear_probe(
    model: nn.Module, features: np.ndarray, labels: np.ndarray, num_classes: int, balanced: bool = False
) -> float:
    """Fit multinomial logistic regression on frozen features and install it as the model's classifier.

    Args:
        model: a zoo model whose classifier maps ``num_features`` -> ``num_classes``.
        features: float (N, D) pooled features (:func:`embed_images`).
        labels: int (N,) classes; at least two classes must be present.
        num_classes: C; classes absent from ``labels`` get a logit far below the others.
        balanced: weight classes inversely to their frequency.

    Returns:
        Training accuracy of the probe.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    present = np.unique(labels)
    if len(present) < 2:
        raise MedliteError("linear probe: the labelled training images hold fewer than 2 classes")
    scaler = StandardScaler().fit(features)
    clf = LogisticRegression(max_iter=2000, class_weight="balanced" if balanced else None)
    clf.fit(scaler.transform(features), labels)
    coef = clf.coef_ if len(present) > 2 else np.vstack([np.zeros_like(clf.coef_), clf.coef_])
    intercept = clf.intercept_ if len(present) > 2 else np.concatenate([[0.0], clf.intercept_])
    # Fold the standardisation into the layer: w . (x - mu) / s + b = (w / s) . x + (b - w . mu / s).
    scaled = coef / scaler.scale_
    weight = np.zeros((num_classes, features.shape[1]))
    bias = np.full(num_classes, -1e4)
    weight[present] = scaled
    bias[present] = intercept - scaled @ scaler.mean_
    set_classifier(model, torch.from_numpy(weight).float(), torch.from_numpy(bias).float())
    return float(clf.score(scaler.transform(features), labels))


__all__ = ["episodes_possible", "episodic_accuracy", "fit_prototype_classifier", "knn_predict", "linear_probe"]
