"""A layer's output as a spatial (B, C, h, w) map: CNN maps as they are, ViT token sequences folded to a grid.

Used by the CAM explainers (hooks on ``cfg.cam_layer``) and by the ONNX export (its ``cam_features`` output),
so both read a token layer the same way.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from medlite.errors import ModelError


def token_grid(tokens: torch.Tensor, input_hw: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """Prefix-token count P and patch grid (h, w) of a (B, P + h*w, D) sequence for an (H, W) input."""
    count = tokens.shape[1]
    aspect = input_hw[0] / input_hw[1]
    for prefix in range(0, min(9, count)):
        n = count - prefix
        h = max(1, round(math.sqrt(n * aspect)))
        if n % h == 0 and abs(h / (n // h) - aspect) < 0.25:
            return prefix, (h, n // h)
    raise ModelError(f"layer output of shape {tuple(tokens.shape)} cannot be folded into a patch grid")


def to_spatial(out: Any, name: str, input_hw: tuple[int, int]) -> torch.Tensor:
    """A layer output as a (B, C, h, w) map: 4-D as is, ViT tokens (B, P + h*w, D) folded (prefix dropped)."""
    if isinstance(out, torch.Tensor) and out.ndim == 4:
        return out
    if isinstance(out, torch.Tensor) and out.ndim == 3:
        prefix, (h, w) = token_grid(out, input_hw)
        return out[:, prefix:].transpose(1, 2).reshape(out.shape[0], out.shape[2], h, w)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    raise ModelError(f"layer: {name!r} outputs {shape}, not a (B, C, H, W) map or (B, tokens, D) sequence; "
                     "choose a convolutional layer (the model cfg's cam_layer is one)")
