"""Building blocks shared by medlite's CNN families (MobileNet, EfficientNet-Lite, OFA, HybridNet-XR).

Every block is made of export-safe ops only (``nn.Conv2d`` with symmetric padding, ``nn.BatchNorm2d``,
``nn.ReLU``/``nn.ReLU6``/``nn.Hardswish``/``nn.Hardsigmoid``), so models built from them export to ONNX
without custom symbolics. Submodule *names* are chosen to match public checkpoints where a family needs
it: :class:`ConvNormAct` is an ``nn.Sequential`` indexed ``0/1/2`` like torchvision's
``Conv2dNormActivation`` (or named ``conv/bn/act`` like Once-for-All's ``ConvLayer``), and
:class:`DepthwiseSeparableConv` / :class:`InvertedResidual` use timm's ``conv_dw``/``bn1``/``conv_pw``...
names, so ``load_state_dict`` works on those checkpoints without renaming.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from medlite.errors import ModelError

#: A zero-argument factory that returns a fresh activation module, e.g. ``partial(nn.ReLU, inplace=True)``.
ActFactory = Callable[[], nn.Module]

# In-place ReLU/ReLU6 are safe under autograd (their backward reads the *output*) and save one activation
# tensor per layer; Hardswish is not made in-place because its backward reads the input.
relu: ActFactory = partial(nn.ReLU, inplace=True)
relu6: ActFactory = partial(nn.ReLU6, inplace=True)
hard_swish: ActFactory = nn.Hardswish


def make_divisible(
    value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9
) -> int:
    """Round a channel count to the nearest multiple of ``divisor`` (TF-slim / torchvision rule).

    Args:
        value: the unrounded channel count (e.g. ``32 * width_mult``).
        divisor: the multiple to round to; 8 keeps SIMD-friendly widths.
        min_value: smallest allowed result; defaults to ``divisor``.
        round_limit: rounding down may lose at most ``1 - round_limit`` of ``value``; otherwise one more
            ``divisor`` is added (torchvision's "do not go down by more than 10%").

    Returns:
        The rounded channel count, a positive multiple of ``divisor``.
    """
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


class ConvNormAct(nn.Sequential):
    """``Conv2d -> BatchNorm2d -> activation`` as an ``nn.Sequential`` (torchvision ``Conv2dNormActivation``).

    Padding is symmetric ``(kernel_size - 1) // 2`` so the output side is ``ceil(H / stride)`` for odd
    kernels. The conv has no bias when followed by BN (the BN shift replaces it).

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: square kernel side (odd).
        stride: conv stride.
        groups: conv groups; ``groups == in_chs == out_chs`` gives a depthwise conv.
        act_layer: activation factory; ``None`` for a linear (projection) layer.
        norm: whether to add ``BatchNorm2d``; without it the conv gets a bias only if ``bias`` says so.
        bias: conv bias.
        names: ``"indexed"`` gives children ``0, 1, 2`` (torchvision keys ``features.0.0.weight``);
            ``"named"`` gives ``conv, bn, act`` (Once-for-All keys ``first_conv.conv.weight``).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act_layer: ActFactory | None = relu,
        norm: bool = True,
        bias: bool = False,
        names: Literal["indexed", "named"] = "indexed",
    ) -> None:
        layers: list[tuple[str, nn.Module]] = [
            (
                "conv",
                nn.Conv2d(
                    in_chs, out_chs, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=bias
                ),
            )
        ]
        if norm:
            layers.append(("bn", nn.BatchNorm2d(out_chs)))
        if act_layer is not None:
            layers.append(("act", act_layer()))
        if names == "indexed":
            super().__init__(*(module for _, module in layers))
        else:
            super().__init__(OrderedDict(layers))
        self.out_chs = out_chs


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation channel gate: ``x * gate(expand(act(reduce(mean_hw(x)))))``.

    Children follow Once-for-All's ``SEModule`` (``fc.reduce``, ``fc.expand``, both 1x1 convs with bias)
    so its checkpoints load directly. The gate defaults to ``nn.Hardsigmoid`` (MobileNetV3), which exports
    to ONNX ``HardSigmoid``.

    Args:
        channels: channels of the gated tensor.
        rd_channels: hidden width of the bottleneck (already rounded by the caller).
        act_layer: activation between the two 1x1 convs.
        gate_layer: factory of the gating nonlinearity (``nn.Hardsigmoid`` or ``nn.Sigmoid``).
    """

    def __init__(
        self,
        channels: int,
        rd_channels: int,
        act_layer: ActFactory = relu,
        gate_layer: ActFactory = nn.Hardsigmoid,
    ) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            OrderedDict(
                [
                    ("reduce", nn.Conv2d(channels, rd_channels, 1, bias=True)),
                    ("act", act_layer()),
                    ("expand", nn.Conv2d(rd_channels, channels, 1, bias=True)),
                    ("gate", gate_layer()),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate ``x`` of shape (B, C, H, W) channel-wise; returns the same shape."""
        return x * self.fc(x.mean((2, 3), keepdim=True))


class DepthwiseSeparableConv(nn.Module):
    """Depthwise kxk conv -> BN -> act -> [SE] -> pointwise 1x1 conv -> BN -> [act] (+ identity).

    Children are named like timm's ``DepthwiseSeparableConv`` (``conv_dw``, ``bn1``, ``se``, ``conv_pw``,
    ``bn2``). The identity shortcut is added only when ``skip`` and the shape is unchanged
    (``stride == 1`` and ``in_chs == out_chs``).

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: depthwise kernel side (odd).
        stride: depthwise stride (1 or 2).
        act_layer: activation after the depthwise BN (and after the pointwise BN if ``pw_act``).
        se_layer: optional factory ``channels -> nn.Module`` for a squeeze-excite on the depthwise output.
        pw_act: apply the activation after the pointwise BN too (MobileNetV1 style).
        skip: allow the identity shortcut.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        act_layer: ActFactory = relu,
        se_layer: Callable[[int], nn.Module] | None = None,
        pw_act: bool = False,
        skip: bool = True,
    ) -> None:
        super().__init__()
        self.has_skip = skip and stride == 1 and in_chs == out_chs
        self.conv_dw = nn.Conv2d(
            in_chs, in_chs, kernel_size, stride, (kernel_size - 1) // 2, groups=in_chs, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = act_layer()
        self.se = se_layer(in_chs) if se_layer is not None else nn.Identity()
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = act_layer() if pw_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chs, H, W) -> (B, out_chs, ceil(H / stride), ceil(W / stride))."""
        out = self.se(self.act1(self.bn1(self.conv_dw(x))))
        out = self.act2(self.bn2(self.conv_pw(out)))
        return out + x if self.has_skip else out


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand -> kxk depthwise -> [SE] -> 1x1 linear project (+ identity).

    Children are named like timm's ``InvertedResidual`` (``conv_pw``, ``bn1``, ``conv_dw``, ``bn2``, ``se``,
    ``conv_pwl``, ``bn3``); with ``expand_ratio == 1`` the expansion is an ``nn.Identity`` (no parameters).
    The projection is linear (no activation) so the residual stream is not clipped by ReLU.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: depthwise kernel side (odd).
        stride: depthwise stride (1 or 2).
        expand_ratio: hidden width = ``make_divisible(in_chs * expand_ratio)``.
        act_layer: activation after the expansion and the depthwise conv.
        se_layer: optional factory ``hidden_channels -> nn.Module`` applied after the depthwise conv.
        skip: allow the identity shortcut (used only when ``stride == 1`` and ``in_chs == out_chs``).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        expand_ratio: float = 6.0,
        act_layer: ActFactory = relu6,
        se_layer: Callable[[int], nn.Module] | None = None,
        skip: bool = True,
    ) -> None:
        super().__init__()
        mid_chs = make_divisible(in_chs * expand_ratio) if expand_ratio != 1 else in_chs
        self.has_skip = skip and stride == 1 and in_chs == out_chs
        expand = expand_ratio != 1
        self.conv_pw = nn.Conv2d(in_chs, mid_chs, 1, bias=False) if expand else nn.Identity()
        self.bn1 = nn.BatchNorm2d(mid_chs) if expand else nn.Identity()
        self.act1 = act_layer() if expand else nn.Identity()
        self.conv_dw = nn.Conv2d(
            mid_chs, mid_chs, kernel_size, stride, (kernel_size - 1) // 2, groups=mid_chs, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.act2 = act_layer()
        self.se = se_layer(mid_chs) if se_layer is not None else nn.Identity()
        self.conv_pwl = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chs, H, W) -> (B, out_chs, ceil(H / stride), ceil(W / stride))."""
        out = self.act1(self.bn1(self.conv_pw(x)))
        out = self.se(self.act2(self.bn2(self.conv_dw(out))))
        out = self.bn3(self.conv_pwl(out))
        return out + x if self.has_skip else out


def init_weights(module: nn.Module) -> None:
    """Initialise a CNN in place the torchvision way (He-normal fan-out convs, unit BN, N(0, 0.01) linears).

    Fan-out He init keeps the activation variance of ReLU nets stable in the backward pass; the small
    classifier init starts every class near the same logit.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def check_num_classes(num_classes: int) -> int:
    """Validate a classifier width (``num_classes >= 1``; 1 is a single-logit binary head)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    return num_classes


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    antialias: bool = False,
) -> torch.Tensor:
    """Resample a ``(1, P + h*w, D)`` position embedding to another patch grid.

    The ``P`` prefix (class-token) entries are kept as they are; the ``h*w`` grid entries are reshaped to an
    image and resized bicubically (``align_corners=False``, as timm).

    Args:
        pos_embed: ``(1, P + h*w, D)`` float tensor.
        new_grid: target ``(rows, cols)`` of patches.
        old_grid: source ``(rows, cols)``; ``None`` assumes a square grid.
        num_prefix_tokens: ``P``, the leading non-spatial entries (1 for a class token).
        antialias: low-pass before downsampling; better for offline checkpoint adaptation, but not ONNX
            exportable, so the forward pass leaves it off.

    Returns:
        ``(1, P + rows*cols, D)`` tensor of the input's dtype.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n, dim = grid.shape[1], grid.shape[2]
    if old_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"pos_embed has {n} grid entries, which is not a square grid")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    img = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()
    img = F.interpolate(img, size=new_grid, mode="bicubic", align_corners=False, antialias=antialias)
    grid = img.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
