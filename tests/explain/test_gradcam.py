"""Grad-CAM through captum: equality with a hand computation, single-logit heads, ViT token layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medlite.explain import GradCAM
from medlite.models import create_model


def _hand_gradcam(model, x: torch.Tensor, target: int, negate: bool = False) -> torch.Tensor:
    """Selvaraju et al. step by step, without hooks or in-place ops: (B, H, W) in [0, 1]."""
    body = model.body
    acts = body[2](torch.relu(body[0](x))).detach().requires_grad_(True)
    logits = model.head(torch.relu(acts).mean((2, 3)))
    score = logits[:, target] if logits.shape[1] > 1 else logits[:, 0]
    (grads,) = torch.autograd.grad((-score if negate else score).sum(), acts)
    cam = torch.relu((grads.mean((2, 3), keepdim=True) * acts).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0].detach()
    flat = cam.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo)).reshape(cam.shape)


@pytest.mark.parametrize("target", [0, 2])
def test_equals_hand_computed_gradcam(tiny, target) -> None:
    model = tiny(3)
    x = torch.randn(2, 1, 20, 20)
    with GradCAM(model) as cam:
        maps = cam(x, target=target).maps
    assert torch.allclose(maps, _hand_gradcam(model, x, target), atol=1e-5)


def test_single_logit_negative_class_uses_negated_logit(tiny) -> None:
    model = tiny(1, seed=3)
    x = torch.randn(2, 1, 20, 20)
    with GradCAM(model) as cam:
        positive, negative = cam(x, target=1).maps, cam(x, target=0).maps
    assert torch.allclose(positive, _hand_gradcam(model, x, 0), atol=1e-5)
    assert torch.allclose(negative, _hand_gradcam(model, x, 0, negate=True), atol=1e-5)


def test_vit_token_layer_matches_its_grid_layer() -> None:
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16", num_classes=2).eval()
    x = torch.randn(1, 1, 64, 64)
    with GradCAM(model, "to_grid") as grid_cam, GradCAM(model, "norm") as token_cam:
        grid_map, token_map = grid_cam(x, target=1).maps, token_cam(x, target=1).maps
    # "norm" emits (B, 1 + 16, D) tokens; folded (class token dropped) they are exactly to_grid's output.
    assert torch.allclose(token_map, grid_map, atol=1e-5) and grid_map.max() == 1
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # no routing hook left behind
