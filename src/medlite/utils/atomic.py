"""Atomic file writes and JSON reading.

Everything medlite writes (checkpoints, metrics, reports, caches, predictions) goes through
:func:`atomic_write`, which writes a temporary file beside the target and renames it, so an interrupted run
never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from medlite.errors import MedliteError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def with_default_mode(path: str | Path) -> None:
    """Give ``path`` the permissions ``open()`` would (0666 less the umask, usually 0644): ``mkstemp`` and
    safetensors' writer create files 0600, which hides weights and caches from the rest of a shared group."""
    os.chmod(path, 0o666 & ~_UMASK)


def temp_beside(path: Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """A new temporary file (open descriptor, path) in ``path``'s folder, named after it, with default permissions."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    with_default_mode(tmp)
    return fd, Path(tmp)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success rename it over ``path``, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> Path:
    with atomic_write(path) as handle:
        handle.write(text)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise MedliteError(f"{path}: not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MedliteError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
