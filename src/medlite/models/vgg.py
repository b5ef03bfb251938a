"""VGG-19 with batch norm (Simonyan & Zisserman, 2015) with torchvision's parameter names.

Names mirror ``torchvision.models.vgg19_bn`` (``features.N`` for the 16 conv/BN/ReLU triples and 5 max-pools,
``classifier.0/3/6`` for the three linears) so torchvision's checkpoint loads with ``init=``. It is the large
teacher of the explainable-KD recipe (Mir & Rizvi, 2025); 143.7 M parameters, 90 % of them in the
``7*7*512 -> 4096`` linear, so keep it off small CPU budgets.

Feature/head split (what the uniform interface means here):

* ``forward_features`` stops at the last ReLU of ``features`` (index 51), i.e. the last conv feature map
  *before* the final max-pool: ``(B, 512, H/16, W/16)``. It is also the default CAM layer, so Grad-CAM maps
  have twice the resolution of a stride-32 map.
* ``forward_head`` applies the final max-pool (``features.52``), the adaptive average pool to 7x7 and the
  classifier. ``pre_logits=True`` returns the 4096-d output of the penultimate FC block, hence
  ``num_features == 4096`` (not the 512 channels of the feature map).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medlite.models.base import ZooModel
from medlite.models.registry import ModelCfg, register_model

_PAPER = "Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition, ICLR 2015"

# torchvision's configuration "E" (VGG-19): conv widths, "M" = 2x2 max-pool.
_VGG19: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip


def _make_features(widths: tuple[int | str, ...], in_chans: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_chans
    last_conv = max(i for i, w in enumerate(widths) if w != "M")
    for i, width in enumerate(widths):
        if width == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        assert isinstance(width, int)
        # The last ReLU is the CAM layer: not in-place, so full backward hooks on it do not see their
        # input overwritten.
        relu = nn.ReLU(inplace=i != last_conv)
        layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width), relu]
        channels = width
    return nn.Sequential(*layers)


class VGG(ZooModel):
    """VGG backbone + 7x7 adaptive pool + three-layer MLP classifier.

    Args:
        widths: conv widths with ``"M"`` for max-pools (torchvision's cfg lists).
        num_classes: output logits (1 gives a single-logit binary head).
        in_chans: input channels of ``features.0``.
        drop_rate: dropout after each of the two hidden FC layers (torchvision: 0.5).

    Shapes:
        input ``(B, in_chans, H, W)`` float with ``H, W >= 32``; ``forward_features`` gives
        ``(B, 512, H/16, W/16)``; ``forward`` gives ``(B, num_classes)`` logits.
    """

    classifier_name = "classifier.6"

    def __init__(
        self,
        widths: tuple[int | str, ...],
        num_classes: int = 1000,
        in_chans: int = 1,
        drop_rate: float = 0.5,
    ) -> None:
        super().__init__()
        self.features = _make_features(widths, in_chans)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.num_features = 4096
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(4096, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's scheme: He-normal (fan_out) convs, unit BN, N(0, 0.01) linears, zero biases.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` -> last ReLU output ``(B, 512, H/16, W/16)``, before the last max-pool."""
        for layer in list(self.features)[:-1]:
            x = layer(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Final max-pool, 7x7 pool and classifier; ``pre_logits`` returns the ``(B, 4096)`` hidden vector."""
        x = self.features[-1](x)
        x = torch.flatten(self.avgpool(x), 1)
        for layer in list(self.classifier)[:-1]:
            x = layer(x)
        return x if pre_logits else self.classifier[-1](x)


@register_model(
    ModelCfg(
        name="vgg19_bn",
        family="vgg",
        input_size=224,
        first_conv="features.0",
        classifier="classifier.6",
        cam_layer="features.51",
        paper=_PAPER,
        layout="torchvision",
    )
)
def vgg19_bn(*, num_classes: int = 1000, in_chans: int = 1, **kwargs: Any) -> VGG:
    """VGG-19-BN: 16 conv layers, 143.68 M parameters at 1000 classes / 3 channels."""
    return VGG(_VGG19, num_classes=num_classes, in_chans=in_chans, **kwargs)
