"""Tests for medlite.metrics.profile: exact MAC counts, memory protocols, timing keys and error messages."""

from __future__ import annotations

import json

import pytest
import torch
from rich.table import Table
from safetensors.torch import save_model
from torch import nn

from medlite.cli.render import format_profile
from medlite.errors import MedliteError
from medlite.metrics.profile import count_macs, count_parameters, profile_model
from medlite.metrics.profile_worker import measure_memory
from medlite.models import ModelCfg, create_model, list_models, register_model

# Registered at import (not in a fixture) because the memory worker subprocess re-loads this file to find it.
WIDE_NET = "_test_profile_wide_convnet"


def _wide_convnet(*, num_classes: int, in_chans: int = 1, width: int = 48) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_chans, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, groups=width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )


if WIDE_NET not in list_models():
    register_model(ModelCfg(name=WIDE_NET, family="_test", input_size=32))(_wide_convnet)

KEYS = {
    "model": str, "img_size": int, "batch_size": int, "in_chans": int, "num_classes": int, "params": int,
    "macs": int, "flops": int, "weights_mb": float, "peak_train_mem_mb": float, "peak_train_rss_mb": float,
    "peak_infer_mem_mb": float, "peak_infer_rss_mb": float, "train_throughput_ips": float,
    "latency_ms_p50": float, "latency_ms_p90": float, "throughput_ips_b32": float, "device": str,
    "threads": int, "torch_version": str, "cpu": str, "channels_last": bool, "memory_method": str,
}  # fmt: skip


def test_count_parameters_sums_numel() -> None:
    model = _wide_convnet(num_classes=3)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert count_parameters(nn.Conv2d(1, 8, 3)) == 8 * 9 + 8


def test_macs_of_a_conv_match_a_hand_count() -> None:
    assert count_macs(nn.Conv2d(1, 8, 3, padding=1), img_size=8, in_chans=1) == 8 * 9 * 64
    # Depthwise: each of C output channels sees one input channel, so C * 3*3 * H*W, not C*C*9*H*W.
    assert count_macs(nn.Conv2d(16, 16, 3, padding=1, groups=16), img_size=8, in_chans=16) == 16 * 9 * 64
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    assert count_macs(model, img_size=8) == 64 * 10


@pytest.mark.parametrize(("name", "published_macs"), [("mobilenet_v2", 300e6), ("resnet18", 1.814e9)])
def test_macs_of_registered_models_match_published_values(name: str, published_macs: float) -> None:
    # MobileNetV2 paper Table 4 (300 M, depthwise-heavy); torchvision ResNet-18 card (1.81 G); RGB, 1000-way.
    if name not in list_models():
        pytest.skip(f"{name} is not registered")
    model = create_model(name, num_classes=1000, in_chans=3)
    assert count_macs(model, 224, in_chans=3) == pytest.approx(published_macs, rel=0.01)


def test_macs_scale_with_pixels_and_mode_is_restored() -> None:
    model = _wide_convnet(num_classes=6).train()
    small, large = count_macs(model, 32), count_macs(model, 64)
    assert 3.9 < large / small <= 4.0  # convs scale with H*W; only the tiny linear head does not
    assert model.training


@pytest.fixture(scope="module")
def wide_profile() -> dict:
    # One full profile (its memory subprocess is the slow part) shared by the two tests below.
    return profile_model(WIDE_NET, img_size=64, batch_size=16, warmup=1, iters=3, threads=1)


def test_profile_model_keys_types_and_values(wide_profile: dict) -> None:
    res = wide_profile
    json.dumps(res)  # JSON-serialisable as promised
    for key, typ in KEYS.items():
        assert isinstance(res[key], typ), (key, res[key])
    model = _wide_convnet(num_classes=6)
    assert res["params"] == count_parameters(model)
    assert res["macs"] == count_macs(model, 64) and res["flops"] == 2 * res["macs"]
    # fp32 weights plus a few BN buffers and the safetensors header.
    assert res["weights_mb"] == pytest.approx(res["params"] * 4 / 1e6, rel=0.05, abs=0.01)
    assert "subprocess" in res["memory_method"]
    assert res["peak_train_mem_mb"] > res["peak_infer_mem_mb"] > 0
    assert res["peak_train_rss_mb"] > res["peak_train_mem_mb"]
    assert 0 < res["latency_ms_p50"] <= res["latency_ms_p90"]
    assert res["train_throughput_ips"] > 0 and res["throughput_ips_b32"] > 0
    assert res["threads"] == 1 and res["channels_last"] and res["device"] == "cpu"
    table = format_profile(res)
    assert isinstance(table, Table) and table.row_count >= 12


def test_subprocess_train_memory_grows_with_batch(wide_profile: dict) -> None:
    model = _wide_convnet(num_classes=6)
    kw = dict(img_size=64, in_chans=1, num_classes=6, threads=1, channels_last=True)
    small = measure_memory(WIDE_NET, model, batch_size=2, device=torch.device("cpu"), **kw)
    assert "subprocess" in small["memory_method"] and small["peak_train_mem_mb"] > 0
    # A 48x64x64 fp32 map is 0.79 MB per image and several are kept for backward: ~+90 MB for 14 images.
    assert wide_profile["peak_train_mem_mb"] > small["peak_train_mem_mb"] + 30


def test_unregistered_module_falls_back_in_process_and_is_not_modified(tmp_path) -> None:
    model = _wide_convnet(num_classes=2, width=16)  # not the registered default width: cannot be rebuilt
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights = tmp_path / "w.safetensors"
    save_model(model, str(weights))
    res = profile_model(
        model, img_size=32, batch_size=2, num_classes=2, warmup=1, iters=3, weights_path=weights
    )
    assert "in-process" in res["memory_method"] and res["peak_train_rss_mb"] is None
    assert res["peak_train_mem_mb"] > res["peak_infer_mem_mb"] > 0
    assert res["weights_mb"] == pytest.approx(weights.stat().st_size / 1e6)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training


def test_in_process_memory_grows_with_batch() -> None:
    model = _wide_convnet(num_classes=2, width=16)
    kw = dict(
        img_size=32, in_chans=1, num_classes=2, threads=1, channels_last=False, device=torch.device("cpu")
    )
    small = measure_memory("not-registered", model, batch_size=2, **kw)["peak_train_mem_mb"]
    large = measure_memory("not-registered", model, batch_size=8, **kw)["peak_train_mem_mb"]
    # 16x32x32 fp32 maps are 65.5 kB per image and ~5 are saved for backward: ~+2 MB for 6 more images.
    assert large > small + 1.0


def test_threads_restored_and_bad_arguments_are_one_line_errors(tmp_path) -> None:
    before = torch.get_num_threads()
    res = profile_model(
        WIDE_NET, img_size=16, batch_size=2, warmup=0, iters=1, threads=1, measure_memory=False
    )
    assert res["threads"] == 1 and res["peak_train_mem_mb"] is None and torch.get_num_threads() == before
    with pytest.raises(MedliteError, match="device"):
        profile_model(WIDE_NET, device="tpu", measure_memory=False)
    with pytest.raises(MedliteError, match="batch_size"):
        profile_model(WIDE_NET, batch_size=0)
    with pytest.raises(MedliteError, match="in_chans"):
        profile_model(nn.Conv2d(3, 4, 3), img_size=16, in_chans=1, measure_memory=False)
    with pytest.raises(MedliteError, match="missing.safetensors"):
        profile_model(WIDE_NET, img_size=16, weights_path=tmp_path / "missing.safetensors")
