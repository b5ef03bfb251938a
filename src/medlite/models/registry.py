"""Model registry (data only): ``register_model``, ``list_models``, ``get_model_cfg`` and the per-model ``ModelCfg``.

A model is a function ``name(*, num_classes, in_chans=1, **kwargs) -> nn.Module`` decorated with
:func:`register_model`. The decorator records a frozen :class:`ModelCfg` which every other part of medlite
reads instead of guessing (input size, first conv, classifier, default CAM layer, intensity convention).
Family modules register themselves when :mod:`medlite.models` is imported (which importing this module
always does first); :func:`medlite.models.factory.create_model` builds them.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from medlite.errors import ModelError


@dataclass(frozen=True)
class ModelCfg:
    """What the rest of medlite needs to know about a registered architecture.

    Attributes:
        name: registered name, e.g. ``"mobilenet_v2"``.
        family: architecture family, e.g. ``"mobilenet_v2"`` (weight selection only pairs models of one family).
        input_size: default square input side in pixels.
        first_conv: dotted name of the stem conv whose weight has ``in_chans`` input channels.
        classifier: dotted name of the final ``nn.Linear`` (or 1x1 conv) that maps features to logits.
        cam_layer: dotted name of the default layer for Grad-CAM / Score-CAM (spatial, last stage).
        mean: per-channel mean subtracted after intensities are scaled to [0, 1].
        std: per-channel std divided after the mean is subtracted.
        paper: citation / URL of the architecture.
        layout: which public checkpoints' parameter names this module follows ("torchvision", "timm", "medlite").
    """

    name: str
    family: str
    input_size: int = 224
    first_conv: str = ""
    classifier: str = ""
    cam_layer: str = ""
    mean: float = 0.5
    std: float = 0.25
    paper: str = ""
    layout: str = "medlite"


#: The ``init=`` value that means "the official ImageNet checkpoint of this architecture".
IMAGENET = "imagenet"

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_CFGS: dict[str, ModelCfg] = {}


def register_model(cfg: ModelCfg) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model-building function under ``cfg.name``; refuses duplicate names."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if cfg.name in _MODELS:
            raise ValueError(f"model {cfg.name!r} is already registered")
        _MODELS[cfg.name] = fn
        _CFGS[cfg.name] = cfg
        return fn

    return decorator


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern`` (case-insensitive), sorted.

    Names starting with ``_`` (private, e.g. registered by a test) are listed only when the pattern starts with ``_``.
    """
    hidden = not pattern.startswith("_")
    return sorted(n for n in _MODELS
                  if fnmatch.fnmatch(n.lower(), pattern.lower()) and not (hidden and n.startswith("_")))


def get_model_cfg(name: str) -> ModelCfg:
    """The :class:`ModelCfg` of a registered model; unknown names raise ``ModelError`` with close matches."""
    if name not in _CFGS:
        close = difflib.get_close_matches(name, list(_CFGS), n=4, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else "; run `medlite models` to list them"
        raise ModelError(f"unknown model {name!r}{hint}")
    return _CFGS[name]


def model_builder(name: str) -> Callable[..., nn.Module]:
    """The registered building function of ``name`` (see :func:`get_model_cfg` for unknown names)."""
    get_model_cfg(name)
    return _MODELS[name]


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered model (private ``_`` names included)."""
    return name in _MODELS
