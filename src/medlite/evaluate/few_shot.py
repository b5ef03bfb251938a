"""Few-shot evaluation: episodic accuracy with a 95 % CI, and prototype classifiers for any run.

* :func:`episodic_accuracy` scores M N-way K-shot episodes drawn from one split's embeddings (METHODS.md §9:
  "average accuracy over many episodes, mean ± 95 % CI"). The embeddings are computed once, so 600 episodes
  cost no more forward passes than one.
* :func:`fit_prototype_classifier` installs nearest-prototype classification (prototypes = class means of the
  labelled training images) as a model's linear classifier; with it, :func:`evaluate_with_prototypes` gives
  the "CE-pretrained encoder + prototypes" baseline of any finished run (``medlite evaluate RUN --prototypes``).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlite.data.episodes import query_counts, sample_episode
from medlite.errors import MedliteError
from medlite.losses.prototypical import class_prototypes, prototype_linear, prototypical_loss
from medlite.utils import rundir
from medlite.utils.seed import derive_seed

#: File of the episodic test evaluation in a run directory (ProtoNet runs, and ``eval-prototypes/``).
EPISODIC = "episodic.json"


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
        ``{"episodes", "n_way", "k_shot", "q_query", "accuracy" (mean), "sd", "ci95": [lo, hi]}`` with the
        normal-approximation interval ``mean ± 1.96 sd / sqrt(M)`` (Snell et al.'s reporting).
    """
    labels = np.asarray(labels, dtype=np.int64)
    present = np.unique(labels)
    if len(present) < 2:
        raise MedliteError(f"episodic evaluation needs images of at least 2 classes, got {len(present)}")
    ways = len(present) if n_way is None else min(n_way, len(present))
    queries = query_counts(labels, present, k_shot, q_query)
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
    return {"episodes": episodes, "n_way": ways, "k_shot": k_shot, "q_query": q_query, "accuracy": mean, "sd": sd,
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
    from medlite.models.heads import set_classifier

    prototypes = class_prototypes(features.float().cpu(), torch.as_tensor(labels, dtype=torch.int64), num_classes)
    weight, bias = prototype_linear(prototypes)
    if head is not None:
        from medlite.models.heads import EmbeddingHead

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


def evaluate_with_prototypes(run_dir: str | Path, *, split: str = "test", n_way: int | None = None,
                             k_shot: int = 5, q_query: int = 15, episodes: int = 600,
                             out: str | Path | None = None) -> dict[str, Any]:
    """The "encoder + prototypes" baseline of a finished run (any paradigm, e.g. supervised CE).

    Prototypes are the mean pooled features of the run's labelled training images; ``split`` is classified by
    the nearest prototype (full metrics, ``metrics.json``) and scored over ``episodes`` episodes drawn from it
    (``episodic.json``), both written to ``out`` (default ``RUNDIR/eval-prototypes``).
    """
    from medlite.evaluate.run_eval import evaluate_prepared, load_run_model
    from medlite.paradigms.base import embed_images, normalise_batch
    from medlite.training import prepare_data

    model, cfg, info = load_run_model(run_dir)
    data = prepare_data(cfg, manifest=Path(run_dir) / rundir.SPLITS, progress=False)
    in_chans = int(info["in_chans"])

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        return normalise_batch(batch.float() / 255.0, float(model.cfg.mean), float(model.cfg.std), in_chans)

    train_idx = data.indices("train")
    with torch.no_grad():
        bank = embed_images(model, data.cached.images, train_idx, prepare)
    fit_prototype_classifier(model, bank, data.cached.labels[train_idx], len(data.classes))
    target = Path(out) if out is not None else Path(run_dir) / "eval-prototypes"
    target.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_prepared(model, data, split, in_chans, target)
    split_idx = data.indices(split, labelled_only=False)
    rundir.write_json(target / "metrics.json", metrics)
    episodic = None
    if episodes_possible(data.cached.labels[split_idx], k_shot, f"the {split} split"):
        with torch.no_grad():
            features = embed_images(model, data.cached.images, split_idx, prepare)
        episodic = episodic_accuracy(features, data.cached.labels[split_idx], n_way=n_way, k_shot=k_shot,
                                     q_query=q_query, episodes=episodes, seed=cfg.train.seed)
        episodic["split"] = split
        rundir.write_json(target / EPISODIC, episodic)
    return {"metrics": metrics, "episodic": episodic, "out": str(target)}


__all__ = ["EPISODIC", "episodes_possible", "episodic_accuracy", "evaluate_with_prototypes",
           "fit_prototype_classifier"]
