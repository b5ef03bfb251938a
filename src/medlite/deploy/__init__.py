"""Deployment: ONNX export with a parity check, int8 quantisation, and prediction on image files.

The Python API behind ``medlite export`` and ``medlite predict``::

    from medlite.deploy import export_run, predict
    report = export_run("runs/hxr", format="onnx", int8=True)          # runs/hxr/export/model(.int8).onnx
    rows = predict("runs/hxr/export/model.onnx", ["scans/"], out="predictions.csv")

``predict`` with an ``.onnx`` model never imports torch. The prediction functions are imported eagerly (their
module needs numpy only): the function ``predict`` must be bound here before anything else imports the
submodule of the same name, or the package attribute would be that module. Export and quantisation import
torch / onnx, so they are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medlite.deploy.predict import OnnxClassifier, collect_inputs, predict

if TYPE_CHECKING:
    from medlite.deploy.onnx_export import (
        DEFAULT_OPSET,
        describe_report,
        export_onnx,
        export_run,
        read_metadata,
    )
    from medlite.deploy.quantize import quantize_int8

_LAZY = {
    "export_run": "medlite.deploy.onnx_export",
    "describe_report": "medlite.deploy.onnx_export",
    "export_onnx": "medlite.deploy.onnx_export",
    "read_metadata": "medlite.deploy.onnx_export",
    "DEFAULT_OPSET": "medlite.deploy.onnx_export",
    "quantize_int8": "medlite.deploy.quantize",
}

__all__ = [
    "DEFAULT_OPSET",
    "OnnxClassifier",
    "collect_inputs",
    "describe_report",
    "export_onnx",
    "export_run",
    "predict",
    "quantize_int8",
    "read_metadata",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medlite.deploy' has no attribute {name!r}")
