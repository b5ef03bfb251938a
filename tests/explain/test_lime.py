"""LIME on SLIC superpixels: segmentation, and that the evidence lands on the region the model reads."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from medlite.errors import MedliteError
from medlite.explain import LimeExplainer, energy_in_mask
from medlite.explain.lime import superpixels


def test_superpixels_are_contiguous_labels() -> None:
    img = np.zeros((32, 32))
    img[8:20, 8:20] = 1.0
    labels = superpixels(img * 500 + 100, n_segments=16)  # any intensity range
    assert labels.shape == (32, 32) and labels.min() == 0
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))
    assert len(np.unique(labels[9:19, 9:19])) <= 4  # the bright square is not shredded


def test_lime_finds_the_region_the_model_reads(region_model, lesion_data) -> None:
    images, lesion = lesion_data
    model = region_model(lesion)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn/captum chatter
        with LimeExplainer(model, n_samples=64, n_segments=16, batch_size=64) as lime:
            result = lime(images[:2, None], target=1)
    assert result.maps.shape == (2, 32, 32) and result.maps.max() == 1
    energy = energy_in_mask(result.maps.numpy(), lesion.expand(2, -1, -1).numpy())
    assert (energy > 0.5).all()  # lesion is ~6 % of the image
    assert torch.equal(result.targets, torch.ones(2, dtype=torch.long))


def test_lime_argument_errors(tiny) -> None:
    with pytest.raises(MedliteError, match="n_samples"):
        LimeExplainer(tiny(), n_samples=0)
