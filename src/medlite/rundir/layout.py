"""Every file and folder name of a run directory, in one place.

A run directory is medlite's unit of reproducibility (DESIGN.md)::

    RUNDIR/config.yaml            resolved RunConfig (what was asked)
    RUNDIR/splits.csv             split manifest (file, label, group, split, labelled)
    RUNDIR/versions.json          library versions
    RUNDIR/run.json               the model's contract (classes, architecture, preprocessing)
    RUNDIR/model.safetensors      best weights
    RUNDIR/last.ckpt              last Lightning checkpoint (--resume)
    RUNDIR/history.csv            one row per epoch (from RUNDIR/logs/metrics*.csv)
    RUNDIR/metrics.json           test metrics;  RUNDIR/plots/*.png
    RUNDIR/model_card.md          what the run is and what it must not be used for
    RUNDIR/profile.json           efficiency profile (medlite profile RUNDIR)
    RUNDIR/export/                ONNX models and parity.json (medlite export)

Paradigms add their own records (encoder.safetensors, pretrain/, embedding.safetensors, episodic.json,
dual_skd.json, source_bn/); they are named here too so that readers never spell a name twice.
"""

from __future__ import annotations

from pathlib import Path

from medlite.data.records import SPLIT_MANIFEST

CONFIG = "config.yaml"
SPLITS = SPLIT_MANIFEST
VERSIONS = "versions.json"
RUN_INFO = "run.json"
WEIGHTS = "model.safetensors"
LAST_CKPT = "last.ckpt"
BEST_CKPT = "best.ckpt"
LOGS = "logs"
HISTORY = "history.csv"
METRICS = "metrics.json"
PLOTS = "plots"
PROFILE = "profile.json"
MODEL_CARD = "model_card.md"
OOD_GATE = "ood_gate.safetensors"  # the out-of-distribution gate's arrays (run.json "ood_gate" says how to use them)

# deploy (medlite export)
EXPORT_DIR = "export"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
INT8_OOD_GATE = "ood_gate.int8.safetensors"  # the int8 model's gate: its own threshold (deploy.quantize)
PARITY_FILE = "parity.json"

# explain --evaluate
EXPLAIN_METRICS = "explain_metrics.json"

# paradigm records
ENCODER = "encoder.safetensors"  # SimCLR: the pre-trained encoder (the model without its classifier)
PRETRAIN_DIR = "pretrain"  # simclr-pw: the SimCLR phase as a complete run directory
EMBEDDING = "embedding.safetensors"  # ProtoNet: the trained embedding head
EPISODIC = "episodic.json"  # ProtoNet runs and eval-prototypes/: episodic test accuracy
DUAL_SKD = "dual_skd.json"  # dual-skd: which student was kept and why
SOURCE_BN_DIR = "source_bn"  # dg: the model before AdaBN, as a run directory
PROTOTYPES_DIR = "eval-prototypes"  # medlite evaluate --prototypes
OOD_EVAL_DIR = "eval-ood"  # medlite evaluate --ood: the gate against other sources


def eval_dir(run_dir: str | Path, data: str | Path) -> Path:
    """Where ``medlite evaluate RUNDIR --data OTHER`` writes by default: ``RUNDIR/eval-<name of OTHER>``."""
    return Path(run_dir) / f"eval-{Path(data).stem}"


def evaluation_dir(run_dir: str | Path, data: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Where ``medlite evaluate`` writes ``metrics.json``: ``out`` if given, else the run directory (its own
    data) or :func:`eval_dir` (another source)."""
    if out:
        return Path(out)
    return Path(run_dir) if data is None else eval_dir(run_dir, data)


def explain_dir(run_dir: str | Path, data: str | Path) -> Path:
    """Where ``medlite explain RUNDIR --evaluate --data OTHER`` writes by default."""
    return Path(run_dir) / f"explain-{Path(data).stem}"
