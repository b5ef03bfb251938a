"""``create_model``: build a registered architecture, optionally initialised from a checkpoint.

The registry (:mod:`medlite.models.registry`) is data; this module composes it with checkpoint loading
(:mod:`medlite.models.checkpoint`), as timm's ``_factory`` does over ``_registry``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from medlite.errors import ModelError
from medlite.models.checkpoint import load_checkpoint
from medlite.models.pretrained import imagenet_checkpoint, reference_kwargs
from medlite.models.registry import IMAGENET, get_model_cfg, model_builder


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
            The string ``"imagenet"`` downloads (once, into the medlite cache) and loads the official
            torchvision / timm ImageNet checkpoint of ``name`` and makes the reference head the default
            (:mod:`medlite.models.pretrained`); ``kwargs`` still override it.
        **kwargs: family-specific options (e.g. ``drop_rate``, ``head_relu``, ``global_pool``).
    """
    cfg = get_model_cfg(name)
    if num_classes < 1:
        raise ModelError(f"num_classes must be >= 1, got {num_classes}")
    if in_chans < 1:
        raise ModelError(f"in_chans must be >= 1, got {in_chans}")
    if isinstance(init, str) and init == IMAGENET:
        kwargs = {**reference_kwargs(name, num_classes), **kwargs}
        init = imagenet_checkpoint(name)  # before building: a failed download costs no model construction
    model = model_builder(name)(num_classes=num_classes, in_chans=in_chans, **kwargs)
    # A model may choose its CAM layer from its options (a class-token ViT); the registered cfg is the default.
    model.cfg = replace(cfg, cam_layer=getattr(model, "default_cam_layer", None) or cfg.cam_layer)
    if init is not None:
        model.init_report = load_checkpoint(model, init)
    return model
