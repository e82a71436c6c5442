"""Every error the service answers with, and the one place that turns them into HTTP.

    TesseraError                      500 internal_error (never raised for user input)
    ├── BadRequest                    400 undecodable input (image, npy, base64, JSON)
    ├── Unauthorized                  401 missing or unknown API key
    ├── UnknownModel                  404 model name not loaded (the message lists the known ones)
    │   └── UnknownDecoder                the model has no decoder of that name (the message lists its own)
    ├── NotAcceptable                 406 Accept header names no supported response type
    ├── TooLarge                      413 body, tile count or image pixels over the limits
    ├── UnsupportedMediaType          415 Content-Type not accepted by the endpoint
    ├── InvalidInput                  422 decodable but wrong: sheet sides, shapes, dtypes, NaN
    ├── Unavailable                   503 try again later (carries Retry-After)
    │   ├── Overloaded                    queue full
    │   ├── ShuttingDown                  server draining before exit
    │   ├── NotReady                      models still warming up
    │   └── InferenceFailed               the model call of the batch failed
    ├── DeadlineExceeded              504 waited past the request timeout; nothing was computed
    └── ClientDisconnected            499 the client went away (the response is never read)

Each error carries a ``detail`` that says what was wrong and how to fix it, and a short
snake_case ``code`` clients can branch on. Responses are ``{"detail": ..., "code": ...}``.
"""

from __future__ import annotations

import logging
import math
import traceback
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

logger = logging.getLogger(__name__)


class TesseraError(Exception):
    """Base of the service's errors: an HTTP status, a short code and a helpful detail."""

    status = 500
    code = "internal_error"

    def __init__(self, detail: str, *, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})


class BadRequest(TesseraError):
    status = 400
    code = "undecodable"


class Unauthorized(TesseraError):
    status = 401
    code = "unauthorized"


class UnknownModel(TesseraError):
    status = 404
    code = "unknown_model"


class UnknownDecoder(UnknownModel):
    code = "unknown_decoder"


class NotAcceptable(TesseraError):
    status = 406
    code = "not_acceptable"


class TooLarge(TesseraError):
    status = 413
    code = "too_large"


class UnsupportedMediaType(TesseraError):
    status = 415
    code = "unsupported_media_type"


class InvalidInput(TesseraError):
    status = 422
    code = "invalid_input"


class Unavailable(TesseraError):
    """Temporary: the client should retry after ``retry_after_s`` seconds."""

    status = 503
    code = "unavailable"

    def __init__(self, detail: str, *, retry_after_s: float = 1.0, code: str | None = None) -> None:
        seconds = max(1, math.ceil(retry_after_s))
        super().__init__(detail, code=code, headers={"Retry-After": str(seconds)})
        self.retry_after_s = seconds


class Overloaded(Unavailable):
    code = "overloaded"


class ShuttingDown(Unavailable):
    """Also closes the connection, so that a keep-alive client reconnects (to another instance)."""

    code = "shutting_down"

    def __init__(self, detail: str, *, retry_after_s: float = 1.0, code: str | None = None) -> None:
        super().__init__(detail, retry_after_s=retry_after_s, code=code)
        self.headers["Connection"] = "close"


class NotReady(Unavailable):
    code = "not_ready"


class InferenceFailed(Unavailable):
    code = "inference_failed"


class DeadlineExceeded(TesseraError):
    status = 504
    code = "deadline_exceeded"


class ClientDisconnected(TesseraError):
    status = 499  # nginx's "client closed request": logged, never seen by the client
    code = "client_disconnected"


def error_body(detail: str, code: str) -> dict[str, str]:
    return {"detail": detail, "code": code}


def tessera_error_response(request: Request, exc: TesseraError) -> JSONResponse:
    if exc.status >= 500 and exc.status != 503:
        logger.warning("%s %s -> %d %s: %s", request.method, request.url.path, exc.status, exc.code, exc.detail)
    return JSONResponse(error_body(exc.detail, exc.code), status_code=exc.status, headers=exc.headers)


async def _tessera_error(request: Request, exc: TesseraError) -> JSONResponse:
    return tessera_error_response(request, exc)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed"}
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404:
        detail = f"no route {request.url.path!r}; see /docs for the API"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path!r}; see /docs for the API"
    code = codes.get(exc.status_code, "http_error")
    return JSONResponse(error_body(detail, code), status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err.get("loc", ()))
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    detail = "invalid request: " + "; ".join(problems) + "; see /docs for the expected parameters"
    return JSONResponse(error_body(detail, "invalid_request"), status_code=422)


def client_disconnect_response() -> JSONResponse:
    """The client left while sending its body; nobody reads this answer."""
    error = ClientDisconnected("the client disconnected while sending the request body")
    return JSONResponse(error_body(error.detail, error.code), status_code=error.status)


async def _client_disconnect(request: Request, exc: ClientDisconnect) -> JSONResponse:
    return client_disconnect_response()


def internal_error_response(scope, exc: Exception, started: bool = False) -> JSONResponse | None:
    """A 500 for an exception nothing else handled: one log line with a request id (not a
    traceback) and ``Connection: close``, so that a keep-alive client's next request goes on a
    fresh connection. None once the answer has ``started``: the connection ends there."""
    request_id = uuid.uuid4().hex[:16]
    where = traceback.extract_tb(exc.__traceback__)[-1]
    logger.error("request %s %s %s failed: %s: %s (%s:%d)", request_id, scope.get("method"), scope.get("path"),
                 type(exc).__name__, str(exc)[:200], where.filename, where.lineno)
    if started:
        return None
    detail = f"internal error (request id {request_id}); this is a bug in the service, please report it"
    return JSONResponse(error_body(detail, "internal_error"), status_code=500,
                        headers={"Connection": "close", "X-Request-Id": request_id})


class ErrorGuard:
    """ASGI middleware: an exception nothing else handled becomes a 500
    (``internal_error_response``).

    Starlette's own handler for ``Exception`` re-raises after answering, so uvicorn would log
    the traceback a second time; this one answers and stops there.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            response = internal_error_response(scope, exc, started)
            if response is not None:
                await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Map the error tree (and FastAPI's own errors) to ``{"detail", "code"}`` JSON responses."""
    app.add_exception_handler(TesseraError, _tessera_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_middleware(ErrorGuard)  # inside every other middleware, so they see the 500
