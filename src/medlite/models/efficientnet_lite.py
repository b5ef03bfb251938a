"""EfficientNet-Lite0 with timm's parameter names.

Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019 (arXiv 1905.11946); the "Lite"
variants (tensorflow/tpu ``models/official/efficientnet/lite``) drop squeeze-excite, replace swish with
ReLU6 and fix the stem (32) and head (1280) widths so the network quantises and runs well on CPUs and
mobile accelerators. Parameter names equal timm's ``efficientnet_lite0`` (``conv_stem.weight``, ``bn1.*``,
``blocks.{stage}.{block}.conv_dw.weight``, ``conv_head.weight``, ``bn2.*``, ``classifier.weight``), so timm
checkpoints load unchanged. Padding is symmetric (timm's ``efficientnet_lite0``, not the ``tf_`` variant).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from medlite.models.base import ZooModel
from medlite.models.layers import (
    DepthwiseSeparableConv,
    InvertedResidual,
    check_num_classes,
    init_weights,
    relu6,
)
from medlite.models.registry import ModelCfg, register_model


class LiteStage(NamedTuple):
    """One stage: ``repeats`` blocks of depthwise ``kernel`` and ``expand`` ratio; the first has ``stride``.

    ``expand == 1`` marks the depthwise-separable first stage (no expansion conv).
    """

    expand: int
    kernel: int
    stride: int
    out_chs: int
    repeats: int


# EfficientNet-B0's stage table with the Lite rules applied (no SE, ReLU6). Lite0 has width and depth
# multipliers of 1.0, so the table is used as is.
EFFICIENTNET_LITE0_STAGES: tuple[LiteStage, ...] = (
    LiteStage(1, 3, 1, 16, 1),
    LiteStage(6, 3, 2, 24, 2),
    LiteStage(6, 5, 2, 40, 2),
    LiteStage(6, 3, 2, 80, 3),
    LiteStage(6, 5, 1, 112, 3),
    LiteStage(6, 5, 2, 192, 4),
    LiteStage(6, 3, 1, 320, 1),
)
LITE_STEM_CHS = 32  # fixed for every Lite width (Lite rule)
LITE_HEAD_CHS = 1280  # fixed for every Lite width (Lite rule)


class EfficientNetLite(ZooModel):
    """EfficientNet-Lite backbone + head in timm's layout.

    Args:
        stages: the block table (e.g. :data:`EFFICIENTNET_LITE0_STAGES`).
        num_classes: logits of the linear head (1 = single binary logit).
        in_chans: channels of the input image.
        drop_rate: dropout before the classifier (0.2 for Lite0 in the reference implementation).
    """

    def __init__(
        self,
        stages: tuple[LiteStage, ...],
        num_classes: int = 1000,
        in_chans: int = 1,
        drop_rate: float = 0.2,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.num_features = LITE_HEAD_CHS
        self.conv_stem = nn.Conv2d(in_chans, LITE_STEM_CHS, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(LITE_STEM_CHS)
        self.act1 = relu6()
        chs = LITE_STEM_CHS
        blocks: list[nn.Module] = []
        for stage in stages:
            stage_blocks: list[nn.Module] = []
            for i in range(stage.repeats):
                stride = stage.stride if i == 0 else 1
                if stage.expand == 1:
                    block: nn.Module = DepthwiseSeparableConv(chs, stage.out_chs, stage.kernel, stride, relu6)
                else:
                    block = InvertedResidual(chs, stage.out_chs, stage.kernel, stride, stage.expand, relu6)
                stage_blocks.append(block)
                chs = stage.out_chs
            blocks.append(nn.Sequential(*stage_blocks))
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = nn.Conv2d(chs, LITE_HEAD_CHS, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(LITE_HEAD_CHS)
        # Not in-place: this is the CAM layer, and explainers hook its output tensor.
        self.act2 = nn.ReLU6()
        self.drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(LITE_HEAD_CHS, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, 1280, H/32, W/32), the ``act2`` output (CAM layer)."""
        x = self.blocks(self.act1(self.bn1(self.conv_stem(x))))
        return self.act2(self.bn2(self.conv_head(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average-pool a (B, C, h, w) map; return (B, num_features) if ``pre_logits`` else logits."""
        x = x.mean((2, 3))
        return x if pre_logits else self.classifier(self.drop(x))


@register_model(
    ModelCfg(
        name="efficientnet_lite0",
        family="efficientnet_lite",
        input_size=224,
        first_conv="conv_stem",
        classifier="classifier",
        cam_layer="act2",
        paper="Tan & Le, EfficientNet, ICML 2019, arXiv:1905.11946 (Lite variant, tensorflow/tpu)",
        layout="timm",
    )
)
def efficientnet_lite0(*, num_classes: int = 1000, in_chans: int = 1, **kwargs: Any) -> EfficientNetLite:
    """EfficientNet-Lite0 (4,652,008 parameters with 1000 classes and 3 input channels)."""
    return EfficientNetLite(EFFICIENTNET_LITE0_STAGES, num_classes=num_classes, in_chans=in_chans, **kwargs)
