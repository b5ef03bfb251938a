"""The HTTP layer of ``medlite serve`` (FastAPI): routes, status codes, JSON errors, the log line. No logic.

Routes::

    GET  /                 the page (static HTML; its CSS and JS under /static/)
    GET  /healthz          {"status": "ok"}: the process answers (no model details, no token needed)
    GET  /api/v1/model     the model's contract and card summary            (token when one is set)
    POST /api/v1/predict   multipart: files (one or more), heatmap, display  (token when one is set)

Every error is JSON ``{"error": "..."}``: 400 bad image or form, 401 token, 404 route, 405 method, 413 too
large (bytes, pixels or files), 415 not PNG/JPEG/DICOM or not multipart, 429 too many wrong tokens, 503 busy
or timed out. FastAPI's documentation pages are off (they load their assets from a CDN).

The log line of a prediction holds the request id, method, path, status, byte size, file count, latency and
the predicted classes: never a file name (the multipart parser drops it) and never a DICOM header value.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from medlite.serve.engine import Engine
from medlite.serve.multipart import UploadError, read_form
from medlite.serve.security import SecurityHeaders, TokenGuard
from medlite.serve.settings import ServeSettings
from medlite.serve.summary import model_info

log = logging.getLogger("medlite.serve")

PAGES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
         "app.css": "text/css; charset=utf-8"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _flag(form_fields: dict[str, str], name: str) -> bool:
    value = form_fields.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UploadError(400, f"form field {name!r}: expected true or false")


def _page(name: str) -> bytes:
    return resources.files("medlite.serve").joinpath("pages", name).read_bytes()


def create_app(settings: ServeSettings, engine: Engine | None = None) -> FastAPI:
    """The ASGI application for ``settings`` (the model is loaded and warmed up here, unless ``engine`` is
    given)."""
    engine = engine or Engine(settings)
    guard = TokenGuard(settings.token)
    pages = {name: _page(name) for name in PAGES}
    info = model_info(engine.contract, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        yield
        engine.close()

    app = FastAPI(title="medlite serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine = engine
    app.add_middleware(SecurityHeaders)

    def denied(request: Request) -> JSONResponse | None:
        status = guard.check(request.headers.get("authorization"))
        if status == 401:
            return _error(401, "missing or wrong access token (Authorization: Bearer <token>)")
        if status == 429:
            return _error(429, "too many wrong tokens in the last minute; wait a minute and try again")
        return None

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        words = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        return _error(exc.status_code, words)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, "malformed request")

    @app.get("/")
    async def index() -> Response:
        return Response(pages["index.html"], media_type=PAGES["index.html"])

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in PAGES or name == "index.html":
            return _error(404, "not found")
        return Response(pages[name], media_type=PAGES[name])

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/v1/model")
    async def model(request: Request) -> Response:
        return denied(request) or JSONResponse(info)

    @app.post("/api/v1/predict")
    async def predict(request: Request) -> Response:
        start = time.perf_counter()
        request_id = request.scope["state"]["request_id"]
        response, n_bytes, n_files, predicted = await _predict(request, request_id, start)
        log.info("request=%s POST /api/v1/predict status=%d bytes=%d files=%d latency_ms=%.1f predicted=%s",
                 request_id, response.status_code, n_bytes, n_files, 1e3 * (time.perf_counter() - start),
                 ",".join(predicted) or "-")
        return response

    async def _predict(request: Request, request_id: str, start: float) -> tuple[Response, int, int, list[str]]:
        refused = denied(request)
        if refused is not None:
            return refused, 0, 0, []
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > settings.max_upload_bytes:
            return _error(413, f"upload larger than the {settings.max_upload_mb:g} MB limit (--max-upload-mb)"), \
                int(declared), 0, []
        if not engine.admit():
            return _error(503, f"server busy ({settings.queue} requests in progress); try again in a moment"), \
                0, 0, []
        held = {"bytes": 0}
        released = False

        def count(n: int) -> None:
            engine.reserve_bytes(n)
            held["bytes"] += n

        try:
            form = await asyncio.wait_for(read_form(
                request.headers.get("content-type", ""), request.stream(), max_bytes=settings.max_upload_bytes,
                max_files=settings.max_files, on_bytes=count), settings.timeout_s)
            if not form.files:
                raise UploadError(400, "no image in the upload; send PNG, JPEG or DICOM files as 'files'")
            heatmap, display = _flag(form.fields, "heatmap"), _flag(form.fields, "display")
            future = engine.submit(form.files, heatmap=heatmap, display=display, request_id=request_id)
            del form  # the worker holds the bytes now
            # The slot is given back when the worker is done, even if this request times out first: work
            # that cannot be cancelled still counts against the queue.
            future.add_done_callback(lambda _f: engine.release(held["bytes"]))
            released = True
            remaining = max(0.0, settings.timeout_s - (time.perf_counter() - start))
            outcome = await asyncio.wait_for(asyncio.wrap_future(future), remaining)
        except UploadError as err:
            return _error(err.status, str(err)), held["bytes"], 0, []
        except asyncio.TimeoutError:  # noqa: UP041 - Python 3.10 needs the asyncio name
            return _error(503, f"the request took longer than {settings.timeout_s:g} s (upload + inference)"), \
                held["bytes"], 0, []
        except ClientDisconnect:
            log.info("request=%s client disconnected during the upload (%d bytes read)", request_id, held["bytes"])
            return Response(status_code=400), held["bytes"], 0, []
        finally:
            if not released:
                engine.release(held["bytes"])
        body = {"request_id": request_id, "model": engine.contract["model"],
                "classes": list(engine.contract["classes"]), "threshold": engine.threshold,
                "positive_class": engine.contract.get("positive_class"), "results": outcome.items}
        failed = outcome.failed
        if len(failed) == len(outcome.items):
            return _error(failed[0]["code"], failed[0]["error"], **body), held["bytes"], len(outcome.items), []
        return JSONResponse(body), held["bytes"], len(outcome.items), outcome.predicted

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # The type only: a message could quote data; the request id ties it to the client's error.
        log.error("request=%s internal error %s", request.scope.get("state", {}).get("request_id"),
                  type(exc).__name__)
        return _error(500, "internal error; the server keeps running")

    return app
