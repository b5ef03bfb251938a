"""How the CLI shows results: rich tables of metrics, profiles, inspections and comparisons.

Pure presentation of the dicts the Python API returns; nothing here computes a number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from medlite.metrics.report import auc_cell, format_cell, pareto_front


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(title: str, columns: Sequence[str], left: int = 1) -> Table:
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i < left else "right")
    return table


def format_metrics(metrics: Mapping[str, Any], *, digits: int = 3) -> Table:
    """Render a :func:`compute_metrics` dict (or its JSON reload) as rich tables.

    Args:
        metrics: the dict returned by :func:`compute_metrics`.
        digits: decimals shown for rates.

    Returns:
        A rich grid holding the summary table, the per-class table and, for binary tasks, the operating-point
        table; print it with ``rich.console.Console().print``.
    """
    # Imported here: the metrics module imports torch, and `medlite --help` must not (start-up time).
    from medlite.metrics.classification import ECE_BINS

    ci, binary = metrics.get("ci95") or {}, "thresholds" in metrics
    summary = _table(f"test metrics (n = {metrics['n']})", ("metric", "value", "95% CI"))
    rows = [("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"), ("macro F1", "macro_f1"),
            ("AUC (positive class)" if binary else "AUC (macro, one-vs-rest)", "auc_macro")]
    partial = metrics.get("auc_macro") is None and metrics.get("auc_macro_present") is not None
    if partial:  # a class without an AUC: the mean over the others is shown, under its own name
        rows.append((f"AUC (mean over the {len(metrics['auc_classes'])} classes present)", "auc_macro_present"))
        missing = [str(k) for k in metrics["per_class"] if k not in metrics["auc_classes"]]
        summary.caption = (f"macro AUC is n/a: no AUC for {', '.join(missing)} (absent from the labels, or every "
                           f"label); the mean over the classes present averages "
                           f"{', '.join(map(str, metrics['auc_classes']))}")
        summary.caption_justify = "left"
    rows.append((f"ECE, top label ({ECE_BINS} bins)", "ece"))
    if "ece_positive_class" in metrics:
        rows.append((f"ECE, positive class ({ECE_BINS} bins)", "ece_positive_class"))
    for label, key in rows:
        bounds = ci.get(key)
        interval = "" if bounds is None else f"[{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"
        summary.add_row(label, _fmt(metrics.get(key), digits), interval)

    per_class = _table("per class (recall = class-wise accuracy; accuracy = one-vs-rest)",
                       ("class", "n", "precision", "recall", "specificity", "F1", "AUC", "accuracy"))
    for (name, row), true_row in zip(metrics["per_class"].items(), metrics["confusion_matrix"], strict=True):
        per_class.add_row(str(name), str(sum(true_row)), *(_fmt(row[key], digits) for key in
                          ("precision", "recall", "specificity", "f1", "auc", "accuracy")))

    grid = Table.grid(padding=(0, 0, 1, 0))
    grid.add_column()
    grid.add_row(summary)
    grid.add_row(per_class)
    if binary:
        points = _table("operating points (positive iff p > threshold)", ("rule", "chosen on", "threshold",
                        "accuracy", "sensitivity", "specificity", "bal. acc.", "F1"), left=2)
        for rule, point in metrics["thresholds"].items():
            if point is None:
                points.add_row(rule, "n/a", *[""] * 6)
                continue
            points.add_row(rule, point.get("chosen_on", "fixed"), f"{point['threshold']:.4f}",
                           *(_fmt(point[key], digits) for key in
                             ("accuracy", "sensitivity", "specificity", "balanced_accuracy", "f1")))
        grid.add_row(points)
    if metrics.get("calibration"):
        grid.add_row(format_trust(metrics))
    return grid


def format_trust(metrics: Mapping[str, Any], *, digits: int = 3) -> Group:
    """The ``calibration`` and ``ood`` entries of a ``metrics.json``: ECE / Brier / NLL before and after
    calibration, and the share of the split's images the OOD gate flags."""
    cal = metrics["calibration"]
    table = _table(f"calibration ({cal['split']} split)", ("measure", "before", "after"))
    for label, key in (("ECE (top label)", "ece"), ("Brier score", "brier"), ("NLL", "nll")):
        table.add_row(label, _fmt(cal["before"].get(key), digits), _fmt(cal["after"].get(key), digits))
    lines = [f"temperature T = {cal['temperature']:.3f}, fitted on the validation split" if cal["method"] ==
             "temperature" else f"calibration: {cal['method']} (no validation split to fit it on)"]
    ood = metrics.get("ood")
    if ood:
        lines.append(f"OOD gate ({ood['method']}, threshold {ood['threshold']:.4g}): flags {ood['flagged']:.1%} of "
                     f"the {ood['split']} images")
    return Group(table, *(Text(line) for line in lines))


def format_ood(result: Mapping[str, Any], *, digits: int = 3) -> Group:
    """An :func:`medlite.api.evaluate_ood` result: one row per OOD source, the run's own split first."""
    ind = result["in_distribution"]
    table = _table(f"OOD gate ({result['method']}, threshold {result['threshold']:.4g}) against the "
                   f"{result['split']} split", ("images", "n", "AUROC", "FPR at 95% TPR", "flagged"))
    table.add_row(f"{result['split']} split (in-distribution)", str(ind["n"]), "", "", f"{ind['flagged']:.1%}")
    for name, row in result["ood"].items():
        table.add_row(name, str(row["n"]), _fmt(row["auroc"], digits), _fmt(row["fpr_at_95_tpr"], digits),
                      f"{row['flagged']:.1%}")
    kept = Text(f"withholding the flagged {result['split']} images keeps {ind['coverage']:.1%} of them; accuracy "
                f"{ind['accuracy_all']:.3f} -> {ind['accuracy_kept']:.3f} on those kept")
    return Group(table, kept)


def format_predictions(rows: Sequence[Mapping[str, Any]], *, limit: int) -> Table:
    """The first ``limit`` rows of :func:`medlite.predict` as a table; long file names wrap, never cut off."""
    ok = sum(r["predicted"] is not None for r in rows)
    flagged = sum(r["status"].startswith("flagged") for r in rows)
    table = Table(title=f"{ok} predicted ({flagged} flagged), {len(rows) - ok} without a class")
    table.add_column("file", overflow="fold", ratio=3)
    table.add_column("predicted", no_wrap=True)
    table.add_column("probability", justify="right", no_wrap=True)
    table.add_column("status", overflow="fold", ratio=1)
    for row in rows[:limit]:
        predicted = row.get("predicted")
        probability = row.get(f"prob_{predicted}") if predicted else None
        table.add_row(str(row["file"]), str(predicted or ""), _fmt(probability, 3) if predicted else "",
                      row["status"])
    return table


def format_profile(result: dict[str, Any]) -> Table:
    """A two-column rich table (metric, value with unit) of a :func:`profile_model` result."""

    def mb(v: float | None) -> str:
        return "n/a" if v is None else f"{v:,.1f} MB"

    table = Table(
        title=f"{result['model']}  {result['in_chans']}x{result['img_size']}x{result['img_size']}  "
        f"{result['device']}  {result['threads']} threads",
        title_justify="left",
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("parameters", f"{result['params'] / 1e6:,.3f} M"),
        ("MACs (batch 1)", f"{result['macs'] / 1e9:,.3f} G"),
        ("FLOPs = 2 x MACs", f"{result['flops'] / 1e9:,.3f} G"),
        ("weights (.safetensors)", mb(result["weights_mb"])),
        (f"peak train memory, step at batch {result['batch_size']}", mb(result["peak_train_mem_mb"])),
        ("peak train RSS (absolute)", mb(result["peak_train_rss_mb"])),
        ("peak inference memory, batch 1", mb(result["peak_infer_mem_mb"])),
        ("peak inference RSS (absolute)", mb(result["peak_infer_rss_mb"])),
        (f"train throughput, batch {result['batch_size']}", f"{result['train_throughput_ips']:,.1f} img/s"),
        (
            "latency batch 1, p50 / p90",
            f"{result['latency_ms_p50']:,.2f} / {result['latency_ms_p90']:,.2f} ms",
        ),
        ("inference throughput, batch 32", f"{result['throughput_ips_b32']:,.1f} img/s"),
        ("memory method", result["memory_method"]),
        ("channels_last / torch", f"{result['channels_last']} / {result['torch_version']}"),
        ("hardware", result["cpu"]),
    ]
    for metric, value in rows:
        table.add_row(metric, value)
    return table


def _counter_text(counter: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counter.items()) or "-"


_WINDOW_WORDS = {"voi_lut": "VOI LUT sequence", "window": "header window centre/width",
                 "auto": "auto percentile window (no window in the header)", "none": "no window (BitsStored range)"}


def _window_text(info: dict[str, Any]) -> str:
    applied = ", ".join(f"{_WINDOW_WORDS.get(k, k)}: {v}" for k, v in info["applied"].items())
    return f"--dicom-window {info['mode']}: {applied}"


def _duplicates_text(dup: dict[str, Any]) -> str:
    text = f"{dup['count']} exact duplicate image(s)"
    if dup.get("cross_split_groups"):
        text += f"; {dup['cross_split_groups']} group(s) span several splits (leakage)"
    return text


def format_inspection(summary: dict[str, Any]) -> Group:
    """Render :func:`inspect_source`'s summary as rich tables (overview, class counts, problems).

    Returns:
        A :class:`rich.console.Group` to pass to ``rich.console.Console.print``.
    """
    # Imported here: medlite.data.inspect loads OpenCV, which `medlite --help` does not need (start-up time).
    from medlite.data.inspect import MAX_UNREADABLE_LISTED

    overview = Table(title="Dataset", show_header=False, title_justify="left")
    overview.add_column(style="bold")
    overview.add_column()
    size = summary.get("image_size") or {}
    rows = [
        ("source", f"{summary['kind']}  {summary['location']}"),
        ("images", f"{summary['total']} in {len(summary['classes'])} classes"),
        ("examined", f"{summary.get('examined', 0)} (decoded {summary.get('decoded', 0)})"),
        (
            "size (HxW)",
            f"most common {size['most_common']} ({size['most_common_count']}), "
            f"min {size['min']}, max {size['max']}, {size['distinct']} distinct"
            if size
            else "-",
        ),
        ("bit depth", _counter_text(summary.get("bit_depth", {}))),
        ("channels", _counter_text(summary.get("channels", {}))),
        ("formats", _counter_text(summary.get("formats", {}))),
        *([("DICOM window", _window_text(summary["dicom_window"]))] if summary.get("dicom_window") else []),
        ("duplicates", _duplicates_text(summary["duplicates"])),
        ("unreadable", f"{summary['unreadable']['count']} file(s)"),
    ]
    for key, value in rows:
        overview.add_row(key, value)

    counts = Table(title="Images per class", title_justify="left")
    counts.add_column("class")
    splits = summary.get("split_counts", {})
    for split in splits:
        counts.add_column(split, justify="right")
    counts.add_column("total", justify="right")
    for cls in summary["classes"]:
        counts.add_row(cls, *(str(splits[s][cls]) for s in splits), str(summary["counts"][cls]))
    counts.add_row(
        "all", *(str(sum(splits[s].values())) for s in splits), str(summary["total"]), style="bold"
    )

    parts: list[Any] = [overview, counts]
    if summary["duplicates"]["groups"]:
        dup = Table(title="Exact duplicates (first groups)", title_justify="left", show_header=False)
        dup.add_column()
        for names in summary["duplicates"]["groups"]:
            dup.add_row(" = ".join(names))
        parts.append(dup)
    files = summary["unreadable"]["files"]
    if files:
        bad = Table(title="Unreadable files", title_justify="left")
        bad.add_column("file")
        bad.add_column("problem")
        for item in files[:MAX_UNREADABLE_LISTED]:
            bad.add_row(item["name"], item["reason"])
        if len(files) > MAX_UNREADABLE_LISTED:
            bad.add_row("...", f"{len(files) - MAX_UNREADABLE_LISTED} more")
        parts.append(bad)
    return Group(*parts)


def console_table(rows: Sequence[dict[str, Any]]) -> Any:
    """A compact ``rich`` table of the comparison for a terminal (the report files hold every column)."""
    front = pareto_front(rows, "peak_train_mem_mb")
    table = Table(caption="★ Pareto-optimal for accuracy vs peak training memory", caption_justify="left")
    table.add_column("run", overflow="fold", min_width=16)
    for column in ("accuracy [95% CI]", "AUC", "params", "mem MB", "p50 ms", "★"):
        table.add_column(column, justify="right", no_wrap=True)
    for row, on_front in zip(rows, front, strict=True):
        table.add_row(row["run"], f"{row['accuracy']:.3f} [{row['accuracy_ci'][0]:.2f}-{row['accuracy_ci'][1]:.2f}]",
                      auc_cell(row), f"{row['params'] / 1e6:.2f} M",
                      format_cell(row["peak_train_mem_mb"], ".0f"),
                      format_cell(row["latency_ms_p50"], ".1f"), "★" if on_front else "")
    return table
