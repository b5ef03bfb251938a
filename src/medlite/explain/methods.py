"""The explanation methods by name: the registry behind ``medlite explain --method``.

Adding a method: an :class:`~medlite.explain.explainer.Explainer` subclass in its own module and one entry in
:data:`METHODS` (plus its construction in :func:`create_explainer` when it takes options of its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from medlite.errors import MedliteError
from medlite.explain.explainer import Explainer
from medlite.explain.gradcam import GradCAM
from medlite.explain.lime import LimeExplainer
from medlite.explain.scorecam import ScoreCAM

METHODS: dict[str, type[Explainer]] = {"gradcam": GradCAM, "scorecam": ScoreCAM, "lime": LimeExplainer}

def check_methods(methods: str | Sequence[str]) -> list[str]:
    """Validated, de-duplicated method names (order kept); raises ``MedliteError`` naming the allowed ones."""
    names = [methods] if isinstance(methods, str) else list(methods)
    if not names:
        raise MedliteError(f"method: give at least one of {', '.join(METHODS)}")
    for name in names:
        if name not in METHODS:
            raise MedliteError(f"method: unknown method {name!r}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def create_explainer(method: str, model: nn.Module, *, layer: str | None = None, batch_size: int = 32,
                     **kwargs: Any) -> Explainer:
    """Build an explainer by name (``gradcam``, ``scorecam``, ``lime``).

    Args:
        method: a key of :data:`METHODS`.
        model: classifier in eval mode.
        layer: dotted layer name for CAM methods (``None`` = ``model.cfg.cam_layer``); LIME ignores it.
        batch_size: forward-pass batch of the perturbation methods (Score-CAM masks, LIME samples).
        **kwargs: method-specific options (e.g. ``max_channels`` for Score-CAM, ``n_samples`` for LIME).
    """
    check_methods(method)
    if method == "gradcam":
        return GradCAM(model, layer, **kwargs)
    if method == "scorecam":
        return ScoreCAM(model, layer, batch_size=batch_size, **kwargs)
    return LimeExplainer(model, batch_size=batch_size, **kwargs)


def resolve_class(target: int | str | None, classes: Sequence[str]) -> int | None:
    """A class index from an index, a class name or a numeric string; ``None`` stays ``None`` (predicted)."""
    if target is None:
        return None
    if isinstance(target, str) and target in classes:
        return list(classes).index(target)
    if isinstance(target, str) and target.strip().lstrip("-").isdigit():
        target = int(target)
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool) and 0 <= target < len(classes):
        return int(target)
    raise MedliteError(f"target: {target!r} is not a class of this run; classes: "
                       + ", ".join(f"{i}={c}" for i, c in enumerate(classes)))
