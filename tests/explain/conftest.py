"""Shared fixtures of the explain tests: tiny hand-checkable models and one quickly trained phantom run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn


class TinyCNN(nn.Module):
    """conv -> ReLU -> conv (the CAM layer, stride 2) -> ReLU(inplace) -> mean -> linear, K logits."""

    def __init__(self, num_classes: int, in_chans: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_chans, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, 2, 1),
                                  nn.ReLU(inplace=True))
        self.head = nn.Linear(6, num_classes)
        self.cfg = SimpleNamespace(name="tiny", cam_layer="body.2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean((2, 3)))


class Gate(nn.Module):
    """Multiplies a feature map by a fixed 0/1 region: the model cannot see anything outside it."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("region", region.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.region


class RegionModel(nn.Module):
    """Two classes; logit of class 1 = 10 * (mean intensity inside ``region`` - 0.6), class 0 its negation.

    The CAM layer ``gate`` holds four positively scaled copies of the input, zero outside the region, so the
    model only "looks" at the region: a lesion-looking model when the region is the lesion mask, a
    corner-looking model when it is the image corners.
    """

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1, bias=False)
        scales = torch.tensor([1.0, 0.5, 2.0, 1.5])
        self.conv.weight.data = scales.reshape(4, 1, 1, 1)
        self.gate = Gate(region)
        self.area = float(region.sum())
        self.head = nn.Linear(4, 2)
        w = torch.full((4,), 10.0 / float(scales.sum()))
        self.head.weight.data = torch.stack([-w, w])
        self.head.bias.data = torch.tensor([6.0, -6.0])
        self.cfg = SimpleNamespace(name="region", cam_layer="gate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gate(torch.relu(self.conv(x))).sum((2, 3)) / self.area)


@pytest.fixture
def tiny() -> Callable[..., TinyCNN]:
    def make(num_classes: int = 3, seed: int = 0) -> TinyCNN:
        torch.manual_seed(seed)
        return TinyCNN(num_classes).eval()

    return make


@pytest.fixture
def region_model() -> Callable[[torch.Tensor], RegionModel]:
    return lambda region: RegionModel(region).eval()


def _lesion_batch(n: int = 4, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, size, size) in [0, 1]: dim noisy background and a bright square lesion; the lesion mask."""
    g = torch.Generator().manual_seed(seed)
    images = 0.2 + 0.15 * torch.rand(n, size, size, generator=g)
    mask = torch.zeros(size, size, dtype=torch.bool)
    lo, hi = size * 3 // 8, size * 5 // 8
    mask[lo:hi, lo + 2 : hi + 2] = True
    images[:, mask] = 0.85 + 0.1 * torch.rand(n, int(mask.sum()), generator=g)
    return images, mask


def _corner_region(size: int = 32, width: int = 6) -> torch.Tensor:
    region = torch.zeros(size, size, dtype=torch.bool)
    for rows in (slice(0, width), slice(size - width, size)):
        for cols in (slice(0, width), slice(size - width, size)):
            region[rows, cols] = True
    return region


@pytest.fixture
def lesion_data() -> tuple[torch.Tensor, torch.Tensor]:
    """(images float (4, 32, 32) in [0, 1], lesion mask bool (32, 32))."""
    return _lesion_batch()


@pytest.fixture
def corners() -> torch.Tensor:
    """bool (32, 32): four 6 x 6 corner squares, disjoint from the lesion."""
    return _corner_region()


@pytest.fixture(scope="session")
def phantom_run(trained_run: tuple[Path, Any]) -> Path:
    """The suite's shared run (tests/conftest.py): hybridnet_xr_50 on 48 px chestx6 phantoms, masks included."""
    return trained_run[0]
