"""Headless matplotlib figures written as PNG atomically (shared by the calibration and OOD plots)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medlite.utils.atomic import atomic_write


def figure(width: float = 5.0, height: float = 4.0, **kwargs: Any) -> tuple[Any, Any]:
    """``plt.subplots`` on the Agg backend (never needs a display); ``kwargs`` go to ``subplots``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=110, **kwargs)


def save_png(fig: Any, path: str | Path) -> Path:
    """Save ``fig`` as a PNG through :func:`atomic_write` (parents created) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", bbox_inches="tight")
    plt.close(fig)
    return path
