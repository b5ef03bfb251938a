"""Deployment: ONNX export with a parity check, int8 quantisation, and prediction on image files.

The Python API behind ``medlite export`` and ``medlite predict``::

    from medlite.deploy import export_run, predict
    report = export_run("runs/hxr", format="onnx", int8=True)          # runs/hxr/export/model(.int8).onnx
    rows = predict("runs/hxr/export/model.onnx", ["scans/"], out="predictions.csv")

Modules: :mod:`~medlite.deploy.contract` (the preprocessing / output contract and ONNX metadata, torch-free),
:mod:`~medlite.deploy.classifiers` (ONNX Runtime and eager-torch classifiers), :mod:`~medlite.deploy.prediction`
(``predict`` over files and folders), :mod:`~medlite.deploy.onnx_export` and :mod:`~medlite.deploy.quantize`.
``predict`` with an ``.onnx`` model never imports torch; export and quantisation import torch / onnx, so they are
loaded on first use (start-up time of the torch-free path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medlite.deploy.classifiers import OnnxClassifier, TorchClassifier, load_classifier
from medlite.deploy.contract import read_metadata, run_contract
from medlite.deploy.prediction import collect_inputs, predict

if TYPE_CHECKING:
    from medlite.deploy.onnx_export import DEFAULT_OPSET, describe_report, export_onnx, export_run
    from medlite.deploy.quantize import quantize_int8

_LAZY = {
    "export_run": "medlite.deploy.onnx_export",
    "describe_report": "medlite.deploy.onnx_export",
    "export_onnx": "medlite.deploy.onnx_export",
    "DEFAULT_OPSET": "medlite.deploy.onnx_export",
    "quantize_int8": "medlite.deploy.quantize",
}

__all__ = [
    "DEFAULT_OPSET",
    "OnnxClassifier",
    "TorchClassifier",
    "collect_inputs",
    "describe_report",
    "export_onnx",
    "export_run",
    "load_classifier",
    "predict",
    "quantize_int8",
    "read_metadata",
    "run_contract",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medlite.deploy' has no attribute {name!r}")
