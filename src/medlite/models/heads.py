"""Heads that sit on a zoo model's pooled features, and the two calls every paradigm uses to reach them.

Paradigms touch only the uniform model interface (STYLE A.8 #3): ``forward_features`` -> (B, C, h, w) map,
``forward_head(map, pre_logits=True)`` -> (B, ``num_features``) vector, ``forward_head(map)`` -> logits.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from medlite.errors import ModelError


def pooled_features(model: nn.Module, x: Tensor) -> Tensor:
    """The representation ``h = f(x)`` of a paradigm: (B, in_chans, H, W) -> (B, ``model.num_features``).

    It is the input of the model's final classifier (after pooling, and after any feature-mix layer such as
    MobileNetV3's 1x1 conv or VGG's FC blocks), so SimCLR, CORAL and a linear probe see what the classifier
    sees.
    """
    return model.forward_head(model.forward_features(x), pre_logits=True)


def features_and_logits(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(pooled_features(model, x), model(x))`` from one backbone pass: (B, num_features), (B, C)."""
    feature_map = model.forward_features(x)
    return model.forward_head(feature_map, pre_logits=True), model.forward_head(feature_map)


class SimCLRProjectionHead(nn.Module):
    """SimCLR's projection MLP ``g``: Linear(d, hidden) -> ReLU -> Linear(hidden, out) (Chen et al. 2020).

    The contrastive loss is applied to ``z = g(h)``; downstream tasks use ``h`` (the head is discarded after
    pre-training). METHODS.md §7: hidden = encoder width, out = 128.

    Args:
        in_features: width d of ``h`` (``model.num_features``).
        hidden_features: hidden width; ``None`` means ``in_features``.
        out_features: projection width (128).

    Shape:
        (B, in_features) -> (B, out_features).
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int = 128) -> None:
        super().__init__()
        hidden = in_features if hidden_features is None else hidden_features
        for name, value in (
            ("in_features", in_features),
            ("hidden_features", hidden),
            ("out_features", out_features),
        ):
            if value < 1:
                raise ModelError(f"projection head {name} must be >= 1, got {value}")
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_features)
        )

    def forward(self, h: Tensor) -> Tensor:
        return self.layers(h)


class EmbeddingHead(nn.Module):
    """A linear projection of pooled features to a metric embedding (prototypical networks, METHODS.md §9).

    Linear on purpose: a prototype classifier on a linear embedding is itself linear in the pooled features,
    so it folds into the model's classifier (:func:`medlite.losses.prototypical.prototype_linear`).

    Args:
        in_features: width of ``h`` (``model.num_features``).
        out_features: embedding width (128).

    Shape:
        (B, in_features) -> (B, out_features).
    """

    def __init__(self, in_features: int, out_features: int = 128) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ModelError(f"embedding head widths must be >= 1, got {in_features} -> {out_features}")
        self.in_features, self.out_features = in_features, out_features
        self.proj = nn.Linear(in_features, out_features)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h)


def set_classifier(model: nn.Module, weight: Tensor, bias: Tensor) -> None:
    """Copy a (C, D) weight and (C,) bias into the model's final linear layer (or 1x1 conv) in place.

    The folded classifier is meant to be the logits' only map from the pooled features, so a SqueezeNet built
    with torchvision's ReLU'd head (``head_relu=True``, the ``init="imagenet"`` default) has that ReLU turned off,
    with a warning (``arch_kwargs()`` then records ``head_relu=False`` for the run directory).

    Raises:
        ModelError: the classifier is not a linear layer / 1x1 conv of that size.
    """
    head = model.get_classifier()
    if not isinstance(head, (nn.Linear, nn.Conv2d)) or head.weight.numel() != weight.numel():
        raise ModelError(f"{model.cfg.name}: cannot set a {tuple(weight.shape)} linear classifier on {head}")
    if getattr(model, "head_relu", False):
        warnings.warn(f"{model.cfg.name}: a linear classifier was fitted on the pooled features, so the ReLU of "
                      "torchvision's head is turned off (head_relu=False)", stacklevel=2)
        model.head_relu = False
    with torch.no_grad():
        head.weight.copy_(weight.reshape(head.weight.shape))
        if head.bias is not None:
            head.bias.copy_(bias)
