"""Score-CAM (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks",
CVPR Workshops 2020, arXiv:1910.01279), in the formulation of the authors' official code.

For the explained class c and each channel k of the layer activations A (captured in one forward pass):

1. ``H^k = minmax(Up(A^k))``: the channel upsampled bilinearly to the input size and scaled to [0, 1]
   (channels with a constant map are skipped: they carry no spatial information and would divide by zero);
2. ``s_k = softmax(f(X * H^k))_c``: one forward pass of the input masked by ``H^k`` (the model's
   *normalised* input is multiplied, as in the official code, so masked pixels take the model's mean
   intensity);
3. ``L^c = ReLU(sum_k s_k Up(A^k))``, min-max normalised.

Since bilinear upsampling is linear, ``sum_k s_k Up(A^k) = Up(sum_k s_k A^k)``: the weighted sum is formed at
the layer's resolution and upsampled once, before the ReLU, by :class:`CAMExplainer` (identical result, far
less memory). The
paper words the weight as an "increase of confidence" ``s_k - f(X_b)_c`` against a baseline; the official code
uses ``s_k``, as here. pytorch-grad-cam's variant (raw logits, then a softmax over channels) is a different
method and is not what this computes.

Cost: one extra forward pass per non-constant channel and image, batched ``batch_size`` at a time.
``max_channels`` optionally keeps only the channels with the largest spatial variance ("Faster Score-CAM",
github.com/tabayashi0117/Score-CAM); ``None`` (default) is the official, all-channel method.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from medlite.errors import MedliteError
from medlite.explain.explainer import CAMExplainer, class_probs

_CONSTANT_RTOL = 1e-6  # a channel whose max - min is below this fraction of its magnitude counts as constant


class ScoreCAM(CAMExplainer):
    """Score-CAM on one layer of a classifier (gradient-free).

    Args:
        model: classifier ``(B, C, H, W) -> (B, K)`` logits (K = 1 for a single-logit binary head).
        layer: dotted layer name; ``None`` uses ``model.cfg.cam_layer``.
        batch_size: masked inputs per forward pass (memory ~ ``batch_size x C x H x W`` floats).
        max_channels: score only this many channels per image, those with the largest spatial variance
            ("Faster Score-CAM"); ``None`` scores every non-constant channel (the official method).
        progress: show a progress bar over the masked forward passes.
    """

    name = "scorecam"
    needs_gradients = False
    relu_after_upsampling = True  # the official code sums upsampled maps, then applies the ReLU

    def __init__(self, model: nn.Module, layer: str | None = None, *, batch_size: int = 32,
                 max_channels: int | None = None, progress: bool = False) -> None:
        super().__init__(model, layer)
        if batch_size < 1:
            raise MedliteError(f"batch_size: must be >= 1, got {batch_size}")
        if max_channels is not None and max_channels < 1:
            raise MedliteError(f"max_channels: must be >= 1 or None, got {max_channels}")
        self.batch_size = batch_size
        self.max_channels = max_channels
        self.progress = progress

    def _channels(self, acts: torch.Tensor) -> torch.Tensor:
        """(P, 2) int64 (image, channel) pairs to score: non-constant channels (optionally top-variance)."""
        flat = acts.flatten(2)
        span = flat.amax(-1) - flat.amin(-1)
        keep = span > _CONSTANT_RTOL * flat.abs().amax(-1).clamp_min(1e-12)
        if self.max_channels is not None and self.max_channels < acts.shape[1]:
            variance = torch.where(keep, flat.var(-1, unbiased=False), -1.0)
            top = variance.topk(self.max_channels, dim=1).indices
            keep &= torch.zeros_like(keep).scatter_(1, top, True)
        return keep.nonzero()

    def _layer_cam(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        acts = self._activations
        assert acts is not None  # set by the base's first forward pass
        size = x.shape[2:]
        pairs = self._channels(acts)
        weights = torch.zeros(acts.shape[:2], dtype=acts.dtype, device=acts.device)
        chunks = pairs.split(self.batch_size)
        for image, channel in (c.unbind(1) for c in self._track(chunks)):
            up = F.interpolate(acts[image, channel][:, None], size=size, mode="bilinear", align_corners=False)
            lo = up.amin(dim=(2, 3), keepdim=True)
            hi = up.amax(dim=(2, 3), keepdim=True)
            masks = (up - lo) / (hi - lo).clamp_min(1e-12)
            probs = class_probs(self.model(x[image] * masks.to(x.dtype)).float())
            weights[image, channel] = probs.gather(1, targets[image][:, None])[:, 0]
        return torch.einsum("bk,bkhw->bhw", weights, acts)

    def _track(self, chunks: tuple[torch.Tensor, ...]) -> Iterable[torch.Tensor]:
        if not self.progress:
            return chunks
        from rich.progress import track

        return track(chunks, description=f"Score-CAM ({self.layer_name})", transient=True)
