"""Exceptions raised by the Tessera client.

Every exception's message is meant for a person: for errors the server reports, it is the
server's ``detail`` (what was wrong and how to fix it).

    TesseraError
    ├── InputError                 the input never left this machine: not an image, a sheet whose
    │                              sides are not multiples of 32, a badly shaped array (also a ValueError)
    ├── TransportError             no usable answer from the server
    │   ├── ConnectError           the server is down or unreachable
    │   ├── RequestTimeoutError    the server took longer than the client's timeout
    │   └── ProtocolError          the server answered something the client cannot read
    └── APIError                   the server answered with an error status (.status, .code, .detail)
        ├── BadRequestError        400: the body could not be decoded
        ├── AuthenticationError    401/403: missing or wrong API key
        ├── NotFoundError          404: unknown model (the message lists the known ones)
        ├── PayloadTooLargeError   413
        ├── UnsupportedMediaError  415
        ├── UnprocessableError     422: bad shape, non-finite values, sheet sides
        ├── UnavailableError       429/503 that outlasted the client's retries (.retry_after)
        │   ├── OverloadedError        overloaded: too much work queued (and any 429)
        │   ├── ShuttingDownError      shutting_down: this instance is draining; another one takes work
        │   ├── NotReadyError          not_ready: the models are still warming up
        │   └── InferenceFailedError   inference_failed: the model call of the request's batch failed
        ├── DeadlineExceededError  504: the server gave up waiting for a batch
        └── ServerError            any other 5xx

The class comes from the server's ``code`` where it sends a known one (every Tessera error
body does), else from the HTTP status. A 503 of an unknown code is an ``UnavailableError``.
"""

from __future__ import annotations

from typing import Any


class TesseraError(Exception):
    """Base class of everything the client raises on purpose."""


class InputError(TesseraError, ValueError):
    """The input is unusable before any request is made."""


class TransportError(TesseraError):
    """No usable answer came back from the server."""


class ConnectError(TransportError):
    """The server could not be reached."""


class RequestTimeoutError(TransportError):
    """The server did not answer within the client's timeout."""


class ProtocolError(TransportError):
    """The server's answer does not follow the Tessera HTTP contract."""


class APIError(TesseraError):
    """The server answered with an error status.

    Attributes:
        status: the HTTP status code.
        code: the server's short snake_case error code ("" when it sent none).
        detail: the server's explanation; also the exception's message.
    """

    def __init__(self, detail: str, *, status: int, code: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.code = code


class BadRequestError(APIError):
    """400: the server could not decode the body."""


class AuthenticationError(APIError):
    """401/403: the API key is missing or wrong."""


class NotFoundError(APIError):
    """404: most often an unknown model name."""


class PayloadTooLargeError(APIError):
    """413: the request was larger than the server accepts."""


class UnsupportedMediaError(APIError):
    """415: the server does not accept the body's media type."""


class UnprocessableError(APIError):
    """422: the body decoded but its content is unusable (shape, values, sheet sides)."""


class UnavailableError(APIError):
    """429/503: the server could not take the request now, and still could not after every retry.

    Attributes:
        retry_after: the seconds the server's last answer asked to wait (None when it said nothing).
    """

    def __init__(self, detail: str, *, status: int, code: str = "", retry_after: float | None = None) -> None:
        super().__init__(detail, status=status, code=code)
        self.retry_after = retry_after


class OverloadedError(UnavailableError):
    """overloaded (or a 429): the server kept shedding load after every retry."""


class ShuttingDownError(UnavailableError):
    """shutting_down: the instance is draining for a restart; another instance (or this one
    once restarted) takes the request."""


class NotReadyError(UnavailableError):
    """not_ready: the server is up but its models are still loading or warming up."""


class InferenceFailedError(UnavailableError):
    """inference_failed: the model call of the request's batch failed (for instance out of
    device memory); nothing was computed."""


class DeadlineExceededError(APIError):
    """504: the server gave up on the request before it was computed."""


class ServerError(APIError):
    """Any other 5xx."""


_BY_CODE: dict[str, type[APIError]] = {
    "undecodable": BadRequestError,
    "unauthorized": AuthenticationError,
    "unknown_model": NotFoundError,
    "not_found": NotFoundError,
    "too_large": PayloadTooLargeError,
    "unsupported_media_type": UnsupportedMediaError,
    "unsupported_encoding": UnsupportedMediaError,
    "overloaded": OverloadedError,
    "shutting_down": ShuttingDownError,
    "not_ready": NotReadyError,
    "inference_failed": InferenceFailedError,
    "deadline_exceeded": DeadlineExceededError,
    "internal_error": ServerError,
}
_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaError,
    422: UnprocessableError,
    429: OverloadedError,
    503: UnavailableError,
    504: DeadlineExceededError,
}


def error_from_response(status: int, body: Any, fallback: str, retry_after: float | None = None) -> APIError:
    """Build the exception for an error answer.

    Args:
        status: the HTTP status code.
        body: the decoded JSON body, or None when it was not JSON.
        fallback: the message to use when the body carries no ``detail``.
        retry_after: the seconds the answer's ``Retry-After`` asked for, if any.
    """
    detail, code = fallback, ""
    if isinstance(body, dict):
        raw = body.get("detail")
        if isinstance(raw, str) and raw:
            detail = raw
        elif raw:  # FastAPI's own validation errors: a list of {"loc", "msg"} objects
            detail = _join_validation_errors(raw)
        code = str(body.get("code") or "")
    cls = _BY_CODE.get(code) or (UnprocessableError if status == 422 else None) or _BY_STATUS.get(status)
    cls = cls or (ServerError if status >= 500 else APIError)
    if issubclass(cls, UnavailableError):
        return cls(detail, status=status, code=code, retry_after=retry_after)
    return cls(detail, status=status, code=code)


def _join_validation_errors(raw: Any) -> str:
    if not isinstance(raw, list):
        return str(raw)
    parts = []
    for item in raw:
        if isinstance(item, dict):
            where = ".".join(str(p) for p in item.get("loc", ()))
            parts.append(f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", "")))
        else:
            parts.append(str(item))
    return "; ".join(parts)
