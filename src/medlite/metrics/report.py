"""Tables and performance-frontier plots of compared runs: pure functions of the rows of ``medlite compare``.

A run is *Pareto-optimal* for a cost (peak training memory, latency, parameters) when no other run is at least
as accurate and at most as costly, and strictly better in one of the two: the frontier analysis of the
HybridNet-XR paper. Output: Markdown and a self-contained HTML page with the plots embedded as PNG.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COSTS = {  # key in a row -> axis label
    "peak_train_mem_mb": "peak training memory (MB)",
    "latency_ms_p50": "latency p50, batch 1 (ms)",
    "params": "parameters",
}


def pareto_front(rows: Sequence[dict[str, Any]], cost: str, score: str = "accuracy") -> list[bool]:
    """For each row, whether it is Pareto-optimal (max ``score``, min ``cost``); rows lacking either are not."""
    flags = []
    for row in rows:
        if row.get(cost) is None or row.get(score) is None:
            flags.append(False)
            continue
        dominated = any(
            other is not row
            and other.get(cost) is not None
            and other.get(score) is not None
            and other[score] >= row[score]
            and other[cost] <= row[cost]
            and (other[score] > row[score] or other[cost] < row[cost])
            for other in rows
        )
        flags.append(not dominated)
    return flags


def format_cell(value: Any, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def auc_cell(row: dict[str, Any]) -> str:
    """The macro AUC of a compared run, or "—" with the mean over the classes present when a class has no AUC
    (``auc_macro`` null: a class absent from the test labels)."""
    if row["auc_macro"] is not None or row.get("auc_macro_present") is None:
        return format_cell(row["auc_macro"])
    return f"— ({format_cell(row['auc_macro_present'])} over {row['auc_classes']}/{row['n_classes']} classes)"


def _table_rows(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    front = pareto_front(rows, "peak_train_mem_mb")
    header = [
        "run",
        "model",
        "paradigm",
        "n",
        "accuracy [95% CI]",
        "macro AUC [95% CI]",
        "params",
        "MACs (M)",
        "peak train mem (MB)",
        "latency p50 (ms)",
        "ECE",
        "OOD flagged",
        "frontier",
    ]
    body = []
    for row, on_front in zip(rows, front, strict=True):
        body.append(
            [
                row["run"],
                row["model"],
                row["paradigm"],
                str(row["n"]),
                f"{row['accuracy']:.3f} [{row['accuracy_ci'][0]:.3f}, {row['accuracy_ci'][1]:.3f}]",
                f"{auc_cell(row)} [{format_cell(row['auc_ci'][0])}, {format_cell(row['auc_ci'][1])}]",
                f"{row['params']:,}",
                f"{row['macs'] / 1e6:.1f}",
                format_cell(row["peak_train_mem_mb"], ".0f"),
                format_cell(row["latency_ms_p50"], ".2f"),
                format_cell(row.get("ece")) + ("" if row.get("calibrated") or row.get("ece") is None else " (raw)"),
                "n/a" if row.get("ood_flagged") is None else f"{row['ood_flagged']:.1%}",
                "★" if on_front else "",
            ]
        )
    return header, body


_TRUST_NOTE = ("ECE: after the run's calibration (raw = a run without one: `medlite calibrate RUNDIR`); OOD flagged: "
               "the share of the test split the run's OOD gate flags (about 1 % expected).")


def _reliability_images(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Each run's reliability diagram (``plots/reliability_<split>.png``), embedded as base64 PNG."""
    images = []
    for row in rows:
        path = row.get("reliability_plot")
        if path and Path(path).is_file():
            data = base64.b64encode(Path(path).read_bytes()).decode()
            images.append(f'<figure><img alt="reliability of {html.escape(row["run"])}" '
                          f'src="data:image/png;base64,{data}"><figcaption>{html.escape(row["run"])}</figcaption>'
                          "</figure>")
    return images


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison table as GitHub Markdown (★ = on the accuracy-vs-peak-memory frontier)."""
    header, body = _table_rows(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + f"\n\n★ Pareto-optimal for accuracy vs peak training memory. {_TRUST_NOTE}\n"


def frontier_plot(rows: Sequence[dict[str, Any]], cost: str) -> bytes | None:
    """PNG bytes of accuracy vs ``cost`` with the Pareto front drawn, or ``None`` when no row has that cost."""
    points = [(r[cost], r["accuracy"], r["run"]) for r in rows if r.get(cost) is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    front = pareto_front(rows, cost)
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=110)
    for row, on_front in zip(rows, front, strict=True):
        if row.get(cost) is None:
            continue
        ax.scatter(row[cost], row["accuracy"], color="tab:red" if on_front else "tab:blue", zorder=3)
        ax.annotate(
            row["run"], (row[cost], row["accuracy"]), fontsize=7, xytext=(4, 3), textcoords="offset points"
        )
    on = sorted((r[cost], r["accuracy"]) for r, f in zip(rows, front, strict=True) if f)
    if len(on) > 1:
        ax.step([c for c, _ in on], [a for _, a in on], where="post", color="tab:red", lw=1, alpha=0.6)
    if cost == "params":
        ax.set_xscale("log")
    ax.set_xlabel(COSTS[cost])
    ax.set_ylabel("accuracy")
    ax.set_title("performance frontier (red = Pareto-optimal)", fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def to_html(rows: Sequence[dict[str, Any]]) -> str:
    """A self-contained HTML report: the table and the three frontier plots embedded as base64 PNG."""
    header, body = _table_rows(rows)
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    table += "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body
    )
    table += "</table>"
    images = []
    for cost in COSTS:
        png = frontier_plot(rows, cost)
        if png is not None:
            images.append(
                f'<img alt="accuracy vs {cost}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
            )
    reliability = _reliability_images(rows)
    missing = [r["run"] for r in rows if r.get("peak_train_mem_mb") is None]
    note = (
        (
            f"<p>No profile for {', '.join(map(html.escape, missing))}: run <code>medlite profile RUNDIR</code> "
            "to add memory and latency.</p>"
        )
        if missing
        else ""
    )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{margin:8px}"
        "figure{display:inline-block;margin:0}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>medlite compare</title><style>{style}</style>"
        f"</head><body><h1>medlite compare</h1>{table}<p>★ Pareto-optimal for accuracy vs peak training "
        f"memory. Accuracy CIs: 1,000 bootstrap resamples of each run's test split. {html.escape(_TRUST_NOTE)}</p>"
        f"{note}<h2>Performance frontier</h2>{''.join(images)}"
        + (f"<h2>Calibration (reliability on the test split)</h2>{''.join(reliability)}" if reliability else "")
        + "</body></html>\n"
    )
