"""The settings of ``medlite serve`` and the checks that keep a server private by default.

Binding rule: the loopback addresses (127.0.0.1, ::1, localhost) may run without a token; any other address
(a clinic's local network) refuses to start without ``--token-file``. The token is read from a file, never
from the command line (a command line is visible to every user of the machine in the process list).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from medlite.errors import MedliteError, require_positive

LOOPBACK = ("127.0.0.1", "::1", "localhost")
MIN_TOKEN_CHARS = 16
DEFAULT_MAX_PIXELS = 40_000_000  # 40 megapixels: above any chest detector (43 cm at 0.1 mm ~ 4300 x 4300 px)
DEFAULT_MAX_FILES = 64
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_INFLIGHT_MB = 256  # request bodies held in memory at once, all requests together


@dataclass(frozen=True)
class ServeSettings:
    """What one server runs with.

    Attributes:
        model: the exported ``.onnx`` served.
        host / port: where uvicorn listens.
        token: the access token (``None`` = open, loopback only).
        workers: inference threads (each decodes, preprocesses and runs ONNX Runtime for one request at a time).
        threads: ONNX Runtime intra-op threads per inference (default: cores / workers, at least 1).
        max_upload_mb: the largest request body in MB (10^6 bytes); larger ones get 413.
        max_pixels: the largest image (H x W) decoded; larger ones get 413 before any pixel is decoded.
        max_files: files per request.
        queue: requests admitted at once (running + waiting); more get 503.
        inflight_mb: request bodies held in memory at once; beyond it new uploads get 503.
        timeout_s: a request's whole time budget (upload + inference); past it 503.
        keep_uploads: a folder to keep the uploaded bytes in (named by request id, never by file name), or
            ``None`` to keep nothing (the default: uploads live in memory only).
    """

    model: Path
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    workers: int = 2
    threads: int | None = None
    max_upload_mb: float = 50.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_files: int = DEFAULT_MAX_FILES
    queue: int = 32
    inflight_mb: float = DEFAULT_INFLIGHT_MB
    timeout_s: float = DEFAULT_TIMEOUT_S
    keep_uploads: Path | None = None

    def __post_init__(self) -> None:
        if self.host not in LOOPBACK and self.token is None:
            raise MedliteError(f"--host {self.host}: serving beyond this machine needs --token-file (every "
                               "request then needs the token); without one, use --host 127.0.0.1")
        check_counts(port=self.port, workers=self.workers, threads=self.threads)
        require_positive("--max-files", self.max_files)
        require_positive("--queue", self.queue)
        if self.max_upload_mb <= 0 or self.inflight_mb <= 0 or self.timeout_s <= 0 or self.max_pixels < 1:
            raise MedliteError("--max-upload-mb, the in-flight budget, the timeout and the pixel limit must be > 0")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1e6)

    @property
    def inference_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)


def check_counts(*, port: int, workers: int, threads: int | None = None) -> None:
    """Refuse a port outside 1-65535 (0 would listen on a port nobody is told) and fewer than 1 worker/thread."""
    require_positive("--port", port, maximum=65535)
    require_positive("--workers", workers)
    require_positive("--threads", threads)


def read_token(path: str | Path) -> str:
    """The token in ``path`` (surrounding whitespace stripped).

    Raises:
        MedliteError: the file is missing, unreadable, or holds fewer than 16 characters.
    """
    path = Path(path)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise MedliteError(f"--token-file {path}: cannot be read ({type(err).__name__})") from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise MedliteError(f"--token-file {path}: the token must be one word of at least {MIN_TOKEN_CHARS} "
                           "characters (e.g. `python -c \"import secrets; print(secrets.token_urlsafe(24))\"`)")
    return token
