"""``medlite profile``: the efficiency profile of a model name, or of a run (then kept as ``profile.json``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medlite.metrics.profile import profile_model
from medlite.models import get_model_cfg
from medlite.rundir import layout, store
from medlite.utils import atomic


def profile(target: str | Path, *, img_size: int | None = None, batch_size: int = 32,
            threads: int | None = None, device: str = "cpu",
            on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Efficiency profile of a model name or a run directory (then also written to ``RUNDIR/profile.json``).

    A run is profiled at its own input size, channels and classes, with its trained weights (weights size).
    """
    path = Path(target)
    if path.is_dir():
        info = store.read_run_info(path)
        result = profile_model(info["model"], img_size=img_size or info["input_size"], batch_size=batch_size,
                               in_chans=info["in_chans"], num_classes=info["num_classes"], device=device,
                               threads=threads, weights_path=path / layout.WEIGHTS, on_step=on_step)
        atomic.write_json(path / layout.PROFILE, result)
        return result
    cfg = get_model_cfg(str(target))
    return profile_model(cfg.name, img_size=img_size or cfg.input_size, batch_size=batch_size, device=device,
                         threads=threads, on_step=on_step)
