"""Training paradigms: one LightningModule each, sharing :class:`~medlite.paradigms.base.ClassifierTask`."""

from __future__ import annotations

from medlite.errors import MedliteError
from medlite.paradigms.base import ClassifierTask
from medlite.paradigms.supervised import SupervisedTask

PARADIGMS: dict[str, type[ClassifierTask]] = {"supervised": SupervisedTask}


def get_paradigm(name: str) -> type[ClassifierTask]:
    """The task class of a paradigm name; unknown names raise a one-line error listing the known ones."""
    if name not in PARADIGMS:
        raise MedliteError(f"unknown paradigm {name!r}; choose one of {', '.join(PARADIGMS)}")
    return PARADIGMS[name]


__all__ = ["PARADIGMS", "ClassifierTask", "SupervisedTask", "get_paradigm"]
