"""A comparison grid: one row per model, the input image then one column per explanation method."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlite.errors import MedliteError
from medlite.utils.atomic import atomic_write


@dataclass(frozen=True)
class Panel:
    """One cell of the grid: an RGB uint8 (H, W, 3) overlay and a one-line caption under it."""

    rgb: np.ndarray
    caption: str = ""


def save_grid(path: str | Path, image: np.ndarray, rows: Sequence[tuple[str, Sequence[Panel]]],
              columns: Sequence[str], title: str = "", cell_inches: float = 2.6) -> Path:
    """Write a PNG grid comparing methods (columns) and models (rows).

    Args:
        path: output ``.png``.
        image: the windowed input, RGB or grayscale uint8, shown in the first column of every row.
        rows: ``(row label, panels)``; every row has ``len(columns)`` panels.
        columns: method names, the column headers after "input".
        title: figure title (e.g. the file name and explained class).
        cell_inches: width of one cell; heights follow the image's aspect ratio.
    """
    from matplotlib.figure import Figure

    if not rows or any(len(panels) != len(columns) for _, panels in rows):
        raise MedliteError(f"save_grid: every row needs one panel per column ({len(columns)})")
    h, w = image.shape[:2]
    n_rows, n_cols = len(rows), len(columns) + 1
    # Figure is used without pyplot: no global state, no GUI backend, safe in threads and servers.
    fig = Figure(figsize=(cell_inches * n_cols, cell_inches * h / w * n_rows + 0.5 * n_rows + 0.4), dpi=110)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, (label, panels) in enumerate(rows):
        cells = [Panel(image, ""), *panels]
        for c, panel in enumerate(cells):
            ax = axes[r][c]
            ax.imshow(panel.rgb, cmap="gray" if panel.rgb.ndim == 2 else None, vmin=0, vmax=255,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("input" if c == 0 else columns[c - 1], fontsize=10)
            if panel.caption:
                ax.set_xlabel(panel.caption, fontsize=8)
        axes[r][0].set_ylabel(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png")
    return Path(path)
