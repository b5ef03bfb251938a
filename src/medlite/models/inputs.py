"""The input convention of every zoo model, in torch: uint8 images in, normalised batches, logits and probabilities out.

A model's ``cfg.mean`` / ``cfg.std`` define its intensity convention (on the [0, 1] scale); the grayscale cache
is repeated to ``in_chans`` channels. Training (:meth:`medlite.paradigms.task.ClassifierTask.prepare_inputs`),
evaluation, explanation and the prototype probes all go through :func:`normalise_batch`; the torch-free twin
used by exported models is :func:`medlite.deploy.contract.normalise`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from medlite.errors import MedliteError
from medlite.models.heads import pooled_features


def normalise_batch(images: torch.Tensor, mean: float, std: float, in_chans: int) -> torch.Tensor:
    """Map intensities in [0, 1] (B, 1, H, W) to the model's convention: ``(x - mean) / std``, ``in_chans`` copies."""
    x = (images - mean) / std
    return x.expand(-1, in_chans, -1, -1) if in_chans != x.shape[1] else x


def uint8_to_input(images: torch.Tensor, mean: float, std: float, in_chans: int) -> torch.Tensor:
    """uint8 (B, 1, S, S) or (B, S, S) images -> float32 (B, in_chans, S, S) model input."""
    x = images.float() / 255.0
    return normalise_batch(x[:, None] if x.ndim == 3 else x, mean, std, in_chans)


def model_input_fn(model: nn.Module, in_chans: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``prepare(uint8 batch) -> model input`` with ``model.cfg``'s intensity convention."""
    mean, std = float(model.cfg.mean), float(model.cfg.std)
    return lambda batch: uint8_to_input(batch, mean, std, in_chans)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: np.ndarray,
    *,
    in_chans: int = 1,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Logits of ``model`` for uint8 images.

    Args:
        model: a zoo model carrying ``model.cfg`` (its mean/std define the intensity convention).
        images: uint8 (N, S, S) preprocessed images (e.g. the cache memmap, or a subset of it).
        in_chans: channels the model expects; the grayscale image is repeated.
        batch_size: images per forward pass.
        device: where to run.

    Returns:
        float32 (N, C) logits (C = 1 for single-logit binary heads).
    """
    was_training = model.training
    model.eval().to(device)
    prepare = model_input_fn(model, in_chans)
    outputs = []
    try:
        for start in range(0, len(images), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            outputs.append(model(prepare(chunk.to(device))).float().cpu())
    finally:
        model.train(was_training)
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(outputs).numpy()


def probs_from_logits(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """Turn model outputs into class probabilities.

    Args:
        logits: float (N,) or (N, 1) single-logit binary outputs (sigmoid), or (N, C >= 2) logits (softmax).

    Returns:
        float64 (N, C) probabilities, rows summing to 1; a single logit becomes (N, 2) ``[1 - p, p]``.
    """
    try:
        arr = torch.as_tensor(np.asarray(logits.detach().cpu() if isinstance(logits, torch.Tensor) else logits))
    except (TypeError, ValueError) as err:
        raise MedliteError(f"logits: cannot be read as an array ({err})") from None
    arr = arr.double()
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[1] < 2 and arr.shape[0] > 0):
        raise MedliteError(f"logits: expected shape (N,), (N, 1) or (N, C >= 2), got {tuple(arr.shape)}")
    if not torch.isfinite(arr).all():
        raise MedliteError("logits: contain NaN or inf")
    if arr.ndim == 1:  # sigmoid(-x) rather than 1 - sigmoid(x) keeps precision for large logits
        return torch.stack([torch.sigmoid(-arr), torch.sigmoid(arr)], dim=1).numpy()
    return torch.softmax(arr, dim=1).numpy()


def predict_proba(model: nn.Module, images: np.ndarray, **kwargs: object) -> np.ndarray:
    """Class probabilities float64 (N, C >= 2) of ``model`` for uint8 (N, S, S) images; see :func:`predict_logits`.

    float64, not float32: the small probabilities of a confident model carry its ranking (the large one rounds
    to 1.0), and AUCs are computed from them (:mod:`medlite.metrics.classification`).
    """
    return probs_from_logits(predict_logits(model, images, **kwargs))


@torch.no_grad()
def embed_images(
    model: nn.Module,
    images: np.ndarray,
    indices: np.ndarray,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    head: nn.Module | None = None,
) -> torch.Tensor:
    """Pooled features of ``images[indices]`` (uint8 (N, S, S) array or memmap) -> float32 (len(indices), D).

    ``prepare`` maps a uint8 (B, 1, S, S) tensor to the model's input (normalisation, channels); ``head``
    (e.g. a ProtoNet embedding) is applied to the pooled features when given, and D is then its width. The
    modes of the model and the head are left as they are (call them in eval mode).
    """
    out = []
    for start in range(0, len(indices), batch_size):
        chunk = np.sort(indices[start : start + batch_size])  # sorted reads are sequential on a memmap
        order = np.argsort(np.argsort(indices[start : start + batch_size]))
        batch = torch.from_numpy(np.ascontiguousarray(images[chunk]))[:, None].to(device)
        features = pooled_features(model, prepare(batch))
        if head is not None:
            features = head(features)
        out.append(features.float()[torch.from_numpy(order).to(device)])
    width = int(getattr(model, "num_features", 0) if head is None else getattr(head, "out_features", 0))
    return torch.cat(out) if out else torch.zeros(0, width, device=device)
