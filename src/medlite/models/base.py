"""The interface every zoo model shares (STYLE_AND_USERS.md A.8 #3), implemented once.

A family subclasses :class:`ZooModel`, builds its layers, sets ``num_features`` and ``num_classes``, names its
final layer in :attr:`ZooModel.classifier_name` and implements ``forward_features`` (image -> last feature map)
and ``forward_head`` (feature map -> pooled features or logits). Paradigms, explainers and exporters only ever
call this interface, never a family's internals.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from medlite.models.layers import check_num_classes, init_weights


class ZooModel(nn.Module):
    """Base class of medlite's architectures.

    Attributes:
        classifier_name: dotted name of the final ``nn.Linear`` (or 1x1 ``nn.Conv2d``) that maps the
            ``num_features`` pooled features to logits; equal to the registered ``ModelCfg.classifier``.
        num_features: width of ``forward_head(x, pre_logits=True)``.
        num_classes: number of logits (1 = a single binary logit).
    """

    classifier_name: ClassVar[str] = "classifier"
    num_features: int
    num_classes: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) images -> (B, C, h, w) last feature map (the default CAM layer's output)."""
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) feature map -> (B, num_features) pooled features if ``pre_logits`` else logits."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) float images -> (B, num_classes) logits."""
        return self.forward_head(self.forward_features(x))

    def arch_kwargs(self) -> dict[str, Any]:
        """Constructor options (beyond name, ``num_classes``, ``in_chans``) that change the forward pass.

        A run directory stores them (``run.json`` ``"model_kwargs"``) so evaluate / export / predict rebuild the
        same architecture; JSON scalars only. Empty for families without such options.
        """
        return {}

    def get_classifier(self) -> nn.Module:
        """The final linear layer (or 1x1 conv) named by :attr:`classifier_name`."""
        return self.get_submodule(self.classifier_name)

    def init_classifier(self, head: nn.Module) -> None:
        """Initialise a fresh classifier in place (the torchvision CNN scheme unless a family overrides it)."""
        init_weights(head)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised one with ``num_classes`` outputs (same kind, input width,
        device and dtype)."""
        self.num_classes = check_num_classes(num_classes)
        old = self.get_classifier()
        if isinstance(old, nn.Conv2d):
            head: nn.Module = nn.Conv2d(old.in_channels, num_classes, 1)
        else:
            head = nn.Linear(old.in_features, num_classes)
        self.init_classifier(head)
        head.to(device=old.weight.device, dtype=old.weight.dtype)
        parent, _, child = self.classifier_name.rpartition(".")
        setattr(self.get_submodule(parent) if parent else self, child, head)


__all__ = ["ZooModel"]
