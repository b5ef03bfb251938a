"""``medlite demo``: the whole pipeline on built-in phantoms, sized for a 2-core CPU and fully offline."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medlite.data.synthetic import write_phantom_dataset
from medlite.rundir import layout
from medlite.workflows.compare import compare_runs
from medlite.workflows.profile import profile
from medlite.workflows.train import train


def demo(out: str | Path = "demo_out", *, per_class: int = 150, img_size: int = 64, epochs: int = 25,
         models: tuple[str, ...] = ("hybridnet_xr_100", "mobilenet_v2"), progress: bool = True,
         on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Synthesize ChestX6 phantoms, train each of ``models``, evaluate, profile, compare.

    ``on_step`` is called with a short heading before each step ("1/6 phantoms: ..."), for a progress display.

    Writes ``OUT/data`` (ChestX6 phantoms), ``OUT/runs/<model>`` and ``OUT/report.html``; returns the
    comparison (see :func:`medlite.workflows.compare.compare_runs`). Each run is profiled, so the report has memory
    and latency columns.
    """
    out = Path(out)
    steps = 2 + 2 * len(models)
    step = (lambda i, text: on_step(f"{i}/{steps} {text}")) if on_step else (lambda i, text: None)
    step(1, f"phantoms: {per_class} per ChestX6 class into {out / 'data'}")
    data = write_phantom_dataset(out / "data", classes="chestx6", per_class=per_class, size=max(img_size, 64), seed=0)
    run_dirs = []
    for i, name in enumerate(models):
        run = out / "runs" / name
        step(2 + 2 * i, f"train {name} ({epochs} epochs, {img_size} px), then evaluate it on the test split")
        if (run / layout.CONFIG).exists():
            shutil.rmtree(run)  # the demo always starts fresh
        train(None, out=run, source=str(data / "manifest.csv"), model=name, epochs=epochs, size=img_size,
              batch_size=32, lr=3e-3, warmup_epochs=1.0, early_stopping_patience=0, progress=progress)
        step(3 + 2 * i, f"profile {name}: parameters, MACs, peak memory, latency")
        profile(run, batch_size=32)
        run_dirs.append(run)
    step(steps, f"compare the runs: {out / 'report.html'}")
    return compare_runs(run_dirs, out / "report.html")
