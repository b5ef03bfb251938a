"""Pointing game and energy in mask, by hand and on lesion- versus corner-looking models."""

from __future__ import annotations

import numpy as np
import pytest

from medlite.errors import MedliteError
from medlite.explain import GradCAM, ScoreCAM
from medlite.explain.metrics.localisation import default_tolerance, energy_in_mask, pointing_game


def test_energy_and_pointing_by_hand() -> None:
    sal = np.zeros((3, 10, 10))
    masks = np.zeros((3, 10, 10), bool)
    masks[:, 2:5, 2:5] = True
    sal[0, 3, 3] = 3.0  # all mass inside, peak inside
    sal[0, 8, 8] = 1.0
    sal[1, 9, 9] = 2.0  # peak far outside
    sal[1, 3, 3] = 2.0 - 1e-6
    # image 2: all zeros
    assert np.allclose(energy_in_mask(sal, masks)[:2], [0.75, 0.5])
    assert np.isnan(energy_in_mask(sal, masks)[2])
    assert pointing_game(sal, masks, tolerance=0).tolist() == [True, False, False]


def test_pointing_tolerance_and_default() -> None:
    sal = np.zeros((1, 32, 32))
    mask = np.zeros((1, 32, 32), bool)
    mask[0, 10:14, 10:14] = True
    sal[0, 11, 15] = 1.0  # two pixels right of the mask (last mask column: 13)
    assert not pointing_game(sal, mask, tolerance=1)[0]
    assert pointing_game(sal, mask, tolerance=2)[0]
    assert default_tolerance(224) == 15 and default_tolerance(64) == 4
    with pytest.raises(MedliteError, match="must both be"):
        energy_in_mask(sal, mask[0])


@pytest.mark.parametrize("method", [GradCAM, ScoreCAM])
def test_lesion_looking_model_beats_corner_looking_model(region_model, lesion_data, corners, method) -> None:
    images, lesion = lesion_data
    x = images[:, None]
    masks = lesion.expand_as(images).numpy()
    scores = {}
    for name, region in (("lesion", lesion), ("corner", corners)):
        with method(region_model(region)) as explainer:
            maps = explainer(x, target=1).maps.numpy()
        scores[name] = (energy_in_mask(maps, masks).mean(), pointing_game(maps, masks, tolerance=0).mean())
    assert scores["lesion"][0] > 0.9 and scores["corner"][0] < 0.1
    assert scores["lesion"][1] == 1.0 and scores["corner"][1] == 0.0
