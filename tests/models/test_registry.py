"""Registry-driven tests: every registered model gets the same interface checks.

The model list is read at import, so a newly registered family is covered without touching this file.
Sizes are tiny (batch 2, 64 px; 32 px for the 144 M-parameter VGG) to keep the file well under a minute on
two shared cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from medlite.errors import ModelError
from medlite.models import ModelCfg, create_model, get_model_cfg, list_models, register_model
from medlite.models.base import ZooModel
from medlite.models.checkpoint import load_weights, save_weights

HEAVY = {"vgg19_bn"}  # built twice per run at most; its 25088x4096 linear dominates time and memory
SIZES = {"vgg19_bn": 32}
MODELS = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in list_models()]


def _head_out(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


@pytest.mark.parametrize(("in_chans", "num_classes", "reset_to"), [(1, 1, 5), (3, 5, 1)])
@pytest.mark.parametrize("name", MODELS)
def test_model_interface(name: str, in_chans: int, num_classes: int, reset_to: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    size = SIZES.get(name, 64)
    model = create_model(name, num_classes=num_classes, in_chans=in_chans)
    cfg = model.cfg
    assert cfg.name == name and cfg.family and cfg.input_size >= size
    assert isinstance(model.num_features, int) and model.num_features > 0

    # The cfg's dotted names resolve to the layers they claim to be.
    stem = model.get_submodule(cfg.first_conv)
    assert isinstance(stem, nn.Conv2d) and stem.in_channels == in_chans
    assert model.get_submodule(cfg.classifier) is model.get_classifier()
    assert isinstance(model, ZooModel) and type(model).classifier_name == cfg.classifier
    assert _head_out(model.get_classifier()) == num_classes
    cam_out: list[torch.Tensor] = []
    handle = model.get_submodule(cfg.cam_layer).register_forward_hook(lambda m, i, o: cam_out.append(o))

    # Training-mode forward + backward reaches the input with finite, non-zero gradients.
    model.train()
    x = torch.randn(2, in_chans, size, size, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, num_classes)
    logits.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.get_classifier().parameters())
    handle.remove()
    assert cam_out[0].ndim == 4 and cam_out[0].shape[0] == 2

    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.ndim == 4 and feats.shape[0] == 2
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        torch.testing.assert_close(model.forward_head(feats), model(x))

        model.reset_classifier(reset_to)
        assert _head_out(model.get_classifier()) == reset_to
        assert model.get_submodule(cfg.classifier) is model.get_classifier()
        expected = model(x)
        assert expected.shape == (2, reset_to)

        if in_chans == 3:
            return  # one round trip per model is enough (writing VGG's 575 MB twice is not)
        # safetensors round trip: shift every tensor, load the file back, get identical outputs.
        path = save_weights(model, tmp_path / f"{name}.safetensors")
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(1.0)
        assert not torch.equal(model(x), expected)
        assert load_weights(model, path) == ([], [])
        assert torch.equal(model(x), expected)
    path.unlink()  # pytest keeps recent tmp dirs; do not leave VGG's 575 MB behind


def test_unknown_model_name_suggests_close_matches() -> None:
    with pytest.raises(ModelError, match="resnet18"):
        create_model("resnet_18")
    with pytest.raises(ModelError, match="unknown model 'vit_tiny'.*vit_tiny_patch16"):
        get_model_cfg("vit_tiny")
    with pytest.raises(ModelError, match="medlite models"):
        create_model("zzzz")


def test_bad_arguments_raise_model_error() -> None:
    with pytest.raises(ModelError, match="num_classes"):
        create_model("resnet18", num_classes=0)
    with pytest.raises(ModelError, match="in_chans"):
        create_model("resnet18", in_chans=0)


def test_duplicate_registration_is_refused() -> None:
    before = list_models()
    decorator = register_model(ModelCfg(name="resnet18", family="impostor"))
    with pytest.raises(ValueError, match="already registered"):
        decorator(lambda **kw: nn.Identity())
    assert list_models() == before
    assert get_model_cfg("resnet18").family == "resnet"


def test_list_models_pattern_filtering() -> None:
    everything = list_models()
    assert everything == sorted(everything)
    assert {"resnet18", "vgg19_bn", "vit_tiny_patch16"} <= set(everything)
    resnets = list_models("resnet*")
    assert {"resnet18", "resnet50"} <= set(resnets)
    assert all(n.startswith("resnet") for n in resnets)
    assert list_models("RESNET*") == resnets  # case-insensitive
    assert list_models("vit_*_patch16") == ["vit_small_patch16", "vit_tiny_patch16"]
    assert list_models("no_such_family*") == []


def test_reset_classifier_follows_the_model_dtype() -> None:
    model = create_model("squeezenet1_1", num_classes=3).double()
    model.reset_classifier(2)
    assert model.get_classifier().weight.dtype == torch.float64
    assert model(torch.randn(1, 1, 64, 64, dtype=torch.float64)).shape == (1, 2)
