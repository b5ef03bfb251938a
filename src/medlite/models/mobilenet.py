"""MobileNetV2 (torchvision layout) and the Once-for-All MobileNetV3 subnet "OFA-595".

* MobileNetV2 — Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018
  (arXiv 1801.04381). Parameter names equal torchvision's ``mobilenet_v2`` (``features.0.0.weight``,
  ``features.1.conv.0.0.weight``, ..., ``classifier.1.weight``) so its ImageNet weights load unchanged.
* OFA-595 — Cai et al., "Once-for-All: Train One Network and Specialize it for Efficient Deployment",
  ICLR 2020 (arXiv 1908.09791); the specialised net ``flops@595M_top1@80.0_finetune@75`` used as the KD
  student by Mir & Rizvi (arXiv 2508.15251). Parameter names follow the OFA repository's current
  ``MobileNetV3`` (``first_conv.conv.weight``, ``blocks.3.conv.depth_conv.se.fc.reduce.weight``, ...);
  checkpoints from older OFA releases spell ``.mobile_inverted_conv.`` where this module has ``.conv.``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

import torch
from torch import nn

from medlite.models.base import ZooModel
from medlite.models.layers import (
    ActFactory,
    ConvNormAct,
    SqueezeExcite,
    check_num_classes,
    hard_swish,
    init_weights,
    make_divisible,
    relu,
    relu6,
)
from medlite.models.registry import ModelCfg, register_model

# ----------------------------------------------------------------------------------------------------------
# MobileNetV2
# ----------------------------------------------------------------------------------------------------------


class V2Stage(NamedTuple):
    """One MobileNetV2 stage: ``repeats`` inverted residuals of ``expand``x expansion to ``out_chs`` channels;
    the first block has ``stride``."""

    expand: int
    out_chs: int
    repeats: int
    stride: int


# Table 2 of the paper. Widths are at width_mult 1.0 and are scaled and rounded to multiples of 8; the
# spatial size halves in 4 of the 7 stages (plus the stem), giving a 7x7 map at 224 px.
MOBILENET_V2_STAGES: tuple[V2Stage, ...] = (
    V2Stage(1, 16, 1, 1),
    V2Stage(6, 24, 2, 2),
    V2Stage(6, 32, 3, 2),
    V2Stage(6, 64, 4, 2),
    V2Stage(6, 96, 3, 1),
    V2Stage(6, 160, 3, 2),
    V2Stage(6, 320, 1, 1),
)


class TorchvisionInvertedResidual(nn.Module):
    """Inverted residual with torchvision's layout: ``conv = Sequential([expand], dw, project, bn)``.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        stride: depthwise stride (1 or 2).
        expand_ratio: hidden width is ``round(in_chs * expand_ratio)`` (torchvision's rule, no rounding to 8).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_chs * expand_ratio))
        self.use_res_connect = stride == 1 and in_chs == out_chs
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormAct(in_chs, hidden, 1, act_layer=relu6))
        layers += [
            ConvNormAct(hidden, hidden, 3, stride, groups=hidden, act_layer=relu6),
            nn.Conv2d(hidden, out_chs, 1, bias=False),
            nn.BatchNorm2d(out_chs),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chs, H, W) -> (B, out_chs, ceil(H / stride), ceil(W / stride))."""
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(ZooModel):
    """MobileNetV2 with torchvision's parameter names.

    Args:
        num_classes: logits of the linear head (1 = single binary logit).
        in_chans: channels of the input image (1 for X-rays, 3 for RGB).
        width_mult: multiplies every width; widths are rounded with :func:`make_divisible` (to 8) and the
            last conv keeps at least 1280 channels (``1280 * max(1, width_mult)``), as in torchvision.
        drop_rate: dropout before the classifier.
    """

    classifier_name = "classifier.1"

    def __init__(
        self, num_classes: int = 1000, in_chans: int = 1, width_mult: float = 1.0, drop_rate: float = 0.2
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        chs = make_divisible(32 * width_mult)
        self.num_features = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvNormAct(in_chans, chs, 3, 2, act_layer=relu6)]
        for stage in MOBILENET_V2_STAGES:
            out_chs = make_divisible(stage.out_chs * width_mult)
            for i in range(stage.repeats):
                stride = stage.stride if i == 0 else 1
                features.append(TorchvisionInvertedResidual(chs, out_chs, stride, stage.expand))
                chs = out_chs
        features.append(ConvNormAct(chs, self.num_features, 1, act_layer=relu6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(self.num_features, num_classes))
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, H/32, W/32), the ``features.18`` map (CAM layer)."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average-pool a (B, C, h, w) map; return (B, num_features) if ``pre_logits`` else logits."""
        x = x.mean((2, 3))
        return x if pre_logits else self.classifier(x)


def _v2_cfg(name: str) -> ModelCfg:
    return ModelCfg(
        name=name,
        family="mobilenet_v2",
        input_size=224,
        first_conv="features.0.0",
        classifier="classifier.1",
        cam_layer="features.18",
        paper="Sandler et al., MobileNetV2, CVPR 2018, arXiv:1801.04381",
        layout="torchvision",
    )


@register_model(_v2_cfg("mobilenet_v2_050"))
def mobilenet_v2_050(*, num_classes: int = 1000, in_chans: int = 1, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2 at width 0.5 (1.97 M parameters with 1000 classes and 3 input channels)."""
    return MobileNetV2(num_classes=num_classes, in_chans=in_chans, width_mult=0.5, **kwargs)


@register_model(_v2_cfg("mobilenet_v2"))
def mobilenet_v2(*, num_classes: int = 1000, in_chans: int = 1, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2 at width 1.0 (3,504,872 parameters with 1000 classes and 3 input channels)."""
    return MobileNetV2(num_classes=num_classes, in_chans=in_chans, width_mult=1.0, **kwargs)


@register_model(_v2_cfg("mobilenet_v2_140"))
def mobilenet_v2_140(*, num_classes: int = 1000, in_chans: int = 1, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2 at width 1.4 (6.11 M parameters with 1000 classes and 3 input channels)."""
    return MobileNetV2(num_classes=num_classes, in_chans=in_chans, width_mult=1.4, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Once-for-All MobileNetV3 subnet
# ----------------------------------------------------------------------------------------------------------


class OFABlock(NamedTuple):
    """One MBConv block of an OFA subnet: depthwise ``kernel``, ``expand`` ratio, ``stride``."""

    kernel: int
    expand: int
    stride: int = 1


class OFAStage(NamedTuple):
    """A stage of MBConv blocks with ``out_chs`` channels, one activation and optional squeeze-excite."""

    out_chs: int
    act: ActFactory
    se: bool
    blocks: tuple[OFABlock, ...]


# OFA `flops@595M_top1@80.0_finetune@75` (from its published net.config): a subnet of the
# mbv3_d234_e346_k357_w1.2 supernet. Stage widths are the w1.2 supernet's; each block picks its own kernel
# (3/5/7) and expansion (3/4/6) — the NAS result, so the irregular pattern is intentional.
OFA_595_STEM = 24
OFA_595_STAGES: tuple[OFAStage, ...] = (
    OFAStage(24, relu, False, (OFABlock(3, 1),)),  # "block 0": expand 1, identity shortcut
    OFAStage(32, relu, False, (OFABlock(3, 3, 2), OFABlock(5, 4), OFABlock(3, 3))),
    OFAStage(48, relu, True, (OFABlock(5, 4, 2), OFABlock(5, 4), OFABlock(3, 6), OFABlock(5, 3))),
    OFAStage(96, hard_swish, False, (OFABlock(7, 6, 2), OFABlock(5, 6), OFABlock(3, 3), OFABlock(5, 4))),
    OFAStage(136, hard_swish, True, (OFABlock(3, 6), OFABlock(5, 6), OFABlock(7, 6), OFABlock(3, 4))),
    OFAStage(192, hard_swish, True, (OFABlock(3, 6, 2), OFABlock(3, 6), OFABlock(5, 6), OFABlock(3, 3))),
)
OFA_595_FINAL_EXPAND = 6  # 192 -> 1152, the CAM layer
OFA_595_LAST_CHANNEL = 1536  # feature-mix width = pooled feature size


class OFAMBConv(nn.Module):
    """OFA ``MBConvLayer``: ``inverted_bottleneck`` (1x1) -> ``depth_conv`` (dw, [se]) -> ``point_linear``.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        block: kernel / expansion / stride of this block.
        act_layer: activation of the expansion and depthwise convs.
        se: add a squeeze-excite with hidden width ``make_divisible(mid // 4, 8)`` and a hard-sigmoid gate.
    """

    def __init__(self, in_chs: int, out_chs: int, block: OFABlock, act_layer: ActFactory, se: bool) -> None:
        super().__init__()
        mid = make_divisible(round(in_chs * block.expand)) if block.expand != 1 else in_chs
        self.inverted_bottleneck = (
            ConvNormAct(in_chs, mid, 1, act_layer=act_layer, names="named") if block.expand != 1 else None
        )
        self.depth_conv = ConvNormAct(
            mid, mid, block.kernel, block.stride, mid, act_layer=act_layer, names="named"
        )
        if se:
            self.depth_conv.add_module(
                "se", SqueezeExcite(mid, make_divisible(mid // 4), relu, nn.Hardsigmoid)
            )
        self.point_linear = ConvNormAct(mid, out_chs, 1, act_layer=None, names="named")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chs, H, W) -> (B, out_chs, ceil(H / stride), ceil(W / stride))."""
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))


class OFAResidualBlock(nn.Module):
    """OFA ``ResidualBlock``: ``conv(x) + x`` when the shape is kept, else ``conv(x)``."""

    def __init__(self, conv: OFAMBConv, identity: bool) -> None:
        super().__init__()
        self.conv = conv
        self.identity = identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MBConv (and the identity shortcut); see :class:`OFAMBConv` for shapes."""
        return self.conv(x) + x if self.identity else self.conv(x)


class MobileNetV3OFA(ZooModel):
    """A specialised Once-for-All MobileNetV3 subnet with OFA's parameter names.

    The head follows MobileNetV3: ``final_expand_layer`` (1x1, BN, h-swish) keeps the spatial map, then
    global average pooling, ``feature_mix_layer`` (1x1 conv, no BN, h-swish) and ``classifier``
    (dropout + linear). ``forward_features`` ends at the final expand layer (the Score-CAM layer of
    Mir & Rizvi); the pooling and feature mix belong to :meth:`forward_head`.

    Args:
        stages: the block table (e.g. :data:`OFA_595_STAGES`).
        num_classes: logits of the linear head.
        in_chans: channels of the input image.
        stem_chs: channels of the 3x3 stride-2 stem.
        final_expand: channel multiplier of the final expand layer.
        last_channel: width of the feature-mix layer (= ``num_features``).
        drop_rate: dropout before the linear classifier.
    """

    classifier_name = "classifier.linear"

    def __init__(
        self,
        stages: tuple[OFAStage, ...],
        num_classes: int = 1000,
        in_chans: int = 1,
        stem_chs: int = OFA_595_STEM,
        final_expand: int = OFA_595_FINAL_EXPAND,
        last_channel: int = OFA_595_LAST_CHANNEL,
        drop_rate: float = 0.2,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.num_features = last_channel
        self.first_conv = ConvNormAct(in_chans, stem_chs, 3, 2, act_layer=hard_swish, names="named")
        blocks: list[nn.Module] = []
        chs = stem_chs
        for stage in stages:
            for block in stage.blocks:
                conv = OFAMBConv(chs, stage.out_chs, block, stage.act, stage.se)
                blocks.append(OFAResidualBlock(conv, identity=block.stride == 1 and chs == stage.out_chs))
                chs = stage.out_chs
        self.blocks = nn.ModuleList(blocks)
        self.final_expand_layer = ConvNormAct(chs, chs * final_expand, 1, act_layer=hard_swish, names="named")
        self.feature_mix_layer = ConvNormAct(
            chs * final_expand, last_channel, 1, act_layer=hard_swish, norm=False, names="named"
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                [("dropout", nn.Dropout(drop_rate)), ("linear", nn.Linear(last_channel, num_classes))]
            )
        )
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, 6 * 192, H/32, W/32), the ``final_expand_layer`` output (CAM layer)."""
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        return self.final_expand_layer(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool (B, C, h, w), feature-mix to (B, num_features); return that if ``pre_logits`` else logits."""
        x = self.feature_mix_layer(x.mean((2, 3), keepdim=True)).flatten(1)
        return x if pre_logits else self.classifier(x)


@register_model(
    ModelCfg(
        name="mobilenetv3_ofa_595",
        family="mobilenetv3_ofa",
        # OFA published this subnet at 236 px (595 M MACs); medlite defaults to 224 (513 M MACs) so it
        # shares the data cache of the other 224-px models. Pass 236 explicitly to match the paper.
        input_size=224,
        first_conv="first_conv.conv",
        classifier="classifier.linear",
        cam_layer="final_expand_layer",
        paper="Cai et al., Once-for-All, ICLR 2020, arXiv:1908.09791 "
        "(subnet flops@595M_top1@80.0_finetune@75)",
        layout="medlite",
    )
)
def mobilenetv3_ofa_595(*, num_classes: int = 1000, in_chans: int = 1, **kwargs: Any) -> MobileNetV3OFA:
    """OFA-595, the Mir & Rizvi KD student (9.14 M parameters with 1000 classes, 7.60 M with 3).

    Published at 236 px (595 M MACs); ``cfg.input_size`` is 224 (513 M MACs). The net is fully
    convolutional up to global pooling, so either size works with the same weights.
    """
    return MobileNetV3OFA(OFA_595_STAGES, num_classes=num_classes, in_chans=in_chans, **kwargs)
