"""``medlite compare``: read runs into rows, then write the table and the accuracy-vs-cost frontier
(:mod:`medlite.metrics.report`) as Markdown and HTML."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medlite.errors import MedliteError
from medlite.metrics.profile import count_macs, count_parameters
from medlite.metrics.report import to_html, to_markdown
from medlite.rundir import layout, store
from medlite.utils import atomic


def collect_runs(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One row per run: identity, test metrics with CIs, and efficiency (from ``profile.json`` when present)."""
    if not run_dirs:
        raise MedliteError("compare needs at least one run directory")
    rows = []
    for path in run_dirs:
        run = store.require_run_dir(path)
        metrics = atomic.read_json(run / layout.METRICS)
        model, cfg, info = store.load_run_model(run)
        profile = atomic.read_json(run / layout.PROFILE) if (run / layout.PROFILE).is_file() else {}
        calibration, ood = metrics.get("calibration"), metrics.get("ood")
        reliability = run / layout.PLOTS / f"reliability_{calibration['split']}.png" if calibration else None
        rows.append(
            {
                "run": run.name,
                "path": str(run),
                "model": info["model"],
                "paradigm": info["paradigm"],
                "data": cfg.data.source,
                "img_size": info["input_size"],
                "fraction": cfg.data.fraction,
                "n": metrics["n"],
                "accuracy": metrics["accuracy"],
                "accuracy_ci": metrics["ci95"]["accuracy"],
                "auc_macro": metrics["auc_macro"],
                # a class absent from the test labels leaves auc_macro null; the mean over the others (and its
                # interval) is shown instead, labelled as such by medlite.metrics.report.auc_cell
                "auc_ci": (metrics.get("ci95") or {}).get("auc_macro")
                or (metrics.get("ci95") or {}).get("auc_macro_present") or [None, None],
                "auc_macro_present": metrics.get("auc_macro_present", metrics["auc_macro"]),
                "auc_classes": len(metrics.get("auc_classes") or []),
                "n_classes": len(metrics.get("per_class") or {}),
                "macro_f1": metrics["macro_f1"],
                # runs trained before calibration existed: their uncalibrated ECE, and no reliability diagram
                "ece": calibration["after"]["ece"] if calibration else metrics.get("ece"),
                "calibrated": calibration is not None and calibration["method"] != "none",
                "ood_flagged": ood["flagged"] if ood else None,
                "reliability_plot": str(reliability) if reliability is not None and reliability.is_file() else None,
                "params": count_parameters(model),
                "macs": profile.get("macs")
                or count_macs(model, info["input_size"], in_chans=info["in_chans"]),
                "peak_train_mem_mb": profile.get("peak_train_mem_mb"),
                "latency_ms_p50": profile.get("latency_ms_p50"),
                "train_throughput_ips": profile.get("train_throughput_ips"),
            }
        )
    return rows


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> dict[str, Any]:
    """Compare runs; with ``out`` write ``out`` (``.html`` or ``.md``) plus its sibling in the other format.

    Returns:
        ``{"rows": [...], "markdown": str, "written": [paths]}``.
    """
    rows = collect_runs(run_dirs)
    markdown = to_markdown(rows)
    written: list[str] = []
    if out is not None:
        out = Path(out)
        if out.suffix not in (".html", ".md"):
            raise MedliteError(f"--out {out}: use a .html or .md file name")
        atomic.write_text(out.with_suffix(".md"), "# medlite compare\n\n" + markdown)
        atomic.write_text(out.with_suffix(".html"), to_html(rows))
        written = [str(out.with_suffix(".html")), str(out.with_suffix(".md"))]
    return {"rows": rows, "markdown": markdown, "written": written}
