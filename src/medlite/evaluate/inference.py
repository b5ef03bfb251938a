"""Batched inference of a zoo model on cached uint8 images."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medlite.paradigms.base import normalise_batch


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
    outputs = []
    try:
        for start in range(0, len(images), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            x = normalise_batch(
                chunk.to(device)[:, None].float() / 255.0, model.cfg.mean, model.cfg.std, in_chans
            )
            outputs.append(model(x).float().cpu())
    finally:
        model.train(was_training)
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(outputs).numpy()


def predict_proba(model: nn.Module, images: np.ndarray, **kwargs: object) -> np.ndarray:
    """Class probabilities float32 (N, C >= 2) of ``model`` for uint8 (N, S, S) images; see :func:`predict_logits`."""
    from medlite.evaluate.metrics import probs_from_logits

    return np.asarray(probs_from_logits(predict_logits(model, images, **kwargs)), dtype=np.float32)
