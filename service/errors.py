"""Every error the service answers with: a tree of exceptions that knows no web framework (the
HTTP layer turns them into answers: ``tessera.service.http.answers``).

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

import math


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
