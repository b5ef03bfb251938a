"""Model registry: ``register_model``, ``create_model``, ``list_models`` and the per-model ``ModelCfg``.

A model is a function ``name(*, num_classes, in_chans=1, **kwargs) -> nn.Module`` decorated with
:func:`register_model`. The decorator attaches a frozen :class:`ModelCfg` which every other part of medlite
reads instead of guessing (input size, first conv, classifier, default CAM layer, intensity convention).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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


def _ensure_families_imported() -> None:
    # Family modules register themselves on import; importing the package imports them all.
    import medlite.models  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern`` (case-insensitive), sorted.

    Names starting with ``_`` (private, e.g. registered by a test) are listed only when the pattern starts with ``_``.
    """
    _ensure_families_imported()
    hidden = not pattern.startswith("_")
    return sorted(n for n in _MODELS
                  if fnmatch.fnmatch(n.lower(), pattern.lower()) and not (hidden and n.startswith("_")))


def get_model_cfg(name: str) -> ModelCfg:
    """The :class:`ModelCfg` of a registered model; unknown names raise ``ModelError`` with close matches."""
    _ensure_families_imported()
    if name not in _CFGS:
        close = difflib.get_close_matches(name, list(_CFGS), n=4, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else "; run `medlite models` to list them"
        raise ModelError(f"unknown model {name!r}{hint}")
    return _CFGS[name]


def create_model(
    name: str,
    num_classes: int = 1000,
    in_chans: int = 1,
    init: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model; ``model.cfg`` holds its :class:`ModelCfg`.

    Args:
        name: a name from :func:`list_models`.
        num_classes: output logits; 1 gives a single-logit binary head.
        in_chans: input channels (1 for X-rays, 3 for RGB checkpoints).
        init: optional checkpoint (``.safetensors`` or ``.pth``/``.pt``/``.ckpt`` read with
            ``weights_only=True``); matching tensors are loaded, a 3-channel stem is summed to ``in_chans``,
            a head of another size is re-initialised. The report is stored in ``model.init_report``.
        **kwargs: family-specific options (e.g. ``drop_rate``).
    """
    cfg = get_model_cfg(name)
    if num_classes < 1:
        raise ModelError(f"num_classes must be >= 1, got {num_classes}")
    if in_chans < 1:
        raise ModelError(f"in_chans must be >= 1, got {in_chans}")
    model = _MODELS[name](num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.cfg = replace(cfg)
    if init is not None:
        from medlite.models.adapt import load_checkpoint

        model.init_report = load_checkpoint(model, init)
    return model
