"""The Python functions behind every CLI subcommand (the CLI only parses arguments and prints).

Each function validates what the user gave and calls one workflow (:mod:`medlite.workflows`), deploy or explain
function; the heavy libraries (torch, Lightning) are imported by those modules, on first use, so that
``import medlite`` and ``medlite --help`` stay fast.

>>> import medlite
>>> medlite.list_models("hybridnet*")
['hybridnet_xr_100', 'hybridnet_xr_150', 'hybridnet_xr_50']
>>> result = medlite.train(source="synthetic", model="hybridnet_xr_50", epochs=2, img_size=64, out="runs/demo")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medlite.errors import MedliteError, require_positive
from medlite.rundir import layout

if TYPE_CHECKING:
    from torch import nn

    from medlite.models.selection import SelectionReport
    from medlite.workflows.train import TrainResult

# Imports inside the functions below are deliberate: each pulls in torch / Lightning / ONNX Runtime only when
# that command runs (start-up time of the CLI and of `import medlite`).


def model_table(pattern: str = "*", num_classes: int = 6, in_chans: int = 1) -> list[dict[str, Any]]:
    """One row per registered model: name, family, parameters, MACs (at its default input size) and the source of
    its ``init="imagenet"`` weights (``"torchvision"``, ``"timm"`` or ``None``).

    Parameters and MACs are counted for ``num_classes`` outputs and ``in_chans`` input channels (the X-ray
    default: 6 classes, 1 channel). MACs are multiply-accumulates of one image (FLOPs = 2 x MACs).
    """
    from medlite.metrics.profile import count_macs, count_parameters
    from medlite.models import create_model, get_model_cfg, list_models
    from medlite.models.pretrained import list_pretrained, pretrained_weights

    names = list_models(pattern)
    if not names:
        raise MedliteError(f"no model matches {pattern!r}; run `medlite models` to list them")
    rows = []
    for name in names:
        cfg = get_model_cfg(name)
        model = create_model(name, num_classes=num_classes, in_chans=in_chans).eval()
        rows.append({"name": name, "family": cfg.family, "params": count_parameters(model),
                     "macs": count_macs(model, cfg.input_size, in_chans=in_chans), "input_size": cfg.input_size,
                     "imagenet": pretrained_weights(name).source if name in list_pretrained() else None})
    return rows


def synthesize(out: str | Path, classes: str = "chestx6", per_class: int = 50, size: int = 128,
               seed: int = 0) -> Path:
    """Write a phantom dataset (``OUT/<class>/*.png``, ``OUT/masks/...``, ``OUT/manifest.csv``); returns OUT."""
    from medlite.data.synthetic import write_phantom_dataset

    require_positive("--per-class", per_class)
    require_positive("--size", size, minimum=32)
    return write_phantom_dataset(out, classes=classes, per_class=per_class, size=size, seed=seed)


def inspect(source: str | Path, *, strict: bool = False, group_from_filename: bool | str = False,
            dicom_window: str = "header") -> dict[str, Any]:
    """Summary of a data source: class counts (per split), image sizes, bit depths, duplicates, unreadable files,
    and for DICOM files what ``dicom_window`` would apply to them."""
    from medlite.data.inspect import inspect_source
    from medlite.data.sources import open_source

    return inspect_source(open_source(source, strict=strict, group_from_filename=group_from_filename),
                          dicom_window=dicom_window)


def train(config: Any = None, *, out: str | Path, source: str | None = None, img_size: int | None = None,
          **overrides: Any) -> TrainResult:
    """Train a model into a run directory; see :func:`medlite.workflows.train.train` for every setting.

    ``source`` and ``img_size`` are the CLI's names for ``data.source`` and ``preprocess.size``.
    """
    from medlite.workflows.train import train as _train

    return _train(config, out=out, source=source, size=img_size, **overrides)


def evaluate(run_dir: str | Path, data: str | None = None, split: str = "test",
             out: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a finished run (``metrics.json``); ``data`` evaluates it on another source with the same classes
    (matched by name).

    For a ``dg`` run evaluated on another source, ``metrics["adaptation"]`` compares the adapted model with the
    same weights before AdaBN (see :func:`medlite.workflows.evaluate.evaluate`).
    """
    from medlite.workflows.evaluate import evaluate as _evaluate

    return _evaluate(run_dir, data=data, split=split, out=out)


def evaluation_dir(run_dir: str | Path, data: str | None = None, out: str | Path | None = None) -> Path:
    """The folder :func:`evaluate` writes ``metrics.json`` (and its plots) into for these arguments."""
    return layout.evaluation_dir(run_dir, data, out)


evaluate_run = evaluate  # the name of earlier releases


def evaluate_prototypes(run_dir: str | Path, *, split: str = "test", k_shot: int = 5, q_query: int = 15,
                        episodes: int = 600, out: str | Path | None = None) -> dict[str, Any]:
    """Nearest-prototype classification with a finished run's encoder (the "CE encoder + prototypes" baseline);
    see :func:`medlite.workflows.evaluate.evaluate_with_prototypes`."""
    from medlite.workflows.evaluate import evaluate_with_prototypes

    for flag, value in (("--k-shot", k_shot), ("--q-query", q_query), ("--episodes", episodes)):
        require_positive(flag, value)
    return evaluate_with_prototypes(run_dir, split=split, k_shot=k_shot, q_query=q_query, episodes=episodes,
                                    out=out)


def evaluate_ood(run_dir: str | Path, sources: list[str | Path], *, out: str | Path | None = None) -> dict[str, Any]:
    """The run's OOD gate against ``sources`` of images unlike its data (AUROC, FPR at 95 % TPR, share flagged,
    and the accuracy of the kept images); see :func:`medlite.workflows.ood_eval.evaluate_ood`."""
    from medlite.workflows.ood_eval import evaluate_ood as _evaluate_ood

    return _evaluate_ood(run_dir, sources, out=out)


def calibrate(run_dir: str | Path) -> dict[str, Any]:
    """Fit (or refit) the calibration and OOD gate of a finished run, e.g. one trained before medlite had them;
    rewrites ``run.json``, ``metrics.json`` and the model card (see :func:`medlite.workflows.trust.calibrate_run`).
    """
    from medlite.workflows.trust import calibrate_run

    return calibrate_run(run_dir)


def paradigm_summary(run_dir: str | Path) -> list[str]:
    """Lines a paradigm leaves about its run directory (ProtoNet episodes, the dual-skd student kept ...)."""
    from medlite.paradigms import get_paradigm
    from medlite.rundir.store import read_run_info

    run_dir = Path(run_dir)
    return get_paradigm(read_run_info(run_dir)["paradigm"]).notes(run_dir)


def select_weights(student: nn.Module, teacher: Any, *, method: str = "uniform", pair: int | None = None,
                   seed: int = 0) -> SelectionReport:
    """Weight selection from a larger model of the same family into ``student`` (in place); ``teacher`` is a
    module, a state dict, a weights file or a finished run directory. See
    :func:`medlite.models.selection.select_weights`."""
    from medlite.models.selection import select_weights as _select
    from medlite.rundir.store import resolve_weights

    if isinstance(teacher, (str, Path)):
        teacher = resolve_weights(teacher)
    return _select(student, teacher, method=method, pair=pair, seed=seed)


def profile(target: str | Path, *, img_size: int | None = None, batch_size: int = 32,
            threads: int | None = None, device: str = "cpu",
            on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Efficiency profile of a model name or a run directory (then also written to ``RUNDIR/profile.json``);
    ``on_step`` gets a line before each measurement."""
    from medlite.workflows.profile import profile as _profile

    # 0 is refused like a negative (it once meant "the model's default size"; None is that default).
    require_positive("--img-size", img_size, minimum=8)
    require_positive("--batch-size", batch_size)
    require_positive("--threads", threads)
    return _profile(target, img_size=img_size, batch_size=batch_size, threads=threads, device=device,
                    on_step=on_step)


def compare(run_dirs: list[str | Path], out: str | Path | None = None) -> dict[str, Any]:
    """Table of runs with CIs and efficiency, Pareto frontier plots; writes ``out`` (.html/.md) when given."""
    from medlite.workflows.compare import compare_runs

    return compare_runs(run_dirs, out)


def demo(out: str | Path = "demo_out", *, per_class: int = 150, img_size: int = 64, epochs: int = 25,
         models: tuple[str, ...] = ("hybridnet_xr_100", "mobilenet_v2"), progress: bool = True,
         on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole pipeline on built-in phantoms: synthesize, train, evaluate, profile, compare.

    Writes ``OUT/data`` (ChestX6 phantoms), ``OUT/runs/<model>`` and ``OUT/report.html``; returns the
    comparison (see :func:`compare`). Everything is offline and sized for a 2-core CPU. ``on_step`` gets a
    heading before each step.
    """
    from medlite.workflows.demo import demo as _demo

    for flag, value in (("--per-class", per_class), ("--epochs", epochs)):
        require_positive(flag, value)
    require_positive("--img-size", img_size, minimum=32)
    return _demo(out, per_class=per_class, img_size=img_size, epochs=epochs, models=models, progress=progress,
                 on_step=on_step)


def predict(model: str | Path, inputs: list[str | Path], *, out: str | Path | None = None, batch_size: int = 16,
            threads: int | None = None, cam: str | Path | None = None,
            ood_policy: str = "warn") -> list[dict[str, Any]]:
    """Per-file class probabilities from a run directory or an ``.onnx`` (see :func:`medlite.deploy.predict`).

    With ``cam``, heatmaps of the predicted class are written there too: for an ``.onnx`` the torch-free class
    activation map from its ``cam_features`` output (:mod:`medlite.deploy.cam`; models whose head is not
    global-average-pool + linear refuse with the reason), for a run directory Grad-CAM (``medlite explain``).
    """
    from medlite.deploy import predict as _predict

    if cam is None or not Path(model).is_dir():
        return _predict(model, inputs, out=out, batch_size=batch_size, threads=threads, cam=cam,
                        ood_policy=ood_policy)
    rows = _predict(model, inputs, out=out, batch_size=batch_size, threads=threads, ood_policy=ood_policy)
    files = [r["file"] for r in rows if r["predicted"] is not None]
    if files:
        explain([model], files, methods=["gradcam"], out=cam)
    return rows


def split_explain_arguments(paths: list[str], methods: list[str] | None) -> tuple[list[Path], list[Path], list[str]]:
    """Sort ``medlite explain``'s positional words into run directories, image paths and method names."""
    from medlite.explain.methods import METHODS

    runs: list[Path] = []
    images: list[Path] = []
    chosen = list(methods or [])
    for word in paths:
        path = Path(word)
        if word in METHODS and not path.exists():
            chosen.append(word)
        elif path.is_dir() and (path / layout.CONFIG).is_file():
            runs.append(path)
        else:
            images.append(path)
    if not runs:
        raise MedliteError(f"explain needs at least one run directory (a folder with {layout.CONFIG})")
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise MedliteError(f"unknown explanation method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    return runs, images, chosen


def explain(run_dirs: list[str | Path], images: list[str | Path], **kwargs: Any) -> list[dict[str, Any]]:
    """Saliency overlays, raw maps and comparison grids; see :func:`medlite.explain.explain_images`."""
    from medlite.explain.images import explain_images

    if not images:
        raise MedliteError("explain needs image files or folders after the run directories (or --evaluate)")
    require_positive("--batch-size", kwargs.get("batch_size"))
    return explain_images(run_dirs, images, **kwargs)


def evaluate_explanations(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Deletion/insertion AUC, ROAD and mask scores -> ``explain_metrics.json``; see
    :func:`medlite.explain.evaluate_explanations`."""
    from medlite.explain.scoring import evaluate_explanations as _evaluate

    if kwargs.get("methods") is None:
        kwargs.pop("methods", None)
    require_positive("--n", kwargs.get("n"))
    require_positive("--batch-size", kwargs.get("batch_size"))
    return _evaluate(run_dir, **kwargs)


def export(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """ONNX export with parity report (and int8); see :func:`medlite.deploy.export_run`."""
    from medlite.deploy.onnx_export import export_run

    return export_run(run_dir, **kwargs)
