"""``medlite serve``: resolve the model, build the app, run uvicorn.

MODEL is an exported ``.onnx`` (served as it is; torch is never imported) or a run directory (its
``export/model.onnx``; exported first when it is missing or was written by a medlite without the heatmap
outputs; only that export imports torch).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from medlite.errors import MedliteError
from medlite.rundir import layout

log = logging.getLogger("medlite.serve")


def _current(onnx: Path) -> bool:
    """Whether an export carries what the server shows (heatmap outputs and the card summary)."""
    from medlite.deploy.classifiers import OnnxClassifier

    contract = OnnxClassifier(onnx, threads=1).contract
    return "outputs" in contract and "card" in contract


def resolve_model(model: str | Path, *, echo: Any = None) -> Path:
    """The ``.onnx`` file to serve for MODEL (a run directory is exported first when needed).

    Raises:
        MedliteError: MODEL does not exist or is neither an ``.onnx`` nor a run directory.
    """
    path = Path(model)
    if path.is_file() and path.suffix.lower() == ".onnx":
        return path
    if path.is_dir() and (path / layout.CONFIG).is_file():
        onnx = path / layout.EXPORT_DIR / layout.ONNX_FILE
        if onnx.is_file() and _current(onnx):
            return onnx
        if echo is not None:
            echo(f"{path}: exporting the run to {onnx} first (this imports PyTorch once)")
        from medlite.api import export  # imports torch: only on this path

        export(path)
        return onnx
    if path.is_dir() and (path / layout.ONNX_FILE).is_file():
        return path / layout.ONNX_FILE
    if not path.exists():
        raise MedliteError(f"{path}: model not found (expected an exported .onnx or a run directory)")
    raise MedliteError(f"{path}: MODEL must be an exported .onnx file or a run directory")


def build_app(model: str | Path, **settings: Any) -> Any:
    """The ASGI app for an ``.onnx`` (or a run directory) with :class:`~medlite.serve.settings.ServeSettings`
    keyword arguments; the model is loaded and warmed up."""
    from medlite.serve.app import create_app
    from medlite.serve.settings import ServeSettings

    return create_app(ServeSettings(model=resolve_model(model), **settings))


def _configure_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def serve(model: str | Path, *, host: str = "127.0.0.1", port: int = 8080, token_file: str | Path | None = None,
          workers: int = 2, max_upload_mb: float = 50.0, keep_uploads: str | Path | None = None,
          echo: Any = print, **settings: Any) -> None:
    """Run the point-of-care server until interrupted (Ctrl-C).

    Args:
        model: an exported ``.onnx`` or a run directory.
        host / port: where to listen; any host but loopback needs ``token_file``.
        token_file: a file holding the access token (one word, >= 16 characters).
        workers: inference threads.
        max_upload_mb: the largest request body.
        keep_uploads: keep the uploaded bytes in this folder (off by default: uploads stay in memory).
        echo: where start-up lines go.
        **settings: further :class:`~medlite.serve.settings.ServeSettings` fields (``queue``, ``timeout_s``,
            ``max_pixels``, ``threads`` ...).
    """
    start = time.perf_counter()
    import uvicorn

    from medlite.serve.app import create_app
    from medlite.serve.settings import ServeSettings, check_counts, read_token

    check_counts(port=port, workers=workers, threads=settings.get("threads"))  # before any export is started
    token = read_token(token_file) if token_file is not None else None
    kept = Path(keep_uploads) if keep_uploads is not None else None
    config = ServeSettings(model=resolve_model(model, echo=echo), host=host, port=port, token=token,
                           workers=workers, max_upload_mb=max_upload_mb, keep_uploads=kept, **settings)
    if kept is not None:
        kept.mkdir(parents=True, exist_ok=True)
        echo(f"warning: every upload is kept in {kept} (DICOM files with their headers); delete them when done")
    _configure_logging()
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, access_log=False, log_level="warning", timeout_keep_alive=5,
        # uvicorn's own cap (plain-text 503) sits above the app's bounded queue (JSON 503).
        limit_concurrency=config.queue * 2 + 16))
    where = f"[{host}]" if ":" in host else host
    echo(f"medlite serve: {config.model} on http://{where}:{port}/ "
         f"({'token required' if token else 'no token: this machine only'}; loaded in "
         f"{time.perf_counter() - start:.1f} s; Ctrl-C stops)")
    server.run()
