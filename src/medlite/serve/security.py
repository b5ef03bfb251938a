"""Access control and response headers of ``medlite serve``.

* **Token.** With a token, every ``/api/`` request needs ``Authorization: Bearer <token>``, compared in
  constant time (:func:`hmac.compare_digest`). The page itself is static (HTML, CSS, JS, no data) and shows a
  login form; its script keeps the token in a JavaScript variable only (no cookie, no storage, no URL), so
  closing the tab forgets it. Tokens are never accepted in a query string (URLs end up in logs and history).
* **Guessing.** More than :data:`MAX_FAILURES` wrong tokens within a minute answer 429 to everyone until the
  minute has passed (a LAN attacker cannot try tokens quickly; a clinic user waits a minute).
* **Headers.** A Content-Security-Policy that allows only this server's own script and style files (no inline
  script, no external origin: the page fetches nothing from outside), ``X-Content-Type-Options: nosniff``,
  ``Referrer-Policy: no-referrer``, framing forbidden, and ``Cache-Control: no-store`` on every API answer so
  that no result stays in a browser or proxy cache. Each response carries its ``X-Request-ID``.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from typing import Any

MAX_FAILURES = 20
FAILURE_WINDOW_S = 60.0

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
_COMMON = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
           (b"cross-origin-resource-policy", b"same-origin")]


def new_request_id() -> str:
    """A short random request id (8 hex digits): all a log line needs to tie a request together."""
    return secrets.token_hex(4)


class TokenGuard:
    """Checks the bearer token of a request and throttles wrong guesses."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token is not None else None
        self._failures: deque[float] = deque()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, authorization: str | None) -> int | None:
        """``None`` when the request may pass, else the status to answer: 401 (no / wrong token) or 429."""
        if self._token is None:
            return None
        now = time.monotonic()
        with self._lock:
            while self._failures and now - self._failures[0] > FAILURE_WINDOW_S:
                self._failures.popleft()
            if len(self._failures) >= MAX_FAILURES:
                return 429
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token):
            return None
        with self._lock:
            self._failures.append(now)
        return 401


class SecurityHeaders:
    """ASGI middleware adding the security headers, ``X-Request-ID`` and, on ``/api/``, ``no-store``.

    The request id is made here and put in ``scope["state"]["request_id"]`` for the handlers and the log.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        api = scope.get("path", "").startswith("/api/")

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() not in (b"cache-control", b"x-request-id")]
                headers += _COMMON + [(b"x-request-id", request_id.encode()),
                                      (b"cache-control", b"no-store" if api else b"no-cache")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
