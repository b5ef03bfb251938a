"""The ``medlite`` command line: one thin function per subcommand over :mod:`medlite.api`.

User mistakes (:class:`~medlite.errors.MedliteError`) print one line to stderr and exit with code 2.
"""

from __future__ import annotations

import functools
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from medlite import api
from medlite.cli.render import (
    console_table,
    format_inspection,
    format_metrics,
    format_ood,
    format_predictions,
    format_profile,
    format_trust,
)
from medlite.errors import MedliteError

app = typer.Typer(help="Lightweight chest X-ray classifiers: build, train, compare, explain, deploy.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Create and inspect data sources.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)
P = ParamSpec("P")
R = TypeVar("R")

Source = Annotated[str, typer.Argument(
    help="folder, CSV manifest, MedMNIST .npz, or 'synthetic[:chestx6|pediatric3|binary]'")]
GroupOpt = Annotated[str | None, typer.Option("--group-from-filename", help="derive patient ids from file "
                     "names: 'auto' (personNNN_..., IM-NNNN-...) or a regex whose first group is the id")]
_WINDOW_HELP = ("DICOM windowing: header (VOI LUT sequence, else the first window centre/width, else auto), auto "
                "(0.5-99.5th percentile window of the body) or none (the BitsStored range)")


def _warning_line(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    # A warning is for the user, not a developer: one line, without the source file and code line.
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def _step(text: str) -> None:
    """A progress line on stderr (so piped stdout stays the result), stamped with the time of day."""
    err_console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {escape(text)}", highlight=False, soft_wrap=True)


def friendly_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a user mistake into one red line on stderr and exit code 2 (no traceback); Ctrl-C into code 130;
    each warning into one ``warning:`` line."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _warning_line
                return command(*args, **kwargs)
        except MedliteError as err:
            # escape: a message may hold brackets ("[2]", "[/data/x]") that rich would read as markup.
            err_console.print(f"[red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as err:
            err_console.print(f"interrupted. {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None

    return wrapper


def _group(value: str | None) -> bool | str:
    return False if value is None else (True if value == "auto" else value)


@app.command()
@friendly_errors
def models(pattern: Annotated[str, typer.Argument(help="shell-style filter, e.g. 'mobilenet*'")] = "*") -> None:
    """List registered models: parameters (6 classes, 1 channel), MACs at the default input size, and where
    `--init imagenet` gets their weights (torchvision, timm, or - for none)."""
    table = Table(title="medlite models (6 classes, 1 channel; MACs of one image, FLOPs = 2 x MACs)")
    for column in ("model", "family", "params", "MACs", "input", "ImageNet"):
        table.add_column(column, justify="right" if column in ("params", "MACs", "input") else "left")
    for row in api.model_table(pattern):
        table.add_row(row["name"], row["family"], f"{row['params']:,}", f"{row['macs'] / 1e6:,.1f} M",
                      f"{row['input_size']}", row["imagenet"] or "-")
    console.print(table)


@data_app.command("synth")
@friendly_errors
def data_synth(
    out: Annotated[Path, typer.Argument(help="output folder")],
    classes: Annotated[str, typer.Option(help="chestx6, pediatric3 or binary")] = "chestx6",
    per_class: Annotated[int, typer.Option(help="images per class")] = 50,
    size: Annotated[int, typer.Option(help="image side in pixels")] = 128,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Write synthetic chest-radiograph phantoms with lesion masks and a manifest.csv."""
    path = api.synthesize(out, classes=classes, per_class=per_class, size=size, seed=seed)
    console.print(f"wrote phantoms ({classes}, {per_class} per class, {size} px) to {path}; manifest: "
                  f"{path / 'manifest.csv'}")


@data_app.command("inspect")
@friendly_errors
def data_inspect(
    source: Source,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    strict: Annotated[bool, typer.Option(help="fail on the first unreadable file")] = False,
    group_from_filename: GroupOpt = None,
    dicom_window: Annotated[str, typer.Option(help=_WINDOW_HELP + "; reports what it does to the DICOM files")
                            ] = "header",
) -> None:
    """Class counts (per split), image sizes, bit depths, duplicates and unreadable files of a source."""
    summary = api.inspect(source, strict=strict, group_from_filename=_group(group_from_filename),
                          dicom_window=dicom_window)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
    else:
        console.print(format_inspection(summary))


@app.command()
@friendly_errors
def train(
    data: Annotated[str | None, typer.Option(help="data source (folder, CSV, .npz, synthetic)")] = None,
    model: Annotated[str | None, typer.Option(help="a name from `medlite models`")] = None,
    out: Annotated[Path, typer.Option(help="run directory to create (or resume)")] = Path("runs/run"),
    paradigm: Annotated[str | None, typer.Option(help="supervised, simclr, simclr-pw, kd, dg, dual-skd or "
                                                      "protonet")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    img_size: Annotated[int | None, typer.Option(help="square input side in pixels")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option(help="peak learning rate")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adamw, adam or sgd")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="weight decay (0.05)")] = None,
    schedule: Annotated[str | None, typer.Option(help="cosine (after warm-up) or step (x0.5 every N epochs)")] = None,
    lr_step_epochs: Annotated[int | None, typer.Option(help="step schedule: epochs per step (10)")] = None,
    patience: Annotated[int | None, typer.Option(help="early-stopping patience in epochs (0 = off)")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    fraction: Annotated[float | None, typer.Option(help="labelled share of the training split (0, 1]")] = None,
    val_frac: Annotated[float | None, typer.Option(help="validation share when the source has no val split")] = None,
    test_frac: Annotated[float | None, typer.Option(help="test share when the source has no test split")] = None,
    balance: Annotated[str | None, typer.Option(help="none, loss (class weights) or sampler")] = None,
    augment: Annotated[str | None, typer.Option(help="none, supervised or simclr augmentation")] = None,
    init: Annotated[str | None, typer.Option(help="checkpoint (.safetensors/.pth), run directory, or 'imagenet' "
                                                     "(the official torchvision/timm weights, downloaded once) "
                                                     "to initialise from")] = None,
    init_select: Annotated[str | None, typer.Option(help="weight selection from a larger model of the same "
                                                            "family (run directory or weights file)")] = None,
    select_method: Annotated[str | None, typer.Option(help="uniform, consecutive, random-consistent or "
                                                              "random")] = None,
    pretrain_epochs: Annotated[int | None, typer.Option(help="simclr-pw: epochs of the SimCLR phase")] = None,
    temperature: Annotated[float | None, typer.Option(help="simclr: NT-Xent temperature")] = None,
    simclr_gather_distributed: Annotated[bool | None, typer.Option(
        "--simclr-gather-distributed/--no-simclr-gather-distributed", help="simclr, under DDP: NT-Xent negatives "
        "from every process's batch (default) or only the local one")] = None,
    unlabelled: Annotated[list[str] | None, typer.Option(help="simclr, simclr-pw: another source (or plain image "
                                                              "folder) whose images join SimCLR pre-training, "
                                                              "labels ignored (repeat for several)")] = None,
    teacher: Annotated[list[str] | None, typer.Option(help="kd: teacher run directory (repeat to average "
                                                              "several); dual-skd: the model to select both "
                                                              "students from")] = None,
    teacher_model: Annotated[str | None, typer.Option(help="kd: teacher architecture (with --teacher-init)")] = None,
    teacher_init: Annotated[str | None, typer.Option(help="kd: teacher checkpoint with the run's classes")] = None,
    kd_alpha: Annotated[float | None, typer.Option(help="kd: weight of the hard-label loss (0.5)")] = None,
    kd_temperature: Annotated[float | None, typer.Option(help="kd: softening temperature T (4)")] = None,
    target: Annotated[str | None, typer.Option(help="dg: unlabelled target-domain source")] = None,
    coral_weight: Annotated[float | None, typer.Option(help="dg: weight of the CORAL loss (1)")] = None,
    skd_mode: Annotated[str | None, typer.Option(help="dual-skd: ema, swap, mutual or ema-only")] = None,
    skd_alpha: Annotated[float | None, typer.Option(help="dual-skd: weight of the distillation term (0.5)")] = None,
    skd_temperature: Annotated[float | None, typer.Option(help="dual-skd: temperature T (4)")] = None,
    ema_momentum: Annotated[float | None, typer.Option(help="dual-skd: EMA momentum (0.996; 0.99 under 2,000 "
                                                               "steps)")] = None,
    finetune_epochs: Annotated[int | None, typer.Option(help="dual-skd: last epochs that fine-tune A with CE "
                                                                "(10 %)")] = None,
    n_way: Annotated[int | None, typer.Option(help="protonet: classes per episode (all)")] = None,
    k_shot: Annotated[int | None, typer.Option(help="protonet: support images per class (5)")] = None,
    q_query: Annotated[int | None, typer.Option(help="protonet: query images per class (15)")] = None,
    episodes_per_epoch: Annotated[int | None, typer.Option(help="protonet: training episodes per epoch (100)")] = None,
    eval_episodes: Annotated[int | None, typer.Option(help="protonet: validation/test episodes (600)")] = None,
    embedding_dim: Annotated[int | None, typer.Option(help="protonet: embedding width (128)")] = None,
    equalize: Annotated[str | None, typer.Option(help="none, hist or clahe")] = None,
    dicom_window: Annotated[str | None, typer.Option(help=_WINDOW_HELP + " (default header)")] = None,
    channels: Annotated[int | None, typer.Option(help="1 (default) or 3 input channels")] = None,
    devices: Annotated[int | None, typer.Option(help="processes/GPUs (DDP when > 1)")] = None,
    num_nodes: Annotated[int | None, typer.Option()] = None,
    deterministic: Annotated[bool | None, typer.Option("--deterministic/--no-deterministic")] = None,
    group_from_filename: GroupOpt = None,
    strict: Annotated[bool | None, typer.Option("--strict/--no-strict", help="stop at the first unreadable or "
                                                "missing image instead of skipping it")] = None,
    split_from: Annotated[str | None, typer.Option(help="reuse the train/val/test split of a run directory (or its "
                                                          "splits.csv); the labelled fraction follows --seed")] = None,
    config: Annotated[Path | None, typer.Option(help="run.yaml with data/preprocess/train sections")] = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --out from last.ckpt")] = False,
) -> None:
    """Train a model and write a complete run directory (weights, metrics, plots, model card)."""
    if data is None and config is None and not resume:
        raise MedliteError("--data is required: a class folder, CSV manifest or MedMNIST .npz of your X-rays (or "
                           "'synthetic' to try medlite on generated phantoms)")
    result = api.train(
        config, out=out, source=data, model=model, paradigm=paradigm, epochs=epochs, img_size=img_size,
        batch_size=batch_size, lr=lr, optimizer=optimizer, weight_decay=weight_decay, schedule=schedule,
        lr_step_epochs=lr_step_epochs, early_stopping_patience=patience, init_select=init_select,
        select_method=select_method, skd_mode=skd_mode, skd_alpha=skd_alpha, skd_temperature=skd_temperature,
        ema_momentum=ema_momentum, finetune_epochs=finetune_epochs, n_way=n_way, k_shot=k_shot, q_query=q_query,
        episodes_per_epoch=episodes_per_epoch, eval_episodes=eval_episodes, embedding_dim=embedding_dim,
        seed=seed, fraction=fraction, val_frac=val_frac,
        test_frac=test_frac, balance=balance, augment=augment, init=init, equalize=equalize, channels=channels,
        dicom_window=dicom_window,
        devices=devices, num_nodes=num_nodes, deterministic=deterministic,
        group_from_filename=_group(group_from_filename), strict=strict, split_from=split_from, resume=resume,
        pretrain_epochs=pretrain_epochs,
        temperature=temperature, simclr_gather_distributed=simclr_gather_distributed,
        unlabelled=unlabelled or None, teacher=teacher or None, teacher_model=teacher_model,
        teacher_init=teacher_init,
        kd_alpha=kd_alpha, kd_temperature=kd_temperature, target=target, coral_weight=coral_weight,
    )
    if result.rank:
        return  # torchrun/srun: rank 0 prints the summary once
    from medlite.metrics.auc import auc_summary

    m = result.metrics
    console.print(f"[bold]{result.run_dir}[/]: {result.epochs_run} epochs in {result.wall_time_s:.0f} s; "
                  f"test accuracy {m['accuracy']:.3f} (95% CI {m['ci95']['accuracy'][0]:.3f}-"
                  f"{m['ci95']['accuracy'][1]:.3f}), {auc_summary(m)}, n = {m['n']}"
                  + (" [yellow](generated phantoms, not X-rays)[/]" if result.synthetic else ""), soft_wrap=True)
    for line in api.paradigm_summary(result.run_dir):
        console.print(line)


@app.command()
@friendly_errors
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    data: Annotated[str | None, typer.Option(help="another source with the same classes")] = None,
    split: Annotated[str, typer.Option(help="train, val or test")] = "test",
    out: Annotated[Path | None, typer.Option(help="where to write metrics.json")] = None,
    prototypes: Annotated[bool, typer.Option("--prototypes", help="classify by the nearest class prototype of the "
                                                                 "labelled training features (few-shot baseline; "
                                                                 "writes RUNDIR/eval-prototypes)")] = False,
    k_shot: Annotated[int, typer.Option(help="--prototypes: support images per class in test episodes")] = 5,
    q_query: Annotated[int, typer.Option(help="--prototypes: query images per class in test episodes")] = 15,
    episodes: Annotated[int, typer.Option(help="--prototypes: test episodes")] = 600,
    ood: Annotated[list[str] | None, typer.Option(help="a source of images unlike the run's data (repeatable): "
                                                       "how well the OOD gate flags them (writes RUNDIR/eval-ood)"
                                                  )] = None,
) -> None:
    """Score a run on its test split (or another source) and write metrics.json."""
    if ood:
        if data is not None or prototypes:
            raise MedliteError("--ood scores the gate against the run's own split; drop --data and --prototypes")
        result = api.evaluate_ood(run_dir, list(ood), out=out)
        console.print(format_ood(result))
        console.print(f"wrote {result['out'] / 'metrics.json'}")
        return
    if prototypes:
        if data is not None:
            raise MedliteError("--prototypes scores the run's own split; drop --data")
        result = api.evaluate_prototypes(run_dir, split=split, k_shot=k_shot, q_query=q_query, episodes=episodes,
                                         out=out)
        console.print(format_metrics(result["metrics"]))
        e = result["episodic"]
        if e is not None:
            console.print(f"{e['episodes']} episodes ({e['n_way']}-way {e['k_shot']}-shot): accuracy "
                          f"{e['accuracy']:.3f} (95% CI {e['ci95'][0]:.3f}-{e['ci95'][1]:.3f})")
        console.print(f"wrote {result['out']}")
        return
    metrics = api.evaluate(run_dir, data=data, split=split, out=out)
    console.print(format_metrics(metrics))
    if "adaptation" in metrics:  # a dg run on another source: what AdaBN changed
        a = metrics["adaptation"]
        console.print(f"AdaBN on {data}: accuracy {a['source_bn']['accuracy']:.3f} -> {a['adabn']['accuracy']:.3f} "
                      f"(source batch-norm statistics -> target statistics)")
    console.print(f"wrote {api.evaluation_dir(run_dir, data, out) / 'metrics.json'}")


@app.command()
@friendly_errors
def calibrate(run_dir: Annotated[Path, typer.Argument(help="a finished run directory")]) -> None:
    """Fit the calibration and OOD gate of a run trained before medlite had them (or refit them)."""
    metrics = api.calibrate(run_dir)
    console.print(format_trust(metrics))
    console.print(f"wrote {run_dir / 'run.json'}, {run_dir / 'metrics.json'} and the model card")


@app.command()
@friendly_errors
def profile(
    target: Annotated[str, typer.Argument(help="a model name or a run directory")],
    img_size: Annotated[int | None, typer.Option(help="input side (default: the model's)")] = None,
    batch_size: Annotated[int, typer.Option(help="batch for training memory/throughput")] = 32,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: all cores)")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Parameters, MACs, weight size, peak training memory, throughput and latency."""
    result = api.profile(target, img_size=img_size, batch_size=batch_size, threads=threads, device=device,
                         on_step=_step)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        console.print(format_profile(result))


@app.command()
@friendly_errors
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="run directories to compare")],
    out: Annotated[Path | None, typer.Option(help="report file (.html; a .md is written beside it)")] = None,
) -> None:
    """One table of runs (accuracy, AUC with CIs, params, MACs, memory, latency) and the Pareto frontier."""
    result = api.compare(list(run_dirs), out=out)
    console.print(console_table(result["rows"]))
    for path in result["written"]:
        console.print(f"wrote {path}")


@app.command()
@friendly_errors
def demo(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("demo_out"),
    epochs: Annotated[int, typer.Option(help="epochs per model")] = 25,
) -> None:
    """Synthesize ChestX6 phantoms, train HybridNet-XR-100 and MobileNetV2, evaluate, profile, compare."""
    result = api.demo(out, epochs=epochs, on_step=lambda heading: console.rule(heading, align="left"))
    console.print(console_table(result["rows"]))
    console.print(f"report: {result['written'][0]}")


@app.command()
@friendly_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    format: Annotated[str, typer.Option("--format", help="export format (onnx)")] = "onnx",  # noqa: A002
    int8: Annotated[bool, typer.Option("--int8", help="also write an int8 statically quantised model")] = False,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default: medlite's pinned one)")] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default RUNDIR/export)")] = None,
    int8_weights: Annotated[str | None, typer.Option(
        "--int8-weights", help="int8 weight type: uint8 (default, exact on every x86 CPU) or int8 (faster on "
                               "CPUs with VNNI, wrong on CPUs without it)")] = None,
) -> None:
    """Export to ONNX (dynamic batch, preprocessing contract in the metadata) with an ONNX Runtime parity check."""
    from medlite.deploy.onnx_export import describe_report  # imports torch: only when exporting

    kwargs = {"opset": opset} if opset is not None else {}
    report = api.export(run_dir, format=format, int8=int8, out=out, int8_weights=int8_weights, **kwargs)
    console.print(describe_report(report), highlight=False)


@app.command()
@friendly_errors
def predict(
    model: Annotated[Path, typer.Argument(help="a run directory or an exported .onnx file")],
    inputs: Annotated[list[Path], typer.Argument(help="image files, folders (recursive) or DICOM files")],
    out: Annotated[Path | None, typer.Option(help="predictions.csv or predictions.json")] = None,
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 16,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all cores)")] = None,
    cam: Annotated[Path | None, typer.Option(
        help="also write heatmaps of the predicted class here (.onnx: class activation map, torch-free; run "
             "directory: Grad-CAM)")] = None,
    ood_policy: Annotated[str, typer.Option(help="an image unlike the training data: warn (keep its class, "
                                                 "flagged) or abstain (no class)")] = "warn",
) -> None:
    """Predict class probabilities for files and folders; the preprocessing comes from the model itself."""
    rows = api.predict(model, list(inputs), out=out, batch_size=batch_size, threads=threads, cam=cam,
                       ood_policy=ood_policy)
    console.print(format_predictions(rows, limit=20))
    if len(rows) > 20:
        console.print(f"... {len(rows) - 20} more" + ("" if out else " (--out FILE writes them all)"))
    if out is not None:
        console.print(f"wrote {out}")


@app.command()
@friendly_errors
def serve(
    model: Annotated[Path, typer.Argument(help="an exported .onnx, or a run directory (exported first if needed)")],
    host: Annotated[str, typer.Option(help="address to listen on; any but 127.0.0.1 needs --token-file")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8080,
    token_file: Annotated[Path | None, typer.Option(help="file holding the access token (>= 16 characters)")] = None,
    workers: Annotated[int, typer.Option(help="inference threads")] = 2,
    max_upload_mb: Annotated[float, typer.Option(help="largest upload per request, in MB")] = 50.0,
    keep_uploads: Annotated[Path | None, typer.Option(help="keep uploaded files here (default: memory only)")] = None,
) -> None:
    """Point-of-care web app and REST API on an exported model (torch-free; images stay on this machine)."""
    from medlite.serve import serve as _serve  # FastAPI, uvicorn, ONNX Runtime: only for this command

    _serve(model, host=host, port=port, token_file=token_file, workers=workers, max_upload_mb=max_upload_mb,
           keep_uploads=keep_uploads, echo=lambda line: console.print(line, highlight=False, soft_wrap=True))


@app.command()
@friendly_errors
def explain(
    paths: Annotated[list[str], typer.Argument(help="run directories, then image files or folders (method names "
                                                    "may follow too: ... gradcam scorecam lime)")],
    method: Annotated[list[str] | None, typer.Option("--method", help="gradcam, scorecam or lime (repeat)")] = None,
    target: Annotated[str | None, typer.Option(help="class name or index to explain (default: predicted)")] = None,
    out: Annotated[Path, typer.Option(help="output folder (maps, or explain_metrics.json with --evaluate)")] = Path(
        "explanations"),
    layer: Annotated[str | None, typer.Option(help="dotted layer name for CAMs (default: the model's)")] = None,
    batch_size: Annotated[int, typer.Option(help="forward passes per batch (Score-CAM masks, LIME samples)")] = 32,
    evaluate: Annotated[bool, typer.Option("--evaluate", help="score faithfulness instead of drawing maps")] = False,
    data: Annotated[str | None, typer.Option(help="--evaluate: source to score on (default the run's)")] = None,
    n: Annotated[int, typer.Option(help="--evaluate: number of images")] = 200,
    masks: Annotated[Path | None, typer.Option(help="--evaluate: folder of lesion masks")] = None,
) -> None:
    """Saliency maps (overlay PNG at the original geometry, raw .npy, comparison grid) or their faithfulness."""
    runs, images, methods = api.split_explain_arguments(paths, method)
    if evaluate:
        for run in runs:
            # One folder per run when several are scored (the same images for every model).
            target_dir = out / run.name if len(runs) > 1 else out
            api.evaluate_explanations(run, data=data, n=n, masks=masks, methods=methods or None, out=target_dir,
                                      on_step=lambda text, run=run: _step(f"{run.name}: {text}"))
            console.print(f"{run}: wrote {target_dir / 'explain_metrics.json'}")
        return
    rows = api.explain(runs, images, methods=methods or ["gradcam"], target=target, out=out, layer=layer,
                       batch_size=batch_size, on_step=_step)
    console.print(f"{len(rows)} explanation(s) written to {out} (overlays, .npy maps, grids, explanations.json)")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
