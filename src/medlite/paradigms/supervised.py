"""Supervised training: class-weighted, label-smoothed cross-entropy on augmented batches."""

from __future__ import annotations

from medlite.paradigms.task import ClassifierTask


class SupervisedTask(ClassifierTask):
    """Plain supervised fine-tuning or training from scratch; the loss is :meth:`ClassifierTask.cross_entropy`."""
