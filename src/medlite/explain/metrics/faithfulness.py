"""Deletion and insertion curves (Petsiuk, Das, Saenko, "RISE: Randomized Input Sampling for Explanation of
Black-box Models", BMVC 2018, arXiv:1806.07421).

Pixels are ranked by saliency. *Deletion* replaces them, most salient first, with a fill value and records the
model's probability of the explained class after each step; *insertion* starts from a blurred copy and
restores the original pixels, most salient first. The area under each curve over the fraction of pixels
changed (0..1, trapezoid rule) summarises each: lower deletion and higher insertion AUC = more faithful.

Defaults (METHODS.md §8): 1 % of the pixels per step (100 steps, 101 points including the unperturbed
image), probabilities from the model's softmax (sigmoid for one logit), blur kernel 11 with sigma 5. The
deletion fill, which shifts absolute AUCs, is fixed to **each image's own mean intensity** (``fill=None``).
Ties in the saliency ranking are broken by pixel order (stable sort), so a constant map deletes row by row.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import torch
from torch import nn

from medlite.errors import MedliteError
from medlite.explain.explainer import class_probs
from medlite.models.inputs import normalise_batch

Scorer = Callable[[torch.Tensor], torch.Tensor]
"""``scorer(x01)``: float (N, 1, H, W) intensities in [0, 1] -> (N, K) class probabilities."""


def model_scorer(model: nn.Module, mean: float, std: float, in_chans: int, batch_size: int = 64) -> Scorer:
    """A :data:`Scorer` for a medlite model: normalises ``(x - mean) / std``, repeats channels, batches.

    Args:
        model: classifier in eval mode.
        mean / std: the model's intensity convention on the [0, 1] scale (``run.json`` / ``model.cfg``).
        in_chans: channels the model expects.
        batch_size: images per forward pass.
    """
    device = next(model.parameters(), torch.empty(0)).device

    def score(x01: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for chunk in x01.split(batch_size):
                x = normalise_batch(chunk.to(device, torch.float32), mean, std, in_chans)
                out.append(class_probs(model(x).float()).cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)

    return score


def saliency_rank(saliency: torch.Tensor) -> torch.Tensor:
    """int64 (B, H*W): rank of every pixel, 0 = most salient (stable: ties keep pixel order)."""
    order = torch.argsort(-saliency.flatten(1).float(), dim=1, stable=True)
    return torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))


def _check(images: torch.Tensor, saliency: torch.Tensor, targets: torch.Tensor) -> None:
    if images.ndim != 3 or saliency.shape != images.shape or targets.shape != images.shape[:1]:
        raise MedliteError(f"images (B, H, W), saliency (B, H, W) and targets (B,) must agree; got "
                           f"{tuple(images.shape)}, {tuple(saliency.shape)}, {tuple(targets.shape)}")


def _curve(scorer: Scorer, start: torch.Tensor, end: torch.Tensor, rank: torch.Tensor, target: int,
           steps: int, chunk: int) -> torch.Tensor:
    """p(target) along the path from ``start`` to ``end`` (H, W), switching pixels in ``rank`` order."""
    n_pixels = rank.numel()
    counts = torch.round(torch.linspace(0, n_pixels, steps + 1)).long()
    probs = []
    for part in counts.split(chunk):
        switched = rank[None, :] < part[:, None]  # (n, H*W): pixel already moved to its "end" value
        x = torch.where(switched, end.flatten()[None], start.flatten()[None]).reshape(-1, 1, *start.shape)
        probs.append(scorer(x)[:, target])
    return torch.cat(probs)


def deletion_insertion_curves(scorer: Scorer, images: torch.Tensor, saliency: torch.Tensor,
                              targets: torch.Tensor, *, steps: int = 100, fill: float | None = None,
                              blur_ksize: int = 11, blur_sigma: float = 5.0, chunk: int = 64
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Deletion and insertion curves of a batch.

    Args:
        scorer: see :data:`Scorer`.
        images: float (B, H, W) intensities in [0, 1] (the preprocessed model input before normalisation).
        saliency: float (B, H, W), higher = more important.
        targets: int64 (B,) explained class of each image.
        steps: number of steps; ``steps + 1`` points from 0 % to 100 % of the pixels.
        fill: deletion value on the [0, 1] scale; ``None`` = each image's mean intensity.
        blur_ksize / blur_sigma: Gaussian blur of the insertion start (odd kernel side; sigma in pixels).
        chunk: perturbed images per scorer call.

    Returns:
        ``(deletion, insertion)``, each float (B, steps + 1): p(target) after each step.
    """
    _check(images, saliency, targets)
    if steps < 1:
        raise MedliteError(f"steps: must be >= 1, got {steps}")
    images = images.float().cpu()
    ranks = saliency_rank(saliency.cpu())
    deletion, insertion = [], []
    for img, rank, target in zip(images, ranks, targets.tolist(), strict=True):
        value = float(img.mean()) if fill is None else float(fill)
        blurred = torch.from_numpy(cv2.GaussianBlur(img.numpy(), (blur_ksize, blur_ksize), blur_sigma))
        deletion.append(_curve(scorer, img, torch.full_like(img, value), rank, target, steps, chunk))
        insertion.append(_curve(scorer, blurred, img, rank, target, steps, chunk))
    return torch.stack(deletion), torch.stack(insertion)


def curve_auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under (B, T) curves sampled evenly over the fraction 0..1 (trapezoid rule), float (B,)."""
    return torch.trapezoid(curves.float(), dx=1.0 / (curves.shape[-1] - 1), dim=-1)
