"""Training paradigms: one LightningModule each, sharing :class:`~medlite.paradigms.base.ClassifierTask`."""

from __future__ import annotations

from medlite.errors import MedliteError
from medlite.paradigms.base import ClassifierTask
from medlite.paradigms.domain_gap import DomainGapTask
from medlite.paradigms.dual_skd import DualSKDTask
from medlite.paradigms.kd import KDTask
from medlite.paradigms.protonet import ProtoNetTask
from medlite.paradigms.simclr import SimCLRTask
from medlite.paradigms.supervised import SupervisedTask

# "simclr-pw" is SimCLR pre-training (run by medlite.training before the fit) followed by supervised fine-tuning.
PARADIGMS: dict[str, type[ClassifierTask]] = {
    "supervised": SupervisedTask,
    "simclr": SimCLRTask,
    "simclr-pw": SupervisedTask,
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


__all__ = ["PARADIGMS", "ClassifierTask", "DomainGapTask", "DualSKDTask", "KDTask", "ProtoNetTask", "SimCLRTask",
           "SupervisedTask", "get_paradigm"]
