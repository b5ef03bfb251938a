"""Checkpoint loading and adaptation (``create_model(..., init=path)``) and safetensors weights I/O."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from medlite.errors import ModelError
from medlite.models import create_model
from medlite.models.checkpoint import (
    InitReport,
    adapt_input_conv,
    load_checkpoint,
    load_weights,
    read_checkpoint,
    save_weights,
)
from medlite.models.layers import resample_pos_embed

HEAD = {"fc.weight", "fc.bias"}


@pytest.fixture(scope="module")
def rgb_resnet() -> nn.Module:
    """An ImageNet-shaped ResNet-18 (1000 classes, RGB stem) with non-trivial BN statistics."""
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=1000, in_chans=3)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if "running" in name:
                buf.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def rgb_files(rgb_resnet: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ckpt")
    state = rgb_resnet.state_dict()
    torch.save(state, folder / "r18.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "r18.safetensors"))
    return {"pth": folder / "r18.pth", "safetensors": folder / "r18.safetensors"}


def _check_grey_four_class(model: nn.Module, source: nn.Module) -> None:
    report: InitReport = model.init_report
    src, dst = source.state_dict(), model.state_dict()
    torch.testing.assert_close(dst["conv1.weight"], src["conv1.weight"].sum(dim=1, keepdim=True))
    assert [k for k, _ in report.adapted] == ["conv1.weight"]
    assert {k for k, _ in report.skipped} == HEAD
    assert all("classifier" in reason for _, reason in report.skipped)
    assert set(report.loaded) == set(src) - HEAD - {"conv1.weight"}
    assert report.missing == []
    for key in report.loaded:
        assert torch.equal(dst[key], src[key]), key
    assert dst["fc.weight"].shape == (4, 512)
    summary = report.summary()
    assert "\n" not in summary and "adapted 1 (conv1.weight)" in summary and "skipped 2" in summary


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_rgb_imagenet_checkpoint_initialises_grey_four_class_model(
    fmt: str, rgb_resnet: nn.Module, rgb_files: dict[str, Path]
) -> None:
    model = create_model("resnet18", num_classes=4, in_chans=1, init=rgb_files[fmt])
    _check_grey_four_class(model, rgb_resnet)
    assert model.init_report.prefix == ""


def test_ddp_prefix_and_state_dict_container_are_unwrapped(rgb_resnet: nn.Module, tmp_path: Path) -> None:
    # A DDP-wrapped, half-precision checkpoint nested in a training container.
    src = rgb_resnet.state_dict()
    state = {f"module.{k}": v.half() if v.is_floating_point() else v for k, v in src.items()}
    path = tmp_path / "ddp.ckpt"
    torch.save({"epoch": 3, "state_dict": state, "optimizer_states": []}, path)
    model = create_model("resnet18", num_classes=4, in_chans=1, init=path)
    report = model.init_report
    assert report.prefix == "module."
    assert len(report.loaded) == len(state) - 3 and report.missing == []
    assert model.layer3[0].conv1.weight.dtype == torch.float32
    torch.testing.assert_close(model.layer3[0].conv1.weight, rgb_resnet.layer3[0].conv1.weight.half().float())


def test_lightning_model_prefix_is_chosen_over_other_modules(rgb_resnet: nn.Module, tmp_path: Path) -> None:
    state = {f"model.{k}": v for k, v in rgb_resnet.state_dict().items()}
    state["teacher.fc.weight"] = torch.zeros(3, 3)
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"lr": 0.1}}, path)
    report = load_checkpoint(create_model("resnet18", num_classes=1000, in_chans=3), path)
    assert report.prefix == "model."
    assert len(report.loaded) == len(state) - 1 and report.adapted == []
    assert report.skipped == [("teacher.fc.weight", "not a model tensor")]


def test_vit_checkpoint_at_224_initialises_64px_grey_vit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_model("vit_tiny_patch16", num_classes=1000, in_chans=3)
    path = tmp_path / "vit.pth"
    torch.save({"model": source.state_dict()}, path)  # timm/DeiT-style container
    model = create_model("vit_tiny_patch16", num_classes=2, in_chans=1, img_size=64, init=path)
    adapted = dict(model.init_report.adapted)
    assert set(adapted) == {"patch_embed.proj.weight", "pos_embed"}
    assert "14x14 -> 4x4" in adapted["pos_embed"]
    assert model.pos_embed.shape == (1, 17, 192)
    with torch.no_grad():
        expected = resample_pos_embed(source.pos_embed, (4, 4), antialias=True)
        torch.testing.assert_close(model.pos_embed, expected)
        assert torch.equal(model.pos_embed[:, :1], source.pos_embed[:, :1])
        assert torch.isfinite(model(torch.randn(1, 1, 64, 64))).all()


def test_adapt_input_conv_keeps_the_response_to_grey_images() -> None:
    torch.manual_seed(0)
    rgb = torch.randn(8, 3, 3, 3)
    grey = torch.rand(2, 1, 12, 12)
    ref = F.conv2d(grey.expand(-1, 3, -1, -1), rgb)
    torch.testing.assert_close(F.conv2d(grey, adapt_input_conv(rgb, 1)), ref)  # 3 -> 1: sum
    torch.testing.assert_close(F.conv2d(grey.expand(-1, 6, -1, -1), adapt_input_conv(rgb, 6)), ref)
    single = torch.randn(8, 1, 3, 3)
    spread = adapt_input_conv(single, 3)  # 1 -> 3: repeat / 3
    torch.testing.assert_close(spread, single.repeat(1, 3, 1, 1) / 3)
    torch.testing.assert_close(F.conv2d(grey.expand(-1, 3, -1, -1), spread), F.conv2d(grey, single))
    assert adapt_input_conv(rgb, 3) is rgb
    assert adapt_input_conv(rgb.half(), 1).dtype == torch.float16
    with pytest.raises(ModelError, match="4-channel"):
        adapt_input_conv(torch.randn(8, 4, 3, 3), 2)


def test_unusable_files_raise_model_error_naming_the_file(tmp_path: Path) -> None:
    model = create_model("resnet18", num_classes=2)
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(ModelError, match="nowhere.pth does not exist"):
        create_model("resnet18", num_classes=2, init=missing)
    for name in ("garbage.pth", "garbage.safetensors"):
        path = tmp_path / name
        path.write_bytes(b"\x00not a checkpoint\xff" * 10)
        with pytest.raises(ModelError, match=f"cannot read checkpoint .*{name}") as info:
            load_checkpoint(model, path)
        assert "\n" not in str(info.value)
    pickled = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "callback": nn.ReLU()}, pickled)  # not weights_only-safe
    with pytest.raises(ModelError, match="unsafe.pth"):
        load_checkpoint(model, pickled)
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 1, "lr": 0.1}, empty)
    with pytest.raises(ModelError, match="empty.pt holds no tensors"):
        read_checkpoint(empty)
    other = tmp_path / "weights.npz"
    other.write_bytes(b"x")
    with pytest.raises(ModelError, match="weights.npz: unsupported suffix"):
        read_checkpoint(other)


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vit.safetensors"
    save_weights(create_model("vit_tiny_patch16", num_classes=2, img_size=32), path)
    with pytest.raises(ModelError, match="vit.safetensors does not fit model resnet18"):
        create_model("resnet18", num_classes=2, init=path)


def test_partial_match_warns(rgb_resnet: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "stem_only.pth"
    torch.save({"conv1.weight": rgb_resnet.conv1.weight.detach()}, path)
    with pytest.warns(UserWarning, match="only 1 of"):
        report = load_checkpoint(create_model("resnet18", num_classes=2, in_chans=1), path)
    assert report.adapted[0][0] == "conv1.weight" and len(report.missing) > 50


def test_save_and_load_weights_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=3).eval()
    path = save_weights(model, tmp_path / "sub" / "best.safetensors")
    assert path.is_file() and sorted(p.name for p in path.parent.iterdir()) == ["best.safetensors"]
    assert read_checkpoint(path).keys() == model.state_dict().keys()
    fresh = create_model("resnet18", num_classes=3).eval()
    assert load_weights(fresh, path) == ([], [])
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))

    other = create_model("resnet18", num_classes=5)
    before = other.fc.weight.detach().clone()
    with pytest.raises(ModelError, match="best.safetensors do not match the model"):
        load_weights(other, path)
    assert torch.equal(other.fc.weight, before)  # a refused strict load leaves the model untouched
    missing, unexpected = load_weights(other, path, strict=False)
    assert set(missing) == HEAD and set(unexpected) == HEAD
    assert torch.equal(other.conv1.weight, model.conv1.weight)
    with pytest.raises(ModelError, match="must end in .safetensors"):
        save_weights(model, tmp_path / "best.pth")
