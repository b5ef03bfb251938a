"""Every HybridNet-XR paradigm (SimCLR, KD in both roles, DG) takes a training step with every zoo model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlite.metrics.probes import linear_probe
from medlite.models import create_model, list_models
from medlite.models.inputs import embed_images
from medlite.paradigms.domain_gap import DomainGapTask, adapt_batchnorm, batch_norms
from medlite.paradigms.kd import KDTask
from medlite.paradigms.simclr import SimCLRTask

SIZE = 32
# VGG-19 (140 M parameters, 100 M of them in one linear layer) takes ~20 s here on a shared 2-core CPU; it is
# still checked as a KD teacher in the default run (test_kd.py), and in every role with `-m slow`.
MODELS = [pytest.param(n, marks=pytest.mark.slow) if n == "vgg19_bn" else n for n in list_models()]


def _batch(seed: int, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, SIZE, SIZE), generator=g, dtype=torch.uint8)
    return images, torch.arange(n) % 2


def _step(task: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    task.train()
    task.zero_grad()
    loss = task.training_step(batch, 0)
    assert torch.isfinite(loss), f"{type(task).__name__}: loss {loss}"
    loss.backward()
    grads = [p.grad for p in task.model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{type(task).__name__}: no gradient"


@pytest.mark.parametrize("name", MODELS)
def test_every_paradigm_steps_with_model(name: str) -> None:
    torch.manual_seed(0)
    common = {"num_classes": 2, "in_chans": 1, "seed": 0}
    model = create_model(name, num_classes=2, in_chans=1)
    batch = _batch(0)

    simclr = SimCLRTask(model, **common)
    assert simclr.projection.layers[0].out_features == model.num_features  # hidden = encoder width
    assert simclr.projection.layers[-1].out_features == 128
    _step(simclr, batch)

    small = create_model("hybridnet_xr_50", num_classes=2, in_chans=1)
    _step(KDTask(model, teachers=[(small, 1)], **common), batch)  # the model as a student
    _step(KDTask(small, teachers=[(model, 1)], **common), batch)  # the model as a teacher

    target = np.random.default_rng(1).integers(0, 256, (6, SIZE, SIZE), dtype=np.uint8)
    dg = DomainGapTask(model, target_images=target, target_indices=np.arange(6), **common)
    _step(dg, batch)
    adapted = adapt_batchnorm(model, target, np.arange(6), lambda b: dg.prepare_inputs(b, train=False))
    assert adapted == len(batch_norms(model))
    assert not model.training

    # The linear probe of SimCLR installs a classifier that reproduces the fitted logistic regression.
    images = np.random.default_rng(2).integers(0, 256, (12, SIZE, SIZE), dtype=np.uint8)
    labels = np.arange(12) % 2
    prepare = lambda b: simclr.prepare_inputs(b, train=False)  # noqa: E731
    features = embed_images(model, images, np.arange(12), prepare).numpy()
    train_acc = linear_probe(model, features, labels, num_classes=2)
    with torch.no_grad():
        predicted = model(prepare(torch.from_numpy(images)[:, None])).argmax(1).numpy()
    assert np.mean(predicted == labels) == pytest.approx(train_acc)
