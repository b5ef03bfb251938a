"""The resolved configuration of a run: what data, which preprocessing, which model, how it was trained.

A :class:`RunConfig` is written to ``RUNDIR/config.yaml`` at the start of every run and read back by
``evaluate``, ``export``, ``predict`` and ``--resume``, so a run directory alone reproduces its numbers.
Validation errors become one-line :class:`~medlite.errors.MedliteError` messages naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medlite.data.prepared import DataConfig
from medlite.data.preprocess import LEGACY_SETTINGS, PreprocessConfig
from medlite.errors import MedliteError
from medlite.models import get_model_cfg


class TrainConfig(BaseModel):
    """Optimisation settings. Defaults follow METHODS.md §7/§10 and DESIGN.md (AdamW, cosine, warm-up)."""

    model_config = ConfigDict(extra="forbid")

    model: str = "hybridnet_xr_100"
    paradigm: Literal["supervised", "simclr", "simclr-pw", "kd", "dg", "dual-skd", "protonet"] = "supervised"
    init: str | None = None
    # Weight selection (METHODS.md §1): initialise from a larger model of the same family (run dir or weights file).
    init_select: str | None = None
    select_method: Literal["uniform", "consecutive", "random-consistent", "random"] = "uniform"
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    warmup_epochs: float = Field(1.0, ge=0.0)
    schedule: Literal["cosine", "step"] = "cosine"
    lr_step_epochs: int = Field(10, ge=1)
    lr_step_gamma: float = Field(0.5, gt=0.0, le=1.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    balance: Literal["none", "loss", "sampler"] = "loss"
    augment: Literal["none", "supervised", "simclr"] = "supervised"
    early_stopping_patience: int = Field(10, ge=0)
    seed: int = 0
    deterministic: bool = False
    devices: int = Field(1, ge=1)
    num_nodes: int = Field(1, ge=1)
    accelerator: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(0, ge=0)
    limit_train_batches: int | None = Field(None, ge=1)
    # SimCLR pre-training (paradigms simclr, simclr-pw; METHODS.md §7): NT-Xent tau, length of the SimCLR phase.
    temperature: float = Field(0.5, gt=0.0)
    pretrain_epochs: int = Field(100, ge=1)
    # Under DDP (--devices/--num-nodes), NT-Xent negatives from every process's batch, not only the local one:
    # the loss then does not depend on how the global batch is split (README "Several machines").
    simclr_gather_distributed: bool = True
    # Extra sources whose images (labels ignored; their train split when they define splits) join the SimCLR
    # training images; the labelled source's training split is always used.
    unlabelled: list[str] = Field(default_factory=list)
    # Knowledge distillation (paradigm kd; METHODS.md §3): teacher run directories (averaged), or a zoo model
    # with a checkpoint that has the run's classes; loss alpha * CE + (1 - alpha) * T^2 * KL.
    teacher: list[str] = Field(default_factory=list)
    teacher_model: str | None = None
    teacher_init: str | None = None
    kd_alpha: float = Field(0.5, ge=0.0, le=1.0)
    kd_temperature: float = Field(4.0, gt=0.0)
    # Domain-gap adaptation (paradigm dg): the unlabelled target source and the CORAL loss weight.
    target: str | None = None
    coral_weight: float = Field(1.0, ge=0.0)
    # Dual-model self-distillation (paradigm dual-skd; METHODS.md §2): students selected from `teacher`;
    # loss (1 - skd_alpha) * CE + skd_alpha * T^2 * KL(B || A); B an EMA of A (momentum None = 0.996, or 0.99
    # under 2,000 steps); the last `finetune_epochs` of `epochs` (None = 10 %) are CE on A at lr x finetune_lr_factor.
    skd_mode: Literal["ema", "swap", "mutual", "ema-only"] = "ema"
    skd_alpha: float = Field(0.5, ge=0.0, le=1.0)
    skd_temperature: float = Field(4.0, gt=0.0)
    ema_momentum: float | None = Field(None, ge=0.0, lt=1.0)
    finetune_epochs: int | None = Field(None, ge=0)
    finetune_lr_factor: float = Field(0.1, gt=0.0, le=1.0)
    # Prototypical networks (paradigm protonet; METHODS.md §9): n_way None = every class in each episode.
    n_way: int | None = Field(None, ge=2)
    k_shot: int = Field(5, ge=1)
    q_query: int = Field(15, ge=1)
    episodes_per_epoch: int = Field(100, ge=1)
    eval_episodes: int = Field(600, ge=1)
    embedding_dim: int = Field(128, ge=1)

    @field_validator("model", "teacher_model")
    @classmethod
    def _known_model(cls, name: str | None) -> str | None:
        if name is not None:
            get_model_cfg(name)  # raises ModelError with close matches
        return name

    @field_validator("teacher", "unlabelled", mode="before")
    @classmethod
    def _as_list(cls, value: object) -> object:
        return [value] if isinstance(value, (str, Path)) else value

    @model_validator(mode="after")
    def _paradigm_needs(self) -> TrainConfig:
        if self.paradigm == "kd" and not self.teacher and self.teacher_model is None:
            raise ValueError("paradigm kd needs --teacher RUNDIR or --teacher-model NAME --teacher-init FILE")
        if self.teacher_model is not None and self.teacher_init is None:
            raise ValueError("--teacher-model needs --teacher-init FILE (a checkpoint with the run's classes)")
        if self.paradigm == "dg" and self.target is None:
            raise ValueError("paradigm dg needs --target SOURCE (the unlabelled target domain)")
        if self.paradigm == "dual-skd":
            if len(self.teacher) != 1:
                raise ValueError("paradigm dual-skd needs one --teacher (a run directory or weights file of a larger "
                                 "model of the same family) to select both students from")
            if self.init_select is not None or self.init is not None:
                raise ValueError("paradigm dual-skd selects its students from --teacher; drop --init/--init-select")
        if self.paradigm == "protonet" and self.devices * self.num_nodes > 1:
            raise ValueError("paradigm protonet trains one episode per step in one process; use --devices 1")
        if self.unlabelled and self.paradigm not in ("simclr", "simclr-pw"):
            raise ValueError(f"--unlabelled adds SimCLR pre-training images; paradigm {self.paradigm} does not use "
                             f"them (use simclr or simclr-pw)")
        if self.init_select is not None and self.init is not None:
            raise ValueError("give --init or --init-select, not both")
        return self


class RunConfig(BaseModel):
    """Everything needed to reproduce a run."""

    model_config = ConfigDict(extra="forbid")

    data: DataConfig = Field(default_factory=DataConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def with_absolute_paths(self) -> RunConfig:
        """A copy whose paths that exist (source, split, init, teacher, target, unlabelled) are absolute.

        A run directory is read from wherever the user stands later (``evaluate``, ``export``, ``--resume``),
        so paths relative to the training working directory would stop resolving. Built-in names such as
        ``synthetic`` and ``imagenet`` and paths that do not exist are kept as given.
        """

        def absolute(value: str | None) -> str | None:
            if value is None or value.split(":", 1)[0] == "synthetic" or value == "imagenet":
                return value
            if not Path(value).exists():
                return value
            return str(Path(value).resolve())

        data = self.data.model_copy(update={"source": absolute(self.data.source),
                                            "split_from": absolute(self.data.split_from)})
        t = self.train
        train = t.model_copy(update={
            "init": absolute(t.init), "init_select": absolute(t.init_select), "teacher_init": absolute(t.teacher_init),
            "target": absolute(t.target), "teacher": [absolute(p) for p in t.teacher],
            "unlabelled": [absolute(p) for p in t.unlabelled]})
        return self.model_copy(update={"data": data, "train": train})


# Config field -> the `medlite train` flag that sets it, where the names differ (the rest: ``--field-name``).
FLAG_NAMES = {"source": "--data", "size": "--img-size", "early_stopping_patience": "--patience"}


def flag_name(field: str) -> str:
    """The command-line spelling of a flat setting: ``size`` -> ``--img-size``, ``batch_size`` -> ``--batch-size``."""
    return FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def _bad_override(given: dict[str, tuple[type[BaseModel], Any]]) -> str | None:
    """One line naming the first flat override (``key -> (its section model, value)``) that is invalid on its
    own, by its flag; None when each is valid alone."""
    for key, (model, value) in given.items():
        try:
            model.model_validate({key: value})
        except (ValidationError, MedliteError) as err:
            first = err.errors()[0] if isinstance(err, ValidationError) else {"loc": (), "msg": str(err)}
            msg = first["msg"].removeprefix("Value error, ")
            # PreprocessConfig words its own line ("preprocess: size=0 is invalid: <why>"): keep the why.
            head, invalid, why = msg.partition(" is invalid: ")
            if tuple(first["loc"]) == (key,):
                return f"{flag_name(key)} {value!r}: {msg}"
            if invalid and head.endswith(f"{key}={value!r}"):
                return f"{flag_name(key)} {value!r}: {why}"
            # Otherwise a rule across settings (dual-skd needs --teacher ...): the whole config's error says it.
    return None


def _one_line(err: ValidationError, origin: str) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    return f"{origin}: {where}: {first['msg']} (got {first.get('input')!r})"


def build_config(base: dict[str, Any] | None = None, **overrides: Any) -> RunConfig:
    """Merge ``overrides`` (flat names such as ``epochs=5`` or ``source="x"``) into ``base`` and validate.

    Flat names are routed to the section that defines them, so the CLI and the Python API share one
    vocabulary. ``None`` values are ignored (an option the user did not give).
    """
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (base or {}).items()}
    sections = {"data": DataConfig, "preprocess": PreprocessConfig, "train": TrainConfig}
    given: dict[str, tuple[type[BaseModel], Any]] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        # Python callers pass pathlib paths; the config stores (and writes to YAML) plain strings.
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, (list, tuple)):
            value = [str(v) if isinstance(v, Path) else v for v in value]
        section = next((s for s, model in sections.items() if key in model.model_fields), None)
        if section is None:
            raise MedliteError(f"unknown setting {key!r}")
        merged.setdefault(section, {})[key] = value
        given[key] = (sections[section], value)
    try:
        return RunConfig(**merged)
    except (ValidationError, MedliteError) as err:
        # Name a bad option by its flag (`--img-size 0: ...`), not the config field it sets (`preprocess: size`).
        message = _bad_override(given)
        if message is None:
            message = _one_line(err, "config") if isinstance(err, ValidationError) else str(err)
        raise MedliteError(message) from None


def load_config(path: str | Path, *, stored: bool = False, **overrides: Any) -> RunConfig:
    """Read a ``run.yaml`` / ``config.yaml`` and apply flat ``overrides`` on top.

    ``stored=True`` marks the ``config.yaml`` of an existing run directory: preprocessing settings it lacks
    take the values the run was made with (:data:`~medlite.data.preprocess.LEGACY_SETTINGS`), not today's
    defaults, so an old run is evaluated, resumed and exported with the preprocessing it was trained on.
    """
    path = Path(path)
    if not path.is_file():
        raise MedliteError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise MedliteError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise MedliteError(f"{path}: expected a mapping with data/preprocess/train sections")
    if stored and isinstance(raw.get("preprocess", {}), dict):
        raw["preprocess"] = {**LEGACY_SETTINGS, **(raw.get("preprocess") or {})}
    try:
        return build_config(raw, **overrides)
    except MedliteError as err:
        raise MedliteError(f"{path}: {err}") from None


def resolve_config(config: RunConfig | str | Path | None, **overrides: Any) -> RunConfig:
    """A run's settings from what a caller gave (a :class:`RunConfig`, a YAML path, or nothing) plus flat
    overrides, with every path made absolute (the run directory may be read from another working directory)."""
    if isinstance(config, RunConfig):
        cfg = build_config(config.model_dump(mode="json"), **overrides)
    elif config is not None:
        cfg = load_config(config, **overrides)
    else:
        cfg = build_config(None, **overrides)
    return cfg.with_absolute_paths()
