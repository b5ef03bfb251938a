"""Every run setting is reachable: from a `medlite train` flag, or (listed here, with the reason) a config file.

typer builds options from a function signature, so `train`'s flags are declared one by one (generating the
signature from the pydantic models would lose the CLI's own names, such as ``--img-size`` for
``preprocess.size``, and the per-option help). This test keeps the two vocabularies from drifting apart.
"""

from __future__ import annotations

import inspect

from medlite import cli
from medlite.config import FLAG_NAMES, DataConfig, TrainConfig
from medlite.data.preprocess import PreprocessConfig

# Config field -> the train flag's parameter name, where the names differ (one table: medlite.config's).
RENAMED = {field: flag.removeprefix("--").replace("-", "_") for field, flag in FLAG_NAMES.items()}

# Settings only a run.yaml (--config) sets: fine-grained preprocessing and schedule constants that a user
# changes rarely, test-only limits, and the synthetic demo's own sizes.
CONFIG_ONLY = {
    "synthetic_per_class", "synthetic_size",
    "resize", "clahe_clip", "clahe_grid", "gaussian_sigma", "median_ksize", "quantize",
    "warmup_epochs", "lr_step_gamma", "label_smoothing", "accelerator", "num_workers", "limit_train_batches",
    "finetune_lr_factor",
}


def test_every_config_field_has_a_train_flag_or_is_config_only() -> None:
    flags = set(inspect.signature(cli.train).parameters)
    fields = {f for model in (DataConfig, PreprocessConfig, TrainConfig) for f in model.model_fields}
    unreachable = sorted(f for f in fields if RENAMED.get(f, f) not in flags and f not in CONFIG_ONLY)
    assert not unreachable, f"config fields with no `medlite train` flag: {unreachable}"
    assert CONFIG_ONLY <= fields, f"stale CONFIG_ONLY names: {sorted(CONFIG_ONLY - fields)}"


def test_every_train_flag_is_a_config_field_or_a_command_option() -> None:
    command_only = {"out", "model", "paradigm", "config", "resume"}
    fields = {RENAMED.get(f, f) for model in (DataConfig, PreprocessConfig, TrainConfig) for f in model.model_fields}
    fields |= {"model", "paradigm"}
    stray = sorted(p for p in inspect.signature(cli.train).parameters if p not in fields | command_only)
    assert not stray, f"train flags that set no config field: {stray}"
