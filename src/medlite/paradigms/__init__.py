"""Training paradigms: one LightningModule each, sharing :class:`~medlite.paradigms.task.ClassifierTask`."""

from __future__ import annotations

from medlite.errors import MedliteError
from medlite.paradigms.domain_gap import DomainGapTask
from medlite.paradigms.dual_skd import DualSKDTask
from medlite.paradigms.kd import KDTask
from medlite.paradigms.protonet import ProtoNetTask
from medlite.paradigms.simclr import PreWarmedTask, SimCLRTask
from medlite.paradigms.supervised import SupervisedTask
from medlite.paradigms.task import ClassifierTask

PARADIGMS: dict[str, type[ClassifierTask]] = {
    "supervised": SupervisedTask,
    "simclr": SimCLRTask,
    "simclr-pw": PreWarmedTask,  # SimCLR phase (its before_fit hook), then supervised fine-tuning
    "kd": KDTask,
    "dg": DomainGapTask,
    "dual-skd": DualSKDTask,
    "protonet": ProtoNetTask,
}


def get_paradigm(name: str) -> type[ClassifierTask]:
    """The task class of a paradigm name; unknown names raise a one-line error listing the known ones."""
    if name not in PARADIGMS:
        raise MedliteError(f"unknown paradigm {name!r}; choose one of {', '.join(PARADIGMS)}")
    return PARADIGMS[name]


__all__ = ["PARADIGMS", "ClassifierTask", "DomainGapTask", "DualSKDTask", "KDTask", "PreWarmedTask", "ProtoNetTask",
           "SimCLRTask", "SupervisedTask", "get_paradigm"]
