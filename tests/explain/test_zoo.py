"""Registry-driven: Grad-CAM and Score-CAM on every registered model, default CAM layer, 1-channel input.

The model list is read at import, so a newly registered family is covered without touching this file. Each
model is built once (random init) and explained at 64 px, large enough that every default CAM layer keeps a
2 x 2 (or larger) map. Head sizes cycle through 1 (single binary logit), 2 and 5 logits over the registry.
"""

from __future__ import annotations

import pytest
import torch

from medlite.explain import GradCAM, ScoreCAM
from medlite.models import create_model, list_models

HEAVY = {"vgg19_bn"}  # 144 M parameters; deselect with -m "not slow"
MODELS = [pytest.param(n, (1, 2, 5)[i % 3], marks=[pytest.mark.slow] if n in HEAVY else [])
          for i, n in enumerate(list_models())]


@pytest.mark.parametrize(("name", "num_classes"), MODELS)
def test_gradcam_and_scorecam_on_every_model(name, num_classes) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, in_chans=1).eval()
    x = torch.randn(2, 1, 64, 64)
    with GradCAM(model) as cam:
        grad = cam(x, target=[0, max(num_classes, 2) - 1])
    # Faster Score-CAM (top-16 channels by variance) keeps 14 models x up to 2048 channels inside the time
    # budget; the full official method is checked in test_scorecam and on a trained run in test_api.
    with ScoreCAM(model, batch_size=16, max_channels=16) as cam:
        score = cam(x[:1])
    assert grad.layer == score.layer == model.cfg.cam_layer
    for result, batch in ((grad, 2), (score, 1)):
        assert result.maps.shape == (batch, 64, 64) and torch.isfinite(result.maps).all()
        assert result.maps.min() >= 0 and result.maps.max() <= 1
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
