"""Family-specific checks for the lightweight CNNs: published parameter counts, checkpoint key layouts,
HybridNet-XR's design properties and the shared interface on 1- and 3-channel inputs.

Generic interface checks for every registered model live in ``test_registry.py``; this file pins what is
particular to MobileNetV2, SqueezeNet 1.1, EfficientNet-Lite0, OFA-595 and HybridNet-XR.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medlite.errors import ModelError
from medlite.models import create_model
from medlite.models.hybridnet_xr import ResidualDSBlock
from medlite.models.layers import make_divisible

MODELS = [
    "mobilenet_v2_050",
    "mobilenet_v2",
    "mobilenet_v2_140",
    "squeezenet1_1",
    "efficientnet_lite0",
    "mobilenetv3_ofa_595",
    "hybridnet_xr_50",
    "hybridnet_xr_100",
    "hybridnet_xr_150",
]


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of distinct non-parameter tensors autograd saves for backward in one training forward."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in param_ptrs:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mobilenet_v2", 3_504_872),  # torchvision / paper
        ("mobilenet_v2_050", 1_968_680),
        ("mobilenet_v2_140", 6_108_776),
        ("squeezenet1_1", 1_235_496),  # torchvision
        ("efficientnet_lite0", 4_652_008),  # timm
    ],
)
def test_published_parameter_counts(name: str, expected: int) -> None:
    assert _n_params(create_model(name, num_classes=1000, in_chans=3)) == expected


@pytest.mark.parametrize(("num_classes", "expected"), [(1000, 9.14e6), (3, 7.60e6)])
def test_ofa_595_parameter_count(num_classes: int, expected: float) -> None:
    n = _n_params(create_model("mobilenetv3_ofa_595", num_classes=num_classes, in_chans=3))
    assert abs(n - expected) / expected < 0.005


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        (
            "mobilenet_v2",
            [
                "features.0.0.weight",
                "features.1.conv.0.0.weight",
                "features.2.conv.1.1.running_var",
                "features.17.conv.2.weight",
                "features.18.0.weight",
                "classifier.1.weight",
            ],
        ),
        (
            "squeezenet1_1",
            [
                "features.0.weight",
                "features.3.squeeze.weight",
                "features.12.expand3x3.bias",
                "classifier.1.weight",
            ],
        ),
        (
            "efficientnet_lite0",
            [
                "conv_stem.weight",
                "bn1.running_mean",
                "blocks.0.0.conv_dw.weight",
                "blocks.0.0.conv_pw.weight",
                "blocks.1.0.conv_pw.weight",
                "blocks.5.3.bn3.weight",
                "blocks.6.0.conv_pwl.weight",
                "conv_head.weight",
                "bn2.weight",
                "classifier.weight",
            ],
        ),
        (
            "mobilenetv3_ofa_595",
            [
                "first_conv.conv.weight",
                "blocks.0.conv.depth_conv.conv.weight",
                "blocks.1.conv.inverted_bottleneck.conv.weight",
                "blocks.4.conv.depth_conv.se.fc.reduce.weight",
                "final_expand_layer.bn.weight",
                "feature_mix_layer.conv.weight",
                "classifier.linear.weight",
            ],
        ),
    ],
)
def test_checkpoint_key_layout(name: str, keys: list[str]) -> None:
    state = create_model(name, num_classes=1000, in_chans=3).state_dict()
    missing = [k for k in keys if k not in state]
    assert not missing, f"{name} lacks {missing}"


def test_layouts_have_no_extra_parameters_where_the_reference_has_none() -> None:
    # Lite removes squeeze-excite; OFA's feature-mix layer has no BN and no bias.
    lite = create_model("efficientnet_lite0", num_classes=1000, in_chans=3).state_dict()
    assert not any(".se." in k for k in lite)
    ofa = create_model("mobilenetv3_ofa_595", num_classes=1000, in_chans=3).state_dict()
    assert [k for k in ofa if k.startswith("feature_mix_layer")] == ["feature_mix_layer.conv.weight"]
    # Only the SE stages (48, 136, 192 channels: blocks 4-7 and 12-19) carry squeeze-excite.
    se_blocks = sorted({int(k.split(".")[1]) for k in ofa if ".se." in k})
    assert se_blocks == [4, 5, 6, 7, *range(12, 20)]


def test_make_divisible_follows_torchvision() -> None:
    assert make_divisible(32 * 0.5) == 16
    assert make_divisible(1280 * 1.4) == 1792
    assert make_divisible(10) == 16  # rounding down to 8 would lose more than 10 %
    assert make_divisible(3) == 8  # never below the divisor


@pytest.mark.parametrize("name", MODELS)
def test_interface_on_one_and_three_channels(name: str) -> None:
    torch.manual_seed(0)
    for in_chans in (1, 3):
        model = create_model(name, num_classes=3, in_chans=in_chans).eval()
        x = torch.randn(2, in_chans, 64, 64)
        with torch.no_grad():
            assert model(x).shape == (2, 3)
            feats = model.forward_features(x)
            assert feats.ndim == 4 and feats.shape[0] == 2 and feats.shape[2] >= 1
            pooled = model.forward_head(feats, pre_logits=True)
            assert pooled.shape == (2, model.num_features)
            model.reset_classifier(1)
            assert model(x).shape == (2, 1)
            assert model.num_classes == 1
    with pytest.raises(ModelError, match="num_classes"):
        model.reset_classifier(0)


def test_squeezenet_head_pools_before_the_classifier_conv() -> None:
    # Documented equivalence: with torchvision's logit ReLU dropped, the 1x1 conv commutes with pooling.
    torch.manual_seed(0)
    model = create_model("squeezenet1_1", num_classes=4).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        spatial = model.get_classifier()(feats).mean((2, 3))
        logits = model(x)
    torch.testing.assert_close(logits, spatial, rtol=1e-4, atol=1e-5)
    assert (logits < 0).any()  # logits are not clamped by a ReLU


def test_ofa_595_head_shapes() -> None:
    model = create_model("mobilenetv3_ofa_595", num_classes=2).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 1, 64, 64))
    assert feats.shape == (1, 1152, 2, 2)  # the 192 -> 1152 final-expand map, stride 32
    assert model.num_features == 1536


def test_hybridnet_widths_scale_parameter_count() -> None:
    counts = [_n_params(create_model(f"hybridnet_xr_{w}", num_classes=6)) for w in (50, 100, 150)]
    assert counts[0] < counts[1] < counts[2]
    assert counts[1] < 1_000_000  # design goal: under ~1 M parameters with a few-class head


def test_hybridnet_downsamples_early() -> None:
    # Stride 4 within two layers: only the stem conv's output is at half resolution, nothing at full.
    model = create_model("hybridnet_xr_100", num_classes=2).eval()
    sizes: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o, n=n: sizes.__setitem__(n, o.shape[-1]))
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        out = model.forward_features(torch.randn(1, 1, 64, 64))
    for h in hooks:
        h.remove()
    assert [n for n, s in sizes.items() if s > 16] == ["stem.conv.0"]
    assert sizes["stem.conv.0"] == 32 and sizes["stem.ds.conv_dw"] == 16
    assert out.shape[-1] == 2  # output stride 32
    # Downsampling blocks use an avg-pool + 1x1 projection shortcut; the others an identity.
    blocks = [m for m in model.modules() if isinstance(m, ResidualDSBlock)]
    projected = [b for b in blocks if not isinstance(b.shortcut, nn.Identity)]
    assert len(blocks) > 4 and len(projected) == 3  # the first blocks of stages 2-4
    assert all(isinstance(b.shortcut.pool, nn.AvgPool2d) for b in projected)


def test_hybridnet_needs_at_most_half_of_mobilenet_v2_activation_memory() -> None:
    # The design goal is stated at 224 px / batch 32; every activation scales with H x W, so the ratio is
    # checked at 96 px / batch 1 (about 0.2 measured at both sizes).
    torch.manual_seed(0)
    x = torch.randn(1, 1, 96, 96)
    xr = _saved_activation_bytes(create_model("hybridnet_xr_100", num_classes=6), x)
    mbv2 = _saved_activation_bytes(create_model("mobilenet_v2", num_classes=6), x)
    assert xr <= 0.5 * mbv2
