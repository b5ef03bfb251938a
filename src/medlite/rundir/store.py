"""Reading and writing a run directory: its contract (``run.json``), its best model, its history.

Readers that must stay torch-free (prediction with an exported ONNX model reads ``run.json`` and
``metrics.json``) use :func:`require_run_dir` and :func:`read_run_info`; :func:`load_run_model` and
:func:`save_run_info` need torch and import the model zoo only when called.
"""

from __future__ import annotations

import contextlib
import csv
import platform
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medlite.errors import MedliteError, ModelError
from medlite.rundir import layout
from medlite.utils import atomic

if TYPE_CHECKING:
    from torch import nn

    from medlite.config import RunConfig

_TRACKED_PACKAGES = ("medlite", "torch", "lightning", "torchmetrics", "numpy", "opencv-python-headless",
                     "scikit-learn", "onnxruntime")


def require_run_dir(path: str | Path) -> Path:
    """``path`` as a run directory (must hold ``config.yaml``), else a one-line error."""
    path = Path(path)
    if not path.is_dir():
        raise MedliteError(f"{path}: run directory not found")
    if not (path / layout.CONFIG).is_file():
        raise MedliteError(f"{path}: not a medlite run directory (no {layout.CONFIG})")
    return path


def library_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers, plus Python and the platform."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """``run.json`` of a finished run: model, classes, channels, input size, mean/std, preprocessing."""
    return atomic.read_json(require_run_dir(run_dir) / layout.RUN_INFO)


def save_run_info(out: Path, cfg: RunConfig, model: nn.Module, classes: list[str],
                  trust: dict[str, Any] | None = None) -> None:
    """The model's contract: classes, architecture, the preprocessing every later step must reuse and (``trust``,
    from :func:`medlite.workflows.trust.fit_trust`) the calibration and OOD gate every predicting path applies."""
    atomic.write_json(
        out / layout.RUN_INFO,
        {
            "model": cfg.train.model,
            "paradigm": cfg.train.paradigm,
            "classes": classes,
            "num_classes": len(classes),
            "in_chans": cfg.preprocess.channels,
            "input_size": cfg.preprocess.size,
            "mean": model.cfg.mean,
            "std": model.cfg.std,
            "preprocess": cfg.preprocess.model_dump(mode="json"),
            "cam_layer": model.cfg.cam_layer,
            # Architecture options (e.g. a reference head chosen by --init imagenet) that load_run_model passes back.
            "model_kwargs": model.arch_kwargs() if hasattr(model, "arch_kwargs") else {},
            **({"calibration": trust["calibration"], "ood_gate": trust["ood_gate"]} if trust else {}),
        },
    )


def load_run_model(run_dir: str | Path) -> tuple[nn.Module, RunConfig, dict[str, Any]]:
    """The best model of a finished run (eval mode), its config and ``run.json``."""
    # Imported here: the torch-free readers above share this module (start-up time of ONNX prediction).
    from medlite.config import load_config
    from medlite.models import create_model
    from medlite.models.checkpoint import load_weights

    run_dir = require_run_dir(run_dir)
    weights = run_dir / layout.WEIGHTS
    if not weights.is_file():
        raise MedliteError(f"{run_dir}: no {layout.WEIGHTS} (the run has not finished; resume it first)")
    cfg = load_config(run_dir / layout.CONFIG, stored=True)
    info = atomic.read_json(run_dir / layout.RUN_INFO)
    # Runs written before "model_kwargs" existed were built with every family's defaults.
    model = create_model(info["model"], num_classes=info["num_classes"], in_chans=info["in_chans"],
                         **info.get("model_kwargs", {}))
    load_weights(model, weights)
    return model.eval(), cfg, info


def resolve_init(init: str | Path | None) -> str | None:
    """An ``--init`` value as a weights file: a file as given; a run directory as its ``encoder.safetensors``
    (SimCLR runs) or else its ``model.safetensors``; ``"imagenet"`` as is (``create_model`` fetches those weights)."""
    if init is None:
        return None
    if init == "imagenet":
        return "imagenet"
    path = Path(init)
    if path.is_dir():
        for name in (layout.ENCODER, layout.WEIGHTS):
            if (path / name).is_file():
                return str(path / name)
        raise MedliteError(f"{path}: a run directory without {layout.WEIGHTS} or {layout.ENCODER} (not finished?)")
    return str(path)


def resolve_weights(path: str | Path) -> str:
    """A weights file, or a finished run directory as its ``model.safetensors`` (weight selection, teachers)."""
    path = Path(path)
    if path.is_dir():
        if not (path / layout.WEIGHTS).is_file():
            raise ModelError(f"{path}: not a finished run directory (no {layout.WEIGHTS}) to select weights from")
        return str(path / layout.WEIGHTS)
    return str(path)


def write_history(log_dir: Path, out: Path) -> list[dict[str, str]]:
    """Collapse Lightning's step-level ``metrics*.csv`` into one row per epoch in ``history.csv``.

    A resumed run has one file per session (``metrics.before-resume-K.csv`` then ``metrics.csv``); later files
    win for an epoch logged twice.
    """
    sources = sorted(log_dir.glob("metrics.before-resume-*.csv"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    sources += [log_dir / "metrics.csv"] if (log_dir / "metrics.csv").is_file() else []
    if not sources:
        return []
    by_epoch: dict[int, dict[str, str]] = {}
    for source in sources:
        with source.open() as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            if not row.get("epoch"):
                continue
            merged = by_epoch.setdefault(int(row["epoch"]), {"epoch": row["epoch"]})
            for key, value in row.items():
                if value and key not in ("step",) and not key.endswith("_step"):
                    merged[key.removesuffix("_epoch")] = value
    rows = [by_epoch[e] for e in sorted(by_epoch)]
    fields = ["epoch"] + sorted({k for r in rows for k in r} - {"epoch"})
    with atomic.atomic_write(out / layout.HISTORY) as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def read_history(run_dir: Path) -> list[dict[str, str]]:
    """Rows of ``history.csv`` (one per epoch), or ``[]`` when the run has none."""
    path = Path(run_dir) / layout.HISTORY
    if not path.is_file():
        return []
    with path.open() as handle:
        return list(csv.DictReader(handle))
