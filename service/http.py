"""uvicorn's httptools protocol, with each response's writes sent in one piece.

uvicorn writes a response's status line and headers, then its body, as two `transport.write`
calls, and uvloop sends each at once: two `send` system calls on the socket, and the client is
woken twice, for a response of a few hundred bytes. Here the connection's transport holds the
writes made while one callback of the event loop runs and sends them together in a callback of
its own (`call_soon`), so the head and body of an answer leave in one system call. Held writes
go out at the loop's next turn, which does not block for I/O while a callback is ready; a write
that brings what is held to 64 KiB goes out at once, and closing the connection sends what is
held first.

NOTE: measured with `bench/compare.py` (wrk, 64 connections): see BENCHMARKS.md.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HELD_MAX = 64 * 1024  # bytes held before they go out without waiting for the callback to end


class OneWriteTransport:
    """A transport that sends the writes of one event-loop callback as one write."""

    __slots__ = ("_held", "_loop", "_size", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._held: list[bytes] | None = None
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hold `data` for the loop's next turn (or send it with what is held, once that is enough)."""
        if self._held is None:
            self._held, self._size = [bytes(data)], len(data)
            self._loop.call_soon(self.flush)
        else:
            self._held.append(bytes(data))
            self._size += len(data)
        if self._size >= HELD_MAX:
            self.flush()

    def writelines(self, lines: Any) -> None:
        """As `write`, for several buffers."""
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what is held, as one write."""
        held, self._held = self._held, None
        if held and not self._transport.is_closing():  # NOTE: closed meanwhile: as the transport would, drop it
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        """Send what is held, then close."""
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        """Send what is held, then half-close."""
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        """Drop what is held and the connection."""
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        """Whether the connection is closing (asked once per response: no `__getattr__` detour)."""
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        """Bytes not yet sent, held here or in the transport."""
        return self._transport.get_write_buffer_size() + (self._size if self._held else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a `OneWriteTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(OneWriteTransport(transport, self.loop))  # type: ignore[arg-type]
