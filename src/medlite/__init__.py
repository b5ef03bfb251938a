"""medlite: lightweight chest X-ray classifiers you can build, train, compare, explain and deploy on a laptop CPU.

The public Python API mirrors the command line::

    import medlite
    medlite.list_models("mobilenet*")
    model = medlite.create_model("hybridnet_xr_100", num_classes=3, in_chans=1)
    result = medlite.train(out="runs/hxr", source="synthetic", model="hybridnet_xr_100", epochs=5, img_size=64)
    medlite.evaluate("runs/hxr")          # or on another source: medlite.evaluate("runs/hxr", data="other/")
"""

from __future__ import annotations

from typing import Any

from medlite._version import __version__ as __version__

_LAZY = {
    "create_model": "medlite.models",
    "list_models": "medlite.models",
    "get_model_cfg": "medlite.models",
    "train": "medlite.api",
    "evaluate": "medlite.api",
    "evaluate_run": "medlite.api",
    "compare": "medlite.api",
    "export": "medlite.api",
    "predict": "medlite.api",
    "profile": "medlite.api",
    "inspect": "medlite.api",
    "synthesize": "medlite.api",
    "model_table": "medlite.api",
    "evaluate_prototypes": "medlite.api",
    "evaluate_ood": "medlite.api",
    "calibrate": "medlite.api",
    "select_weights": "medlite.api",
    "open_source": "medlite.data.sources",
    "MedliteError": "medlite.errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    # Lazy so that `import medlite` stays cheap (no torch import until a function is used).
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medlite' has no attribute {name!r}")
