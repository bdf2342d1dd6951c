"""uvicorn's httptools protocol with one write per response and the limits a public server needs.

It subclasses uvicorn internals, which `unsupported` checks at start (docs/design.md).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import orjson

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    MOVED = False
except ImportError:  # a uvicorn that moved its implementation: `protocol_for` serves with the stock one
    HttpToolsProtocol = asyncio.Protocol  # type: ignore[misc, assignment]
    MOVED = True

HELD_MAX = 64 * 1024  # bytes held before they go out without waiting for the callback to end
SWEEP_S = 0.5  # how often deadlines are checked: one timer per process, not one per request
LINGER_S = 1.0  # after a refusal, unread input is drained this long so the client can read the answer
DRAIN_IDLE_S = 1.0  # on shutdown, an idle connection waits this long for a request already on its way
log = logging.getLogger("tabserve")


class OneWriteTransport:
    """Sends the writes of one event-loop callback as one write, at the loop's next turn."""

    __slots__ = ("_held", "_loop", "_size", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._held: list[bytes] | None = None
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is None:
            self._held, self._size = [bytes(data)], len(data)
            self._loop.call_soon(self.flush)
        else:
            self._held.append(bytes(data))
            self._size += len(data)
        if self._size >= HELD_MAX:
            self.flush()

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held and not self._transport.is_closing():  # closed meanwhile: as the transport would, drop it
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:  # not left to __getattr__: asked once per response
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + (self._size if self._held else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@dataclass(frozen=True)
class Limits:
    """What one connection may take (reasons: service/settings.py)."""

    max_header_bytes: int = 32 * 1024
    max_header_line_bytes: int = 8 * 1024
    max_connections: int = 2048
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    @classmethod
    def of(cls, settings: Any) -> Limits:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


class Refused(Exception):
    """A head over a limit: raised in a parser callback, answered by `_refuse`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


WAITING, HEAD, BODY, BUSY, CLOSING = range(5)  # where a connection is, for its deadline


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a `OneWriteTransport`, with limits and deadlines."""

    limits: ClassVar[Limits] = Limits()
    refused: ClassVar[Counter[int]] = Counter()  # answers by status `_refuse` wrote in this process (/metrics)
    _sweeps: ClassVar[dict[int, asyncio.TimerHandle]] = {}  # one per server (its set of connections)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._state, self._deadline = WAITING, 0.0
        self._head_bytes = self._chunk = 0
        self._refusal: Refused | None = None
        self._deferred: Refused | None = None  # garbage after a whole request: refused once that one is answered
        self._draining = False
        self._head_tail = b""  # the last bytes of a head that goes on in the next chunk

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(OneWriteTransport(transport, self.loop))  # type: ignore[arg-type]
        self._start_sweeping()
        if len(self.connections) > self.limits.max_connections:
            self._refuse(Refused(503, "too many open connections; retry shortly"))
            return
        self._wait_for_request()

    def data_received(self, data: bytes) -> None:
        if self._state == CLOSING or self._deferred is not None:
            return  # a refused connection's input is read and dropped until it closes
        if self._state in (WAITING, HEAD):  # (a request pipelined behind another keeps its Upgrade)
            data = without_upgrade(data, self._head_tail if self._state == HEAD else b"")
            self._head_tail = data[-3:]
        self._chunk = len(data)
        super().data_received(data)
        if self._state == HEAD:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                limit = self.limits.max_header_bytes
                self._refuse(Refused(431, f"request head over the {limit}-byte limit"))
        elif self._state == BODY:
            self._deadline = self.loop.time() + self.limits.body_timeout_s

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parse error, or ours when a callback refused the head."""
        refusal, self._refusal = self._refusal, None
        self._refuse(refusal or Refused(400, msg))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._state != WAITING:  # pipelined, or after an early answer: its own time for the head
            self._deadline = self.loop.time() + self.limits.header_timeout_s
        self._state, self._head_bytes = HEAD, 0

    def on_headers_complete(self) -> None:
        # a head smaller than one line's limit needs no check: most requests skip it
        if self._head_bytes + self._chunk > self.limits.max_header_line_bytes:
            self._check_head()
        super().on_headers_complete()
        self._state = BODY
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered, with Connection: close, then closed

    def _check_head(self) -> None:
        """431/414 for a head, header line or URL over its limit; a head read at once is measured only here."""
        line = self.limits.max_header_line_bytes
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._refusal = Refused(431, f"request head over the {self.limits.max_header_bytes}-byte limit")
        elif len(self.url) > line:
            self._refusal = Refused(414, f"URL over the {line}-byte limit")
        for name, value in self.headers:
            if self._refusal is None and len(name) + len(value) > line:
                self._refusal = Refused(431, f"header {name[:64]!r} over the {line}-byte limit for one line")
        if self._refusal is not None:
            raise self._refusal

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.cycle is not None and self.cycle.response_complete:  # answered before its body ended
            self._wait_for_request()
        else:
            self._state = BUSY

    def on_response_complete(self) -> None:
        idle = self._state == BUSY and not self.pipeline  # (uvicorn starts the next pipelined request)
        super().on_response_complete()
        if self._deferred is not None and self.cycle is not None and self.cycle.response_complete:
            refusal, self._deferred = self._deferred, None  # every whole request before it is answered
            self._refuse(refusal)
        elif idle and not self.transport.is_closing():
            self._wait_for_request()

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio's: True keeps writing
        """A client that half-closes after its request (`nc -N`, HTTP/1.0 scripts) still gets its
        answer: the socket stays open for writing until it is sent, then closes."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            return True
        # asyncio closes the socket itself on None: an answer held for the loop's next turn goes out first
        self.transport.flush()  # type: ignore[attr-defined]  # a OneWriteTransport (connection_made)
        return None

    def shutdown(self) -> None:
        """Drain: answer what was sent (with Connection: close), then close idle connections."""
        self._draining = True
        if self._state in (WAITING, HEAD):
            self._deadline = min(self._deadline, self.loop.time() + DRAIN_IDLE_S)
        elif self.cycle is not None:
            self.cycle.keep_alive = False

    def _wait_for_request(self) -> None:
        self._state, self._head_bytes = WAITING, 0
        self._deadline = self.loop.time() + (DRAIN_IDLE_S if self._draining else self.limits.header_timeout_s)

    def _refuse(self, refusal: Refused) -> None:
        """Answer the refusal, then half-close (the sweep closes after LINGER_S) or close. Bytes that
        break the parser after a whole request wait for its answer; a request whose own body breaks
        it gets the refusal as its answer (the app's goes nowhere)."""
        cycle = self.cycle
        answer = unseen = cycle is None or cycle.response_complete
        if cycle is not None and not answer:
            if not cycle.more_body and not self.transport.is_closing():  # whole, being answered
                self._deferred = refusal
                return
            if not cycle.response_started:
                cycle.disconnected = True  # its receive() says so; its send() writes nothing
                cycle.message_event.set()
                answer = True
        if answer:
            if unseen:  # a request whose own body broke the parser is the app's to count
                HttpProtocol.refused[refusal.status] += 1
            body = orjson.dumps({"error": str(refusal)})
            retry = b"retry-after: 1\r\n" if refusal.status == 503 else b""
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%sconnection: close\r\n\r\n%s"
                % (refusal.status, HTTPStatus(refusal.status).phrase.encode(), len(body), retry, body)
            )
        self._state, self._deadline = CLOSING, self.loop.time() + LINGER_S
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()

    def _check_deadline(self, now: float) -> None:
        if now < self._deadline or self._state == BUSY or self._deferred is not None or self.transport.is_closing():
            return
        if self._state in (WAITING, HEAD) and self.cycle is not None and not self.cycle.response_complete:
            return  # the server is still answering the request before: the head's time starts after it
        if self._state == BODY and self.flow.read_paused:  # the app is not reading: not the client's fault
            self._deadline = now + self.limits.body_timeout_s
        elif self._state == HEAD and not self._draining:
            self._refuse(Refused(408, f"request head not received within {self.limits.header_timeout_s} s"))
        else:
            self.transport.close()

    def _start_sweeping(self) -> None:
        if id(self.connections) not in HttpProtocol._sweeps:
            HttpProtocol._sweeps[id(self.connections)] = self.loop.call_later(
                SWEEP_S, _sweep, self.loop, self.connections
            )


_UPGRADE = re.compile(rb"\r\nupgrade:", re.IGNORECASE)
_NAME = len(b"\r\n")  # where the header's name starts in a match


def without_upgrade(data: bytes, before: bytes = b"") -> bytes:
    """A head's `Upgrade` header renamed `X-Upgrade-Ignored`. Nothing here upgrades (no HTTP/2, no
    WebSocket), and httptools skips the body of a request asking to: `curl --http2` and Java's
    RestClient (`Upgrade: h2c`) had every POST read as empty (uvicorn#2722). `data` is where a head
    begins or goes on; `before`, the last bytes of the head so far, tells a line or the head's end
    that began in the chunk before. Only the head is looked at, up to its blank line."""
    text = before + data
    end = text.find(b"\r\n\r\n")
    found = [m.start() + _NAME - len(before) for m in _UPGRADE.finditer(text, 0, len(text) if end < 0 else end)]
    if not found:
        return data
    parts, at = [], 0
    for name in (n for n in found if n >= 0):
        parts += [data[at:name], b"x-upgrade-ignored:"]
        at = name + len(b"upgrade:")
    return b"".join([*parts, data[at:]])


def _sweep(loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
    now = loop.time()
    for connection in list(connections):
        if isinstance(connection, HttpProtocol):
            connection._check_deadline(now)
    if connections:
        HttpProtocol._sweeps[id(connections)] = loop.call_later(SWEEP_S, _sweep, loop, connections)
    else:
        del HttpProtocol._sweeps[id(connections)]


def configure(settings: Any) -> None:
    """Set the connection limits (once per process)."""
    HttpProtocol.limits = Limits.of(settings)


# What HttpProtocol takes from uvicorn's implementation module beyond the asyncio protocol.
USED: tuple[str, ...] = ("data_received", "send_400_response", "shutdown", "on_message_begin")
USED += ("on_headers_complete", "on_message_complete", "on_response_complete")


def unsupported() -> str | None:
    """Why HttpProtocol cannot run on this uvicorn (None: it can)."""
    if MOVED:
        return "uvicorn.protocols.http.httptools_impl.HttpToolsProtocol is gone"
    missing = [name for name in USED if not callable(getattr(HttpToolsProtocol, name, None))]
    if missing:
        return f"uvicorn's HttpToolsProtocol lacks {', '.join(missing)}"
    from uvicorn.protocols.http.flow_control import FlowControl
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    if "keep_alive" not in inspect.signature(RequestResponseCycle.__init__).parameters:
        return "uvicorn's RequestResponseCycle takes no keep_alive"
    if not hasattr(FlowControl(None), "read_paused"):  # type: ignore[arg-type]
        return "uvicorn's FlowControl keeps no read_paused"
    return None


def protocol_for(settings: Any) -> tuple[type[asyncio.Protocol] | str, dict[str, Any]]:
    """Our protocol, or uvicorn's h11 when ours cannot run; with its uvicorn options."""
    reason = "http=stock" if settings.http == "stock" else unsupported()
    if reason is None:
        configure(settings)
        return HttpProtocol, {}
    log.warning("serving with uvicorn's stock h11 protocol (%s): no connection limit or head timeouts", reason)
    return "h11", {"h11_max_incomplete_event_size": settings.max_header_bytes}
