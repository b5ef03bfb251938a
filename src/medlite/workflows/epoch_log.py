"""Training progress for a log file: one plain line per epoch where a live bar would make a mess.

Rich's live bar redraws itself in a terminal; written to a file or a pipe (CI, ``nohup``, SLURM output) each
redraw becomes several wrapped lines per epoch. :func:`training_progress` picks the bar for a terminal and
:class:`EpochLines` otherwise.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

# The metrics that lead the line, in this order; the rest (paradigm-specific) follow alphabetically.
_FIRST = ("train_loss", "val_loss", "val_acc", "val_auc")


class EpochLines(ProgressBar):
    """Prints ``epoch 3/30  train_loss 0.612  val_loss 0.701  val_acc 0.742  val_auc 0.861  (41 s)`` after
    each epoch (validation included) to ``stream`` (default stderr), on global rank 0 only."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self._stream = stream
        self._enabled = True
        self._started = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        metrics.pop("train_loss_step", None)
        if "train_loss_epoch" in metrics:  # Lightning logs the epoch mean under both names
            metrics["train_loss"] = metrics.pop("train_loss_epoch")
        names = [k for k in _FIRST if k in metrics] + sorted(k for k in metrics if k not in _FIRST)
        shown = "  ".join(f"{k} {metrics[k]:.{4 if 'loss' in k else 3}f}" for k in names)
        line = (f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {shown}  "
                f"({time.perf_counter() - self._started:.0f} s)")
        print(line, file=self._stream or sys.stderr, flush=True)


def training_progress(stream: TextIO | None = None) -> ProgressBar:
    """The live bar in a terminal, :class:`EpochLines` elsewhere (``stream`` defaults to stderr)."""
    target = stream or sys.stderr
    return RichProgressBar(leave=True) if target.isatty() else EpochLines(stream)
