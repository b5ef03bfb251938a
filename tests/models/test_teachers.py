"""Teacher architectures: published parameter counts, checkpoint key names, and their feature/head split."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medlite.models import create_model
from medlite.models.layers import resample_pos_embed

# torchvision / timm parameter counts at 1000 classes and 3 input channels.
PUBLISHED = {
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "vgg19_bn": 143_678_248,
    "vit_tiny_patch16": 5_717_416,
    "vit_small_patch16": 22_050_664,
}

# name -> shape of a few state-dict entries as they appear in the public checkpoints.
KEYS: dict[str, dict[str, tuple[int, ...]]] = {
    "resnet18": {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_var": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer4.1.bn2.weight": (512,),
        "fc.weight": (1000, 512),
    },
    "resnet50": {
        "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer3.5.conv2.weight": (256, 256, 3, 3),
        "layer4.0.downsample.1.running_mean": (2048,),
        "fc.bias": (1000,),
    },
    "vgg19_bn": {
        "features.0.weight": (64, 3, 3, 3),
        "features.1.running_mean": (64,),
        "features.49.weight": (512, 512, 3, 3),
        "features.50.num_batches_tracked": (),
        "classifier.0.weight": (4096, 25088),
        "classifier.3.weight": (4096, 4096),
        "classifier.6.weight": (1000, 4096),
    },
    "vit_tiny_patch16": {
        "cls_token": (1, 1, 192),
        "pos_embed": (1, 197, 192),
        "patch_embed.proj.weight": (192, 3, 16, 16),
        "blocks.0.norm1.weight": (192,),
        "blocks.0.attn.qkv.weight": (576, 192),
        "blocks.0.attn.proj.bias": (192,),
        "blocks.11.mlp.fc1.weight": (768, 192),
        "blocks.11.mlp.fc2.weight": (192, 768),
        "blocks.11.norm2.bias": (192,),
        "norm.weight": (192,),
        "head.weight": (1000, 192),
    },
    "vit_small_patch16": {
        "pos_embed": (1, 197, 384),
        "blocks.11.attn.qkv.bias": (1152,),
        "head.bias": (1000,),
    },
}


@pytest.fixture(scope="module")
def imagenet_models() -> dict[str, nn.Module]:
    """Each teacher once, at the published configuration (1000 classes, RGB)."""
    torch.manual_seed(0)
    return {name: create_model(name, num_classes=1000, in_chans=3).eval() for name in PUBLISHED}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_parameter_counts_and_key_names(name: str, imagenet_models: dict[str, nn.Module]) -> None:
    model = imagenet_models[name]
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]
    state = model.state_dict()
    for key, shape in KEYS[name].items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key


def test_vgg_features_stop_at_the_cam_layer(imagenet_models: dict[str, nn.Module]) -> None:
    model = imagenet_models["vgg19_bn"]
    cfg = model.cfg
    assert isinstance(model.get_submodule(cfg.cam_layer), nn.ReLU)
    assert isinstance(model.features[-1], nn.MaxPool2d) and len(model.features) == 53
    seen: list[torch.Tensor] = []
    hook = model.get_submodule(cfg.cam_layer).register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        feats = model.forward_features(x)
        hook.remove()
        assert feats.shape == (1, 512, 4, 4)  # stride 16: the last max-pool belongs to the head
        torch.testing.assert_close(feats, seen[0])
        assert model.forward_head(feats, pre_logits=True).shape == (1, 4096)


@pytest.mark.parametrize(("name", "channels"), [("resnet18", 512), ("resnet50", 2048)])
def test_resnet_features_are_stride_32(
    name: str, channels: int, imagenet_models: dict[str, nn.Module]
) -> None:
    with torch.no_grad():
        feats = imagenet_models[name].forward_features(torch.randn(1, 3, 96, 64))
    assert feats.shape == (1, channels, 3, 2)


def test_vit_grid_features_and_mean_pooled_head(imagenet_models: dict[str, nn.Module]) -> None:
    model = imagenet_models["vit_tiny_patch16"]
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 96)  # non-square, non-default size: 4x6 patch grid
        feats = model.forward_features(x)
        assert feats.shape == (2, 192, 4, 6)
        logits = model(x)
        torch.testing.assert_close(logits, model.head(feats.mean(dim=(2, 3))))
        assert model.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 192, 14, 14)


def test_vit_position_embedding_resampling() -> None:
    torch.manual_seed(0)
    cls = torch.randn(1, 1, 8)
    level = torch.randn(1, 1, 8)
    pos = torch.cat([cls, level.expand(1, 14 * 14, 8)], dim=1)
    out = resample_pos_embed(pos, (4, 6), (14, 14))
    assert out.shape == (1, 1 + 24, 8)
    assert torch.equal(out[:, :1], cls)  # class-token entry untouched
    torch.testing.assert_close(out[:, 1:], level.expand(1, 24, 8))  # a constant field stays constant
    assert resample_pos_embed(pos, (14, 14)) is pos
    with pytest.raises(ValueError, match="square"):
        resample_pos_embed(pos[:, :-1], (4, 4))


def test_vit_resamples_position_embedding_for_other_sizes(imagenet_models: dict[str, nn.Module]) -> None:
    model = imagenet_models["vit_tiny_patch16"]
    seen: list[torch.Tensor] = []
    hook = model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)
        hook.remove()
        patches = model.patch_embed(x).flatten(2).transpose(1, 2)
        expected_pos = resample_pos_embed(model.pos_embed, (2, 2), (14, 14))
        torch.testing.assert_close(seen[0][:, 1:], patches + expected_pos[:, 1:])
        torch.testing.assert_close(seen[0][:, :1], model.cls_token + model.pos_embed[:, :1])
