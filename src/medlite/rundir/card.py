"""``model_card.md``: what a run is, what it was trained on, how well it did, and what it must not be used for."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlite.config import RunConfig
from medlite.data.prepared import PreparedData
from medlite.rundir import layout
from medlite.utils import atomic

INTENDED_USE = "Research and education: comparing lightweight classifiers and training paradigms on chest X-rays."
NOT_A_DEVICE = "Not a diagnostic device; a clinician decides."


def _model_selection(patience: int, n_val: int) -> str:
    if n_val == 0:
        return "no validation split, so no early stopping: the weights are the last epoch's"
    stop = f"early stopping patience {patience}" if patience > 0 else "no early stopping"
    return f"{stop}; the weights are those of the epoch with the best validation macro AUC ({n_val} images)"


def _trust_section(metrics: dict[str, Any]) -> list[str]:
    """What the calibration and the OOD gate do, with their figures on the evaluated split (empty without)."""
    cal, ood = metrics.get("calibration"), metrics.get("ood")
    lines = ["", "## When not to trust a result"] if cal or ood else []
    if cal:
        how = (f"temperature scaling (T = {cal['temperature']:.3f}, fitted on the validation split)"
               if cal["method"] == "temperature" else f"`{cal['method']}` (no validation split to fit one)")
        lines.append(f"- Probabilities are calibrated by {how}: ECE on the {cal['split']} split "
                     f"{_fmt(cal['before']['ece'])} before, {_fmt(cal['after']['ece'])} after; Brier "
                     f"{_fmt(cal['before']['brier'])} -> {_fmt(cal['after']['brier'])}.")
    if ood:
        val = ood.get("val_flagged")
        lines.append(f"- An image whose features lie farther from every class than 99 % of the validation images "
                     f"({ood['method']} score above {ood['threshold']:.4g}) is *flagged: unlike the training data*;"
                     f" it flags {ood['flagged']:.1%} of the {ood['split']} split"
                     + (f" and {val:.1%} of the validation split" if val is not None else "")
                     + " (the false-refusal rate on images like the training data). Colour photographs, blank,"
                     " tiny and extreme-aspect images are *rejected* before the model.")
        lines.append("- No flag is not a guarantee: at this threshold the gate lets through part of the images "
                     "unlike the training data, often most X-rays of another population (BENCHMARKS.md, "
                     "\"Calibration and the OOD gate on real X-rays\"). Measure it on the images a site will see: "
                     "`medlite evaluate RUN --ood FOLDER`.")
    return lines


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _partial_auc(metrics: dict[str, Any]) -> str:
    """What a null macro AUC leaves out, or "" when it covers every class (or no class has an AUC).

    The wording of :func:`medlite.metrics.auc.auc_summary`, built here from the metrics fields because
    ``rundir`` sits beside ``metrics`` in the layers and does not import it.
    """
    present = metrics.get("auc_macro_present")
    if metrics.get("auc_macro") is not None or present is None:
        return ""
    scored = [str(c) for c in metrics.get("auc_classes") or []]
    total = len(metrics.get("per_class") or {}) or len(scored)
    return f"; {len(scored)} of {total} classes have an AUC, mean {present:.3f}: {', '.join(scored)}"


def _split_table(data: PreparedData) -> list[str]:
    lines = ["| split | " + " | ".join(data.classes) + " | total |", "|---" * (len(data.classes) + 2) + "|"]
    for split in ("train", "val", "test"):
        idx = data.indices(split, labelled_only=False)
        counts = np.bincount(data.cached.labels[idx], minlength=len(data.classes))
        lines.append(f"| {split} | " + " | ".join(str(c) for c in counts) + f" | {len(idx)} |")
    return lines


def write_model_card(
    out: Path, cfg: RunConfig, data: PreparedData, metrics: dict[str, Any], split: str, n_params: int | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write ``out/model_card.md`` from the resolved config, the split, the evaluation metrics and the
    paradigm's ``notes`` (:meth:`medlite.paradigms.task.ClassifierTask.notes`)."""
    t, p = cfg.train, cfg.preprocess
    ci = metrics.get("ci95") or {}
    auc_ci = ci.get("auc_macro") or [None, None]
    labelled, n_val = int(data.indices("train").size), int(data.indices("val").size)
    init = (f"weight selection ({t.select_method}) from {t.init_select}" if t.init_select
            else f"complementary weight selection ({t.select_method}) from {t.teacher[0]}" if t.paradigm == "dual-skd"
            else f"{t.init}" if t.init else "random")
    schedule = "cosine" if t.schedule == "cosine" else f"x{t.lr_step_gamma} every {t.lr_step_epochs} epochs"
    lines = [
        f"# Model card: {t.model} ({t.paradigm})",
        "",
        "## Data",
        f"- Source: `{cfg.data.source}` ({data.source.kind}); classes: {', '.join(data.classes)}.",
        f"- Labelled training images: {labelled} (fraction {cfg.data.fraction} of the training split, seed {t.seed}).",
        f"- Unreadable files skipped: {len(data.cached.skipped)}."
        + (f" Split shared with `{cfg.data.split_from}`." if cfg.data.split_from else ""),
        *([f"- SimCLR pre-training also used the images of {', '.join(f'`{u}`' for u in t.unlabelled)} "
           "(labels ignored; their train split where they define one)."] if t.unlabelled else []),
        "",
        *_split_table(data),
        "",
        "## Preprocessing (the contract every later step reuses)",
        f"- {p.size}x{p.size} px, resize `{p.resize}`, equalisation `{p.equalize}`, Gaussian sigma {p.gaussian_sigma},"
        f" median kernel {p.median_ksize}, {p.channels} channel(s); intensities scaled to [0, 1] then"
        " normalised with the model's mean/std.",
        f"- DICOM windowing `{p.dicom_window}`; denoising and equalisation "
        + ("on the float image, quantised to 8 bits last." if p.quantize == "last"
           else "after quantising to 8 bits (the pipeline before medlite windowed DICOM)."),
        "",
        "## Training",
        f"- Model `{t.model}`{'' if n_params is None else f' ({n_params:,} parameters)'}, init "
        f"`{init}`, paradigm `{t.paradigm}`.",
        f"- {t.optimizer} lr {t.lr}, weight decay {t.weight_decay}, batch {t.batch_size}, up to {t.epochs} epochs,"
        f" warm-up {t.warmup_epochs} epoch(s) then {schedule}; label smoothing {t.label_smoothing}; class balance "
        f"`{t.balance}`; augmentation `{t.augment}`; {_model_selection(t.early_stopping_patience, n_val)}.",
        *(f"- {line}." for line in notes),
        "",
        f"## Results ({split} split, n = {metrics['n']})",
        f"- Accuracy {_fmt(metrics['accuracy'])} (95 % CI {_fmt(ci.get('accuracy', [None])[0])}-"
        f"{_fmt(ci.get('accuracy', [None, None])[1])}), balanced accuracy {_fmt(metrics['balanced_accuracy'])},"
        f" macro F1 {_fmt(metrics['macro_f1'])}.",
        f"- Macro AUC (one-vs-rest) {_fmt(metrics['auc_macro'])} (95 % CI {_fmt(auc_ci[0])}-{_fmt(auc_ci[1])})"
        + _partial_auc(metrics) + f"; ECE (top label) {_fmt(metrics['ece'])}"
        + (f", positive-class ECE {_fmt(metrics['ece_positive_class'])}" if "ece_positive_class" in metrics else "")
        + ".",
        "",
        "| class | precision | recall (class-wise accuracy) | F1 | specificity | AUC |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in metrics["per_class"].items():
        lines.append(
            f"| {name} | {_fmt(m['precision'])} | {_fmt(m['recall'])} | {_fmt(m['f1'])} | "
            f"{_fmt(m['specificity'])} | {_fmt(m['auc'])} |"
        )
    if "thresholds" in metrics:
        lines += [
            "",
            "Binary operating points: "
            + "; ".join(
                f"{k}: threshold {_fmt(v['threshold'])}, sensitivity {_fmt(v['sensitivity'])}, specificity "
                f"{_fmt(v['specificity'])}"
                for k, v in metrics["thresholds"].items()
            ),
        ]
    lines += [*_trust_section(metrics), "", "## Intended use"]
    lines += [
        INTENDED_USE,
        "Not a medical device; not for diagnosis or triage of real patients.",
        "",
        "## Limitations",
        "- Metrics hold for this data source and split only; expect lower performance on other scanners, sites and"
        " populations (evaluate with `medlite evaluate RUN --data OTHER`).",
        "- Confidence intervals come from bootstrap resampling of the test images; they do not cover site shift.",
        "- Class balance, acquisition source and image post-processing can act as shortcuts (see METHODS.md §5).",
        "- Synthetic phantoms (source `synthetic`) are a software test bed, not evidence of clinical accuracy."
        if cfg.data.source.startswith("synthetic")
        else "- Labels are taken as given by the source.",
        "",
    ]
    return atomic.write_text(out / layout.MODEL_CARD, "\n".join(lines))


def card_summary(cfg: RunConfig, data: PreparedData, metrics: dict[str, Any] | None,
                 split: str = "test") -> dict[str, Any]:
    """The model card as JSON, for an exported model to carry (the point-of-care page's model panel).

    Returns:
        ``model``, ``paradigm``, ``classes``, ``training_data`` (``source``, ``kind``, ``images`` per split and
        class, ``synthetic``), ``results`` (``split``, ``n``, ``accuracy``, ``balanced_accuracy``, ``macro_f1``,
        ``auc_macro``, ``ece``, ``ci95`` (metric -> [low, high], 95 % bootstrap), ``per_class`` and binary
        ``thresholds``; ``None`` when the run has no test metrics), ``intended_use``, ``not_a_device`` and
        ``limitations``. Only aggregate numbers: nothing about any single image.
    """
    counts = {}
    for name in ("train", "val", "test"):
        idx = data.indices(name, labelled_only=False)
        counts[name] = dict(zip(data.classes, np.bincount(data.cached.labels[idx],
                                                          minlength=len(data.classes)).tolist(), strict=True))
    results = None
    if metrics:
        keys = ("n", "accuracy", "balanced_accuracy", "macro_f1", "auc_macro", "ece", "ci95", "per_class",
                "thresholds")
        results = {"split": split, **{k: metrics[k] for k in keys if k in metrics}}
    synthetic = cfg.data.source.startswith("synthetic")
    return {
        "model": cfg.train.model, "paradigm": cfg.train.paradigm, "classes": list(data.classes),
        "training_data": {"source": str(cfg.data.source), "kind": data.source.kind, "images": counts,
                          "synthetic": synthetic},
        "results": results, "intended_use": INTENDED_USE, "not_a_device": NOT_A_DEVICE,
        "limitations": ("Trained on synthetic phantoms: a software test bed, not evidence of clinical accuracy."
                        if synthetic else "Metrics hold for this data source and split only; expect lower "
                        "performance on other scanners, sites and populations."),
    }
