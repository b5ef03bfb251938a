"""``medlite serve``: a local web app and REST API for a clinic workstation, on an exported model, without torch.

::

    medlite serve runs/hxr/export/model.onnx            # http://127.0.0.1:8080/, this machine only
    medlite serve runs/hxr --host 0.0.0.0 --token-file token.txt   # the local network, token required

Modules: :mod:`~medlite.serve.settings` (limits, binding rule), :mod:`~medlite.serve.multipart` (uploads
parsed in memory), :mod:`~medlite.serve.intake` (type sniffing, pixel limit, decoding),
:mod:`~medlite.serve.engine` (bounded worker pool calling :func:`medlite.deploy.prediction.predict_arrays`),
:mod:`~medlite.serve.summary` (model panel, one-line results), :mod:`~medlite.serve.security` (token, headers),
:mod:`~medlite.serve.app` (the FastAPI routes), :mod:`~medlite.serve.runner` (model resolution, uvicorn) and
``pages/`` (the static page: HTML, CSS, plain JavaScript; nothing loaded from outside).
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_app", "resolve_model", "serve"]


def __getattr__(name: str) -> Any:
    # Lazy: `import medlite.serve` must not load FastAPI or ONNX Runtime before they are needed (CLI start-up).
    if name in __all__:
        from medlite.serve import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'medlite.serve' has no attribute {name!r}")
