"""Fixtures for the deploy tests: cheap hand-built run directories on synthetic phantoms.

A run directory is assembled the way ``medlite.workflows.train.train`` writes one (config, split manifest, weights,
``run.json``, optionally ``metrics.json`` with a tuned threshold) but with a random-init model, so no training
is needed. The phantom caches live in the suite-wide ``MEDLITE_CACHE`` (tests/conftest.py), so each is built
once per image size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from medlite.config import build_config
from medlite.data.prepared import prepare_data
from medlite.data.splits import SplitManifest
from medlite.deploy.contract import normalise
from medlite.models import create_model
from medlite.models.checkpoint import save_weights
from medlite.rundir import layout
from medlite.rundir.store import save_run_info
from medlite.utils import atomic


def _calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Set BatchNorm statistics from ``x``: a random-init net in eval mode otherwise gives ~1e-10 logits."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batch
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


def _decisive_head(model: nn.Module, seed: int, scale: float) -> None:
    """Redraw the classifier as N(0, scale^2 / fan_in): O(1) logits, so parity sees distinct probabilities."""
    head = model.get_classifier()
    fan_in = math.prod(head.weight.shape[1:])
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * (scale / math.sqrt(fan_in)))


@pytest.fixture(scope="session")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make_run(model, size=64, classes="pediatric3", threshold=None, **preprocess) -> run directory``.

    ``threshold`` writes a ``metrics.json`` with that validation-tuned operating point (binary runs);
    ``head_scale`` sets the spread of the random logits.
    """

    def _make(model: str = "hybridnet_xr_50", size: int = 64, classes: str = "pediatric3",
              threshold: float | None = None, per_class: int = 4, head_scale: float = 3.0,
              **preprocess: Any) -> Path:
        root = tmp_path_factory.mktemp(f"run-{model}")
        cfg = build_config(None, source=f"synthetic:{classes}", synthetic_per_class=per_class,
                           synthetic_size=max(64, size), size=size, model=model, val_frac=0.25, test_frac=0.0,
                           **preprocess)
        data = prepare_data(cfg, progress=False)
        atomic.write_text(root / layout.CONFIG, cfg.to_yaml())
        SplitManifest.from_source(data.source, data.splits, fraction_indices=np.flatnonzero(data.in_fraction),
                                  record_indices=data.cached.record_indices).save(root / layout.SPLITS)
        torch.manual_seed(0)
        net = create_model(model, num_classes=len(data.classes), in_chans=cfg.preprocess.channels)
        contract = {"input_size": size, "in_chans": cfg.preprocess.channels, "mean": net.cfg.mean,
                    "std": net.cfg.std}
        train_images = normalise(data.cached.images[data.indices("train")], contract)
        _calibrate_batchnorm(net, torch.from_numpy(train_images))
        _decisive_head(net, seed=1, scale=head_scale)
        save_weights(net, root / layout.WEIGHTS)
        save_run_info(root, cfg, net, data.classes)
        if threshold is not None:
            atomic.write_json(root / layout.METRICS,
                              {"thresholds": {"youden": {"threshold": threshold, "chosen_on": "val"}}})
        return root

    return _make


@pytest.fixture(scope="session")
def binary_export(make_run: Callable[..., Path]) -> tuple[Path, dict[str, Any]]:
    """A binary run (tuned threshold 0.4, CLAHE + median filter) exported to fp32 and int8 ONNX, once."""
    from medlite.deploy import export_run

    # A unit-scale head: a large one amplifies the int8 rounding of a random net (trained nets are smoother).
    run = make_run("hybridnet_xr_50", size=48, classes="binary", threshold=0.4, per_class=8, head_scale=1.0,
                   equalize="clahe", median_ksize=3)
    return run, export_run(run, int8=True)


@pytest.fixture(scope="session")
def exported_model(make_run: Callable[..., Path]) -> Callable[[str], tuple[Path, dict[str, Any]]]:
    """``exported_model(name) -> (run, export report)``: a random-init run of ``name`` exported to fp32 ONNX
    once per session (64 px; 32 px for VGG, whose 140 M parameters make anything larger slow)."""
    from medlite.deploy import export_run

    cache: dict[str, tuple[Path, dict[str, Any]]] = {}

    def _get(name: str) -> tuple[Path, dict[str, Any]]:
        if name not in cache:
            run = make_run(name, size=32 if name == "vgg19_bn" else 64)
            cache[name] = run, export_run(run)
        return cache[name]

    return _get
