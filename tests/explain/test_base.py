"""The explainer template: layer lookup, targets, hook hygiene, heads, frozen backbones, memory."""

from __future__ import annotations

import tracemalloc
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from medlite.errors import MedliteError, ModelError
from medlite.explain import GradCAM, LimeExplainer, ScoreCAM, class_probs, class_scores, normalise_maps
from medlite.explain.explainer import resolve_layer, to_spatial


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def test_class_scores_and_probs_for_one_logit() -> None:
    z = torch.tensor([[2.0], [-1.0]])
    assert torch.equal(class_scores(z), torch.tensor([[-2.0, 2.0], [1.0, -1.0]]))
    p = class_probs(z)
    assert torch.allclose(p[:, 1], torch.sigmoid(z[:, 0])) and torch.allclose(p.sum(1), torch.ones(2))
    logits = torch.randn(3, 5)
    assert torch.equal(class_scores(logits), logits)
    assert torch.allclose(class_probs(logits), logits.softmax(1))


def test_normalise_maps_range_constant_and_nan() -> None:
    maps = torch.stack([torch.arange(16.0).reshape(4, 4), torch.full((4, 4), 3.0)])
    out = normalise_maps(maps)
    assert out[0].min() == 0 and out[0].max() == 1 and torch.equal(out[1], torch.zeros(4, 4))
    with pytest.warns(RuntimeWarning, match="NaN"):
        bad = normalise_maps(torch.tensor([[[float("nan"), 1.0], [0.0, 2.0]]]))
    assert torch.isfinite(bad).all() and bad.max() == 1


def test_unknown_layer_lists_valid_names(tiny) -> None:
    with pytest.raises(ModelError, match=r"'body\.9'.*did you mean .*body\.2.*valid names: body, body\.0"):
        resolve_layer(tiny(), "body.9")
    assert resolve_layer(tiny(), None)[0] == "body.2"


def test_non_spatial_layer_is_refused(tiny) -> None:
    with pytest.raises(ModelError, match="'head' outputs"):
        GradCAM(tiny(), "head")(torch.rand(1, 1, 16, 16))


def test_token_sequence_folds_to_grid() -> None:
    tokens = torch.arange(2 * 17 * 3.0).reshape(2, 17, 3)  # class token + 4 x 4 patches, D = 3
    grid = to_spatial(tokens, "blocks.0", (64, 64))
    assert grid.shape == (2, 3, 4, 4)
    assert torch.equal(grid[1, :, 0, 1], tokens[1, 2])  # patch (0, 1) is token 2 (token 0 is the class token)


@pytest.mark.parametrize("method", [GradCAM, ScoreCAM])
@pytest.mark.parametrize("num_classes", [1, 2, 5])
def test_heads_with_one_two_and_five_logits(tiny, method, num_classes) -> None:
    model = tiny(num_classes)
    x = torch.randn(3, 1, 24, 24)
    n_targets = max(num_classes, 2)
    with method(model) as explainer:
        for target in range(n_targets):
            result = explainer(x, target=target)
            assert result.maps.shape == (3, 24, 24) and torch.isfinite(result.maps).all()
            assert result.maps.min() >= 0 and result.maps.max() <= 1
            assert torch.equal(result.targets, torch.full((3,), target))
            assert torch.allclose(result.probs, class_probs(model(x))[:, target])
        predicted = explainer(x)
    assert torch.equal(predicted.targets, class_probs(model(x)).argmax(1))
    assert _hook_count(model) == 0


def test_per_image_targets_and_validation(tiny) -> None:
    model = tiny(3)
    x = torch.randn(2, 1, 16, 16)
    with GradCAM(model) as cam:
        both = cam(x, target=[2, 0])
        assert both.targets.tolist() == [2, 0]
        assert torch.allclose(both.maps[1], cam(x[1:], target=0).maps[0], atol=1e-5)
        with pytest.raises(MedliteError, match="out of range"):
            cam(x, target=3)
        with pytest.raises(MedliteError, match="2 images"):
            cam(x, target=[0, 1, 2])
        with pytest.raises(MedliteError, match=r"\(B, C, H, W\)"):
            cam(x[0])


class _Boom(nn.Module):
    """Raises on its ``fail_on``-th call, after the explained layer has already run."""

    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.calls, self.fail_on = 0, fail_on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("boom")
        return x


@pytest.mark.parametrize("method", [GradCAM, ScoreCAM])
@pytest.mark.parametrize("fail_on", [1, 2])
def test_hooks_removed_after_exception(tiny, method, fail_on) -> None:
    model = tiny(2)
    model.body.append(_Boom(fail_on))
    with pytest.raises(RuntimeError, match="boom"), method(model) as explainer:
        explainer(torch.randn(1, 1, 16, 16))
    assert _hook_count(model) == 0


def test_hooks_removed_after_context_and_between_calls(tiny) -> None:
    model = tiny(2)
    with GradCAM(model) as cam:
        cam(torch.randn(1, 1, 16, 16))
        assert _hook_count(model) == 0
    assert _hook_count(model) == 0


def test_frozen_backbone_inference_mode_and_eval_mode(tiny) -> None:
    model = tiny(3)
    x = torch.randn(2, 1, 16, 16)
    with GradCAM(model) as cam:
        reference = cam(x, target=1).maps
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.inference_mode(), GradCAM(model) as cam:
        frozen = cam(torch.randn(2, 1, 16, 16).copy_(x), target=1).maps
    assert torch.allclose(frozen, reference, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training  # the explainer never switches the mode


def test_training_mode_warns_and_is_kept(tiny) -> None:
    model = tiny(2).train()
    with pytest.warns(UserWarning, match="training mode"), GradCAM(model) as cam:
        cam(torch.randn(1, 1, 16, 16))
    assert model.training


def _rss_bytes() -> int:
    statm = Path("/proc/self/statm")
    if not statm.exists():
        pytest.skip("needs /proc/self/statm (Linux)")
    import os

    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_flat_over_50_calls(tiny) -> None:
    model = tiny(3)
    x = torch.randn(2, 1, 32, 32)

    def one_round() -> None:
        with GradCAM(model) as cam:
            cam(x)
        with ScoreCAM(model, batch_size=4) as score:
            score(x)

    for _ in range(5):  # warm-up: lazy imports, allocator pools
        one_round()
    rss = _rss_bytes()
    tracemalloc.start()
    try:
        for _ in range(50):
            one_round()
        kept, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert _hook_count(model) == 0
    assert kept < 256 * 1024, f"{kept} bytes of Python objects survived 50 calls"
    assert _rss_bytes() - rss < 32 * 2**20


def test_lime_runs_without_hooks_and_is_reproducible(tiny) -> None:
    model = tiny(3)
    x = torch.randn(1, 1, 24, 24)
    state = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn convergence chatter on a random model
        with LimeExplainer(model, n_samples=24, n_segments=9) as lime:
            a, b = lime(x), lime(x)
    assert torch.equal(a.maps, b.maps) and a.maps.shape == (1, 24, 24)
    assert torch.equal(torch.get_rng_state(), state)
    assert _hook_count(model) == 0
