"""Score-CAM: the official formulation on a tiny model, constant channels, batching, channel limits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medlite.explain import ScoreCAM, class_probs


def _official_scorecam(model, x: torch.Tensor, target: int) -> torch.Tensor:
    """The authors' loop (haofanwang/Score-CAM), one image and one channel at a time: (H, W) in [0, 1]."""
    body = model.body
    with torch.no_grad():
        acts = body[2](torch.relu(body[0](x)))  # (1, K, h, w), before the in-place ReLU
        score_map = torch.zeros(1, 1, *x.shape[2:])
        for k in range(acts.shape[1]):
            saliency = F.interpolate(acts[:, k : k + 1], size=x.shape[2:], mode="bilinear",
                                     align_corners=False)
            if saliency.max() == saliency.min():
                continue
            norm = (saliency - saliency.min()) / (saliency.max() - saliency.min())
            score = class_probs(model(x * norm))[0, target]
            score_map += score * saliency
        score_map = torch.relu(score_map)[0, 0]
    return (score_map - score_map.min()) / (score_map.max() - score_map.min())


@pytest.mark.parametrize("num_classes", [1, 3])
def test_matches_official_formulation(tiny, num_classes) -> None:
    model = tiny(num_classes, seed=1)
    x = torch.randn(2, 1, 20, 20)
    with ScoreCAM(model, batch_size=5) as cam:
        maps = cam(x, target=1).maps
    for i in range(2):
        assert torch.allclose(maps[i], _official_scorecam(model, x[i : i + 1], 1), atol=1e-5)


def test_batch_size_does_not_change_the_map(tiny) -> None:
    model = tiny(3)
    x = torch.randn(3, 1, 16, 16)
    with ScoreCAM(model, batch_size=1) as one, ScoreCAM(model, batch_size=64) as many:
        assert torch.allclose(one(x).maps, many(x).maps, atol=1e-6)


def test_constant_channels_are_skipped(tiny) -> None:
    model = tiny(3)
    with torch.no_grad():  # channels 0-2 of the CAM layer become constant maps
        model.body[2].weight[:3] = 0.0
    calls = []
    model.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    with ScoreCAM(model, batch_size=100) as cam:
        result = cam(torch.randn(1, 1, 16, 16))
    assert torch.isfinite(result.maps).all()
    assert calls == [1, 3]  # the unperturbed pass, then only the 3 non-constant channels


def test_max_channels_limits_forward_passes(tiny) -> None:
    model = tiny(3)
    calls = []
    model.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    with ScoreCAM(model, batch_size=100, max_channels=2) as cam:
        cam(torch.randn(2, 1, 16, 16))
    assert calls == [2, 4]
