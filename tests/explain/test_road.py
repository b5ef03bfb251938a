"""ROAD: noisy linear imputation and the combined MoRF / LeRF score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlite.errors import MedliteError
from medlite.explain import GradCAM, class_probs
from medlite.explain.metrics.road import NEIGHBOUR_WEIGHTS, noisy_linear_impute, road_scores


def test_removed_pixel_becomes_its_neighbour_average() -> None:
    img = np.random.default_rng(0).random((5, 5))
    removed = np.zeros((5, 5), bool)
    removed[2, 2] = True
    out = noisy_linear_impute(img, removed, noise=0.0)
    expected = sum(w * img[2 + dr, 2 + dc] for dr, dc, w in NEIGHBOUR_WEIGHTS)
    assert np.isclose(out[2, 2], expected, atol=1e-6)
    assert np.allclose(out[~removed], img[~removed], atol=1e-6)


def test_corner_pixel_uses_renormalised_inside_neighbours() -> None:
    img = np.arange(16, dtype=float).reshape(4, 4)
    removed = np.zeros((4, 4), bool)
    removed[0, 0] = True
    out = noisy_linear_impute(img, removed, noise=0.0)
    expected = (img[0, 1] / 6 + img[1, 0] / 6 + img[1, 1] / 12) / (1 / 6 + 1 / 6 + 1 / 12)
    assert np.isclose(out[0, 0], expected, atol=1e-5)


def test_block_of_removed_pixels_solved_jointly_reproduces_a_linear_ramp() -> None:
    img = np.add.outer(np.arange(12.0), 2 * np.arange(12.0)) / 40  # linear: harmonic for symmetric weights
    removed = np.zeros_like(img, bool)
    removed[3:9, 4:10] = True
    out = noisy_linear_impute(img, removed, noise=0.0)
    assert np.allclose(out, img, atol=1e-5)
    noisy = noisy_linear_impute(img, removed, noise=0.01, rng=np.random.default_rng(0))
    assert 0.005 < np.std(noisy[removed] - img[removed]) < 0.02
    with pytest.raises(MedliteError, match="every pixel"):
        noisy_linear_impute(img, np.ones_like(removed))


def test_road_combined_positive_for_true_saliency(region_model, lesion_data) -> None:
    images, lesion = lesion_data
    model = region_model(lesion)
    with GradCAM(model) as cam:
        result = cam(images[:, None], target=1)
    scorer = lambda x01: class_probs(model(x01).detach())  # noqa: E731
    true = road_scores(scorer, images, result.maps, result.targets, percentiles=(10, 50, 90))
    inverse = road_scores(scorer, images, 1 - result.maps, result.targets, percentiles=(10, 50, 90))
    assert true["morf"].shape == (4, 3) and true["combined"].shape == (4,)
    assert (true["combined"] > 0.2).all() and (inverse["combined"] < -0.2).all()
    assert torch.allclose(true["combined"], (true["lerf"].mean(1) - true["morf"].mean(1)) / 2)
