"""SqueezeNet 1.1 with torchvision's parameter names.

Iandola et al., "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size",
arXiv 1602.07360 (v1.1 is the 2.4x cheaper revision from the authors' repository: a 3x3 stem and earlier
pooling). Parameter names equal torchvision's ``squeezenet1_1`` (``features.0.weight``,
``features.3.squeeze.weight``, ..., ``classifier.1.weight``) so its ImageNet weights load unchanged.

Head difference from torchvision: torchvision computes ``avgpool(relu(conv1x1(x)))``, i.e. its logits
pass through a ReLU and can never be negative. That is harmless for ImageNet soft-max training but breaks a
single-logit binary head (sigmoid never drops below 0.5) and hides information from KD/CAM, so medlite
omits that ReLU by default (it has no parameters; checkpoints are unaffected). Without it the 1x1 conv commutes with
average pooling, so :meth:`SqueezeNet.forward_head` pools first and applies ``classifier.1`` to the pooled
(B, 512) vector — the same logits as running the conv on the map and pooling, for a 49x smaller head cost.

``head_relu=True`` restores torchvision's head exactly (1x1 conv on the map, ReLU, average pool), so torchvision's
ImageNet checkpoint with its 1000-class head gives torchvision's logits; ``create_model(..., init="imagenet")``
turns it on (see :mod:`medlite.models.pretrained`). It is refused for a single logit, whose sigmoid could then
never drop below 0.5.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from medlite.errors import ModelError
from medlite.models.base import ZooModel
from medlite.models.layers import check_num_classes
from medlite.models.registry import ModelCfg, register_model


class FireCfg(NamedTuple):
    """A Fire module: ``squeeze`` 1x1 channels, then ``expand1x1`` + ``expand3x3`` channels concatenated."""

    squeeze: int
    expand1x1: int
    expand3x3: int


# SqueezeNet 1.1 (``None`` = 3x3/2 max-pool, ceil mode). Widths grow as resolution falls; every Fire module
# squeezes to 1/8 of its output width before the expensive 3x3 — the source of the tiny parameter count.
SQUEEZENET1_1_LAYERS: tuple[FireCfg | None, ...] = (
    None,
    FireCfg(16, 64, 64),
    FireCfg(16, 64, 64),
    None,
    FireCfg(32, 128, 128),
    FireCfg(32, 128, 128),
    None,
    FireCfg(48, 192, 192),
    FireCfg(48, 192, 192),
    FireCfg(64, 256, 256),
    FireCfg(64, 256, 256),
)
SQUEEZENET_STEM_CHS = 64


class Fire(nn.Module):
    """Fire module: 1x1 squeeze -> ReLU -> [1x1 expand, 3x3 expand] -> ReLU -> channel concat.

    Args:
        in_chs: input channels.
        cfg: squeeze / expand widths; the output has ``expand1x1 + expand3x3`` channels, same H x W.
    """

    def __init__(self, in_chs: int, cfg: FireCfg) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_chs, cfg.squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(cfg.squeeze, cfg.expand1x1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(cfg.squeeze, cfg.expand3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chs, H, W) -> (B, expand1x1 + expand3x3, H, W)."""
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1
        )


class SqueezeNet(ZooModel):
    """SqueezeNet with torchvision's parameter names and a uniform medlite head.

    Args:
        layers: the Fire / max-pool table (e.g. :data:`SQUEEZENET1_1_LAYERS`).
        num_classes: logits of the 1x1-conv classifier (1 = single binary logit).
        in_chans: channels of the input image.
        drop_rate: dropout before the classifier (0.5 in torchvision).
        head_relu: torchvision's head ``avgpool(relu(conv1x1(x)))`` (non-negative logits) instead of medlite's
            ``conv1x1(avgpool(x))``; parameter-free, so checkpoints load either way.
    """

    classifier_name = "classifier.1"

    def init_classifier(self, head: nn.Module) -> None:
        """A small N(0, 0.01) 1x1 conv (torchvision), so initial logits are near zero for every class."""
        nn.init.normal_(head.weight, 0.0, 0.01)
        nn.init.zeros_(head.bias)

    def __init__(
        self,
        layers: tuple[FireCfg | None, ...],
        num_classes: int = 1000,
        in_chans: int = 1,
        drop_rate: float = 0.5,
        head_relu: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        if head_relu and num_classes == 1:
            raise ModelError("squeezenet head_relu=True with num_classes=1: a ReLU'd single logit never gives a "
                             "probability below 0.5; use head_relu=False or 2 classes")
        self.head_relu = head_relu
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        # Unpadded 3x3/2 stem exactly as torchvision (224 px -> 111 -> pooled 55).
        modules: list[nn.Module] = [nn.Conv2d(in_chans, SQUEEZENET_STEM_CHS, 3, 2), nn.ReLU(inplace=True)]
        chs = SQUEEZENET_STEM_CHS
        for cfg in layers:
            if cfg is None:
                modules.append(nn.MaxPool2d(3, 2, ceil_mode=True))
            else:
                modules.append(Fire(chs, cfg))
                chs = cfg.expand1x1 + cfg.expand3x3
        self.features = nn.Sequential(*modules)
        self.num_features = chs
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), nn.Conv2d(chs, num_classes, 1))
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's scheme: He-uniform convs, and a small N(0, 0.01) classifier so initial logits are
        # near zero for every class.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is self.classifier[1]:
                    nn.init.normal_(m.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, 512, h, w), h = 13 at 224 px; the ``features.12`` map (CAM layer)."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average-pool (B, 512, h, w); return (B, 512) if ``pre_logits``, else (B, num_classes) logits.

        With ``head_relu`` the logits are torchvision's ``mean(relu(classifier(x)))`` over the map (the ReLU does
        not commute with pooling); ``pre_logits`` still returns the pooled (B, 512) features.
        """
        if self.head_relu and not pre_logits:
            return F.relu(self.classifier(x)).mean((2, 3))
        x = x.mean((2, 3), keepdim=True)
        return x.flatten(1) if pre_logits else self.classifier(x).flatten(1)

    def arch_kwargs(self) -> dict[str, Any]:
        """``{"head_relu": bool}``: the head option a run directory must rebuild (see :class:`ZooModel`)."""
        return {"head_relu": self.head_relu}


@register_model(
    ModelCfg(
        name="squeezenet1_1",
        family="squeezenet",
        input_size=224,
        first_conv="features.0",
        classifier="classifier.1",
        cam_layer="features.12",
        paper="Iandola et al., SqueezeNet, arXiv:1602.07360 (v1.1)",
        layout="torchvision",
    )
)
def squeezenet1_1(*, num_classes: int = 1000, in_chans: int = 1, **kwargs: Any) -> SqueezeNet:
    """SqueezeNet 1.1 (1,235,496 parameters with 1000 classes and 3 input channels)."""
    return SqueezeNet(SQUEEZENET1_1_LAYERS, num_classes=num_classes, in_chans=in_chans, **kwargs)
