"""Saliency maps for medlite models and their quantitative checks.

Methods (each a context manager that removes its hooks): :class:`GradCAM` (captum), :class:`ScoreCAM`
(official formulation, batched), :class:`LimeExplainer` (captum LIME on SLIC superpixels). Checks:
deletion / insertion AUC, ROAD, pointing game, energy in mask. Entry points behind ``medlite explain``:
:func:`explain_images` and :func:`evaluate_explanations`.

>>> from medlite.explain import GradCAM
>>> with GradCAM(model) as cam:          # model.cfg.cam_layer by default
...     result = cam(x)                  # x: (B, C, H, W) normalised input; predicted class
>>> result.maps.shape                    # (B, H, W), each map in [0, 1]
"""

from medlite.explain.explainer import (
    CAMExplainer,
    Explainer,
    Explanation,
    class_probs,
    class_scores,
    layer_names,
    normalise_maps,
    resolve_layer,
)
from medlite.explain.gradcam import GradCAM
from medlite.explain.images import explain_images
from medlite.explain.lime import LimeExplainer, superpixels
from medlite.explain.methods import METHODS, check_methods, create_explainer, resolve_class
from medlite.explain.metrics.faithfulness import curve_auc, deletion_insertion_curves, model_scorer
from medlite.explain.metrics.localisation import energy_in_mask, pointing_game
from medlite.explain.metrics.road import noisy_linear_impute, road_scores
from medlite.explain.overlay import overlay, to_original_geometry, window
from medlite.explain.scorecam import ScoreCAM
from medlite.explain.scoring import EXPLAIN_METRICS, evaluate_explanations, select_images

__all__ = [
    "EXPLAIN_METRICS",
    "METHODS",
    "CAMExplainer",
    "Explainer",
    "Explanation",
    "GradCAM",
    "LimeExplainer",
    "ScoreCAM",
    "class_probs",
    "check_methods",
    "class_scores",
    "create_explainer",
    "curve_auc",
    "deletion_insertion_curves",
    "energy_in_mask",
    "evaluate_explanations",
    "explain_images",
    "layer_names",
    "model_scorer",
    "noisy_linear_impute",
    "normalise_maps",
    "overlay",
    "pointing_game",
    "resolve_class",
    "resolve_layer",
    "road_scores",
    "select_images",
    "superpixels",
    "to_original_geometry",
    "window",
]
