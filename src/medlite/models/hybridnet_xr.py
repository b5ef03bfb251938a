"""HybridNet-XR: a memory-light residual depthwise-separable CNN for chest radiographs.

Mayala, Mzurikwao & Suluba, "HybridNet-XR", medRxiv 2026 (doi 10.64898/2026.03.16.26348570). The paper
names three ingredients — depthwise-separable convolutions, residual connections and aggressive early
downsampling — but publishes no layer table, so this module is medlite's documented reading of it
(DESIGN.md, "HybridNet-XR"):

* **stem**: a 3x3 stride-2 conv, then a depthwise-separable stride-2 conv, so the network reaches stride 4
  within two layers and the only half-resolution activations are the narrow stem conv's;
* **four stages** of residual depthwise-separable blocks (``dw kxk -> BN -> ReLU -> pw 1x1 -> BN``, added
  to the shortcut, then ReLU); the first block of a stage may downsample, and its shortcut is then
  ``avg-pool + 1x1 conv + BN`` (ResNet-D style: no information is dropped by a strided 1x1);
* **head**: global average pooling, dropout, linear.

``hybridnet_xr_{50,100,150}`` multiply every width by 0.5 / 1.0 / 1.5 (rounded to multiples of 8); the
depths are shared. The names' ``-PW`` / ``-KD`` / ``-DG`` suffixes in the paper denote training paradigms,
not architectures, and live in medlite's paradigms package.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

import torch
from torch import nn

from medlite.models.base import ZooModel
from medlite.models.layers import (
    ConvNormAct,
    DepthwiseSeparableConv,
    check_num_classes,
    init_weights,
    make_divisible,
    relu,
)
from medlite.models.registry import ModelCfg, register_model


class XRStage(NamedTuple):
    """A stage of ``depth`` residual depthwise-separable blocks with ``out_chs`` channels (at width 1.0),
    depthwise ``kernel``; the first block has ``stride``."""

    out_chs: int
    depth: int
    stride: int
    kernel: int = 3


# Widths at width 1.0 and why they are what they are. Design goal (224 px, batch 32, CPU training): at most
# half of MobileNetV2's activation memory and at least twice its throughput, under ~1 M parameters with a
# few-class head. Measured with 1-channel input, 6 classes, 2 threads on 2 shared cores: tensors saved for
# backward 474 MB vs 2375 MB (0.20x; peak-RSS growth 562 vs 2488 MB), forward+backward 2.4-2.8x faster
# (3.0-3.7x with channels_last), 0.92 M parameters (1.30 M with a 1000-class head).
# * The stem conv is the only layer at half resolution (112x112), so it is kept narrow (24 channels): each
#   of its channels costs 12.5 k floats per image per saved tensor, as much as 16 channels at 28x28.
#   MobileNetV2 keeps 32-96 channels at 112x112, which is where most of its memory goes.
# * The stem's depthwise-separable stride-2 conv reaches 56x56 with 48 channels; stage 1 stays at 56x56
#   with a single block, because 56x56 maps dominate memory and CPU time (depthwise convs and BatchNorm are
#   memory-bound on CPU).
# * Width doubles at every downsampling and the depth goes to the 14x14 and 7x7 stages, where 1x1 convs
#   are cheap GEMMs and activations are small; 5x5 depthwise kernels there widen the receptive field
#   (whole-lung context at 7x7) for a few hundred parameters per channel.
# * The last stage's width (384) is num_features.
HYBRIDNET_XR_STEM_CHS = 24
HYBRIDNET_XR_STEM_OUT_CHS = 48
HYBRIDNET_XR_STAGES: tuple[XRStage, ...] = (
    XRStage(48, 1, 1),  # 56x56
    XRStage(96, 3, 2),  # 28x28
    XRStage(192, 6, 2, 5),  # 14x14
    XRStage(384, 4, 2, 5),  # 7x7
)


class ResidualDSBlock(nn.Module):
    """``relu(ds_conv(x) + shortcut(x))`` with a linear depthwise-separable body.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        stride: depthwise stride (1 or 2).
        kernel_size: depthwise kernel side (odd).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = DepthwiseSeparableConv(
            in_chs, out_chs, kernel_size, stride, relu, pw_act=False, skip=False
        )
        self.shortcut: nn.Module
        if stride == 1 and in_chs == out_chs:
            self.shortcut = nn.Identity()
        else:
            # Average pooling before the 1x1 projection keeps every input pixel's contribution (a strided
            # 1x1 would read one pixel in four); ceil mode matches the padded depthwise conv's output size.
            pool: nn.Module = (
                nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
                if stride > 1
                else nn.Identity()
            )
            self.shortcut = nn.Sequential(
                OrderedDict(
                    [
                        ("pool", pool),
                        ("conv", nn.Conv2d(in_chs, out_chs, 1, bias=False)),
                        ("bn", nn.BatchNorm2d(out_chs)),
                    ]
                )
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chs, H, W) -> (B, out_chs, ceil(H / stride), ceil(W / stride))."""
        return self.act(self.conv(x) + self.shortcut(x))


class HybridNetXR(ZooModel):
    """HybridNet-XR backbone and linear head.

    Args:
        num_classes: logits of the linear head (1 = single binary logit).
        in_chans: channels of the input image (1 for X-rays).
        width_mult: multiplies every width of the table (0.5 / 1.0 / 1.5 for the 50 / 100 / 150 variants).
        stages: stage table at width 1.0 (defaults to :data:`HYBRIDNET_XR_STAGES`).
        stem_chs: width of the stride-2 stem conv at width 1.0.
        stem_out_chs: width after the stem's depthwise-separable stride-2 conv at width 1.0.
        drop_rate: dropout before the classifier.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 1,
        width_mult: float = 1.0,
        stages: tuple[XRStage, ...] = HYBRIDNET_XR_STAGES,
        stem_chs: int = HYBRIDNET_XR_STEM_CHS,
        stem_out_chs: int = HYBRIDNET_XR_STEM_OUT_CHS,
        drop_rate: float = 0.2,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        stem = make_divisible(stem_chs * width_mult)
        chs = make_divisible(stem_out_chs * width_mult)
        self.stem = nn.Sequential(
            OrderedDict(
                [
                    ("conv", ConvNormAct(in_chans, stem, 3, 2, act_layer=relu)),
                    ("ds", DepthwiseSeparableConv(stem, chs, 3, 2, relu, pw_act=True, skip=False)),
                ]
            )
        )
        stage_modules: list[nn.Module] = []
        for stage in stages:
            out_chs = make_divisible(stage.out_chs * width_mult)
            blocks = []
            for i in range(stage.depth):
                blocks.append(ResidualDSBlock(chs, out_chs, stage.stride if i == 0 else 1, stage.kernel))
                chs = out_chs
            stage_modules.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stage_modules)
        self.num_features = chs
        self.drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(chs, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, H/32, W/32), the last stage's output (CAM layer)."""
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average-pool a (B, C, h, w) map; return (B, num_features) if ``pre_logits`` else logits."""
        x = x.mean((2, 3))
        return x if pre_logits else self.classifier(self.drop(x))


def _xr_cfg(name: str) -> ModelCfg:
    return ModelCfg(
        name=name,
        family="hybridnet_xr",
        input_size=224,
        first_conv="stem.conv.0",
        classifier="classifier",
        cam_layer=f"stages.{len(HYBRIDNET_XR_STAGES) - 1}",
        paper="Mayala, Mzurikwao & Suluba, HybridNet-XR, medRxiv 2026, doi:10.64898/2026.03.16.26348570",
        layout="medlite",
    )


@register_model(_xr_cfg("hybridnet_xr_50"))
def hybridnet_xr_50(*, num_classes: int = 1000, in_chans: int = 1, **kwargs: Any) -> HybridNetXR:
    """HybridNet-XR at width 0.5."""
    return HybridNetXR(num_classes=num_classes, in_chans=in_chans, width_mult=0.5, **kwargs)


@register_model(_xr_cfg("hybridnet_xr_100"))
def hybridnet_xr_100(*, num_classes: int = 1000, in_chans: int = 1, **kwargs: Any) -> HybridNetXR:
    """HybridNet-XR at width 1.0."""
    return HybridNetXR(num_classes=num_classes, in_chans=in_chans, width_mult=1.0, **kwargs)


@register_model(_xr_cfg("hybridnet_xr_150"))
def hybridnet_xr_150(*, num_classes: int = 1000, in_chans: int = 1, **kwargs: Any) -> HybridNetXR:
    """HybridNet-XR at width 1.5."""
    return HybridNetXR(num_classes=num_classes, in_chans=in_chans, width_mult=1.5, **kwargs)
