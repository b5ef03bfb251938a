"""Deletion / insertion curves and AUCs."""

from __future__ import annotations

import pytest
import torch

from medlite.errors import MedliteError
from medlite.explain import GradCAM, class_probs
from medlite.explain.metrics.faithfulness import curve_auc, deletion_insertion_curves, model_scorer, saliency_rank


def _scorer(model):
    return lambda x01: class_probs(model(x01).detach())


def test_rank_is_most_salient_first_and_stable() -> None:
    sal = torch.tensor([[[0.1, 0.9], [0.5, 0.5]]])
    assert saliency_rank(sal).tolist() == [[3, 0, 1, 2]]


def test_curve_auc_trapezoid() -> None:
    curves = torch.stack([torch.full((11,), 0.3), torch.linspace(1, 0, 11)])
    assert torch.allclose(curve_auc(curves), torch.tensor([0.3, 0.5]))


def test_true_saliency_beats_its_inverse(region_model, lesion_data) -> None:
    images, lesion = lesion_data
    model = region_model(lesion)
    with GradCAM(model) as cam:
        result = cam(images[:, None], target=1)
    saliency, targets = result.maps, result.targets
    scorer = _scorer(model)
    kw = dict(steps=20, chunk=7)
    deletion, insertion = deletion_insertion_curves(scorer, images, saliency, targets, **kw)
    inv_deletion, inv_insertion = deletion_insertion_curves(scorer, images, 1 - saliency, targets, **kw)
    assert deletion.shape == (4, 21)
    p0 = class_probs(model(images[:, None]))[:, 1].detach()
    assert torch.allclose(deletion[:, 0], p0) and torch.allclose(insertion[:, -1], p0)
    assert (curve_auc(deletion) < curve_auc(inv_deletion) - 0.3).all()
    assert (curve_auc(insertion) > curve_auc(inv_insertion) + 0.3).all()
    # fill = each image's mean: the fully deleted image is flat at that mean
    mean_img = images.mean((1, 2))[:, None, None].expand_as(images)
    assert torch.allclose(deletion[:, -1], class_probs(model(mean_img[:, None]))[:, 1].detach())


def test_model_scorer_normalises_and_batches(tiny) -> None:
    model = tiny(1)
    x01 = torch.rand(5, 1, 16, 16)
    probs = model_scorer(model, mean=0.4, std=0.2, in_chans=1, batch_size=2)(x01)
    assert torch.allclose(probs, class_probs(model((x01 - 0.4) / 0.2)).detach(), atol=1e-6)
    assert probs.shape == (5, 2)


def test_shape_mismatch_is_one_line_error() -> None:
    with pytest.raises(MedliteError, match="must agree"):
        deletion_insertion_curves(lambda x: x, torch.rand(2, 8, 8), torch.rand(2, 8, 9),
                                  torch.zeros(2).long())
