"""Limits on the HTTP layer that uvicorn itself does not enforce with its httptools parser.

uvicorn reads a request head of any size, and waits forever for a head or a body that does not
arrive. A client could therefore send a 64 MB header line, or hold connections open by sending
nothing, or a body at one byte a second. ``guarded_protocol(limits)`` returns uvicorn's
httptools protocol with three limits added, all per connection:

- the request head (request line and headers) may hold at most ``max_header_bytes``: beyond,
  431 and the connection is closed, before the parser has buffered more;
- the head must arrive within ``header_timeout_s`` of the connection opening, or of the first
  byte after a previous answer; an idle new connection is closed when it expires, a
  half-sent head gets 408;
- the body must arrive within ``body_timeout_s`` of the head: else 408 and the connection closes.
  The app sees the client as gone, so the request's upload slot is freed;
- from ``body_grace_s`` after the head on, the body must have arrived at ``min_body_bytes_per_s``
  on average (checked every ``RATE_CHECK_S``): a client that trickles its body is dropped in
  seconds, not at the body timeout, so stalled uploads cannot pile up (408, connection closed).

Idle keep-alive connections between requests are closed by uvicorn's own ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
RATE_CHECK_S = 1.0  # how often a body's average rate is checked once its grace period is over


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    min_body_bytes_per_s: int = 0  # 0: no minimum
    body_grace_s: float = 2.0


def guarded_protocol(limits: HttpLimits) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with ``limits`` (pass it as ``uvicorn.Config(http=...)``)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: HttpLimits

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between requests or reading a head
        self._head_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._events = 0  # heads and messages completed on this connection
        self._rate_timer: asyncio.TimerHandle | None = None
        self._body_started = 0.0  # loop time the current body began (its head ended)
        self._body_bytes = 0  # of the current body, so far

    # -- timers

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._rate_timer is not None:
            self._rate_timer.cancel()
            self._rate_timer = None

    def _check_rate(self) -> None:
        self._rate_timer = None
        if self.transport is None or self.transport.is_closing():
            return
        rate = self._body_bytes / max(1e-9, self.loop.time() - self._body_started)
        if rate < self.limits.min_body_bytes_per_s:
            self._refuse(408, f"the request body arrived at {rate:.0f} bytes/s, under the minimum of "
                              f"{self.limits.min_body_bytes_per_s} bytes/s; send it at once")
            return
        self._rate_timer = self.loop.call_later(RATE_CHECK_S, self._check_rate)

    def _expired(self, what: str) -> None:
        self._timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if what == "head" and self._head_bytes == 0:
            self.transport.close()  # an idle connection: nobody to answer
            return
        seconds = self.limits.header_timeout_s if what == "head" else self.limits.body_timeout_s
        self._refuse(408, f"the request {what} did not arrive within {seconds:g} s; send it at once")

    def _refuse(self, status: int, detail: str) -> None:
        """Answer ``status`` with a JSON error (unless an answer has begun) and close."""
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()
            return
        code = {408: "request_timeout", 431: "header_too_large"}[status]
        body = json.dumps({"detail": detail, "code": code}).encode()
        head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                % (status, REASONS[status], len(body)))
        if self.cycle is not None:
            self.cycle.response_complete = True  # the app's own answer, if it comes, is dropped
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.write(head + body)
        self.transport.close()

    # -- protocol events

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_s, "head")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head and self._timer is None:
            self._arm(self.limits.header_timeout_s, "head")
        events = self._events
        super().data_received(data)
        # a read that ended no head or message and left us in a head is all head: count it (a
        # read is at most 256 KiB, so the parser never holds much more than the limit). A read
        # that finished a request may start the next head too; it is not counted.
        if self._in_head and self._events == events and self.parser is not None and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(431, f"the request head exceeds {self.limits.max_header_bytes} bytes")

    def on_headers_complete(self) -> None:
        self._events += 1
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()
        chunked = any(name == b"transfer-encoding" for name, _ in self.headers)
        length = next((value for name, value in self.headers if name == b"content-length"), b"0")
        if chunked or length.strip() not in (b"", b"0"):
            self._arm(self.limits.body_timeout_s, "body")
            self._body_started, self._body_bytes = self.loop.time(), 0
            if self.limits.min_body_bytes_per_s:
                self._rate_timer = self.loop.call_later(self.limits.body_grace_s, self._check_rate)
        else:
            self._disarm()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._events += 1
        self._disarm()
        self._in_head = True  # what follows is the next request's head
        self._head_bytes = 0
        super().on_message_complete()
