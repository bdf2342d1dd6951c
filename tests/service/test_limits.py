"""Connection limits against a real server: bounded request heads, timeouts for idle and slow
clients, a connection limit that answers 503, and a shutdown that answers what was sent."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service import bundle
from tests.service.conftest import Server, copy_store, running_server, telco_records

LIMITS = {
    "TABSERVE_MAX_HEADER_BYTES": "16384",
    "TABSERVE_MAX_HEADER_LINE_BYTES": "4096",
    "TABSERVE_HEADER_TIMEOUT_S": "1",
    "TABSERVE_BODY_TIMEOUT_S": "1",
    "TABSERVE_MAX_CONNECTIONS": "8",
}


@pytest.fixture(scope="module")
def limited(churn_bundle: bundle.BundleRef, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with small limits, so that each one is quick to reach."""
    store = copy_store(churn_bundle, tmp_path_factory.mktemp("limits") / "models")
    with running_server(store, env=LIMITS) as server:
        yield server


def connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    try:
        while chunk := s.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def predict_request(body: bytes, *extra: bytes) -> bytes:
    head = b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(body)
    return head + b"".join(extra) + b"\r\n" + body


def test_header_bomb_gets_431_and_others_are_served(limited: Server) -> None:
    with connect(limited) as bomb:
        bomb.sendall(b"GET /health/live HTTP/1.1\r\nhost: x\r\nx-pad: ")
        started, answer = time.monotonic(), b""
        try:
            for _ in range(200):  # up to ~12 MiB of one header, far past the limit
                bomb.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(bomb)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert b"connection: close" in answer.lower()
        assert time.monotonic() - started < 10
    assert httpx.get(limited.url + "/health/live", timeout=5).status_code == 200


def test_many_small_headers_over_the_total_get_431(limited: Server) -> None:
    with connect(limited) as s:
        s.sendall(
            b"GET /health/live HTTP/1.1\r\nhost: x\r\n"
            + b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 1000) for i in range(40))
        )
        assert read_all(s).startswith(b"HTTP/1.1 431 ")


def test_a_head_over_the_limit_in_one_read_gets_431(limited: Server) -> None:
    head = b"GET /health/live HTTP/1.1\r\nhost: x\r\n" + b"".join(
        b"x-h%d: %s\r\n" % (i, b"v" * 3000) for i in range(30)
    )
    with connect(limited) as s:
        s.sendall(head + b"\r\n")  # complete, and small enough to arrive in one read
        assert read_all(s).startswith(b"HTTP/1.1 431 ")


def test_the_next_head_after_an_early_answer_is_bounded(limited: Server) -> None:
    with connect(limited) as s:
        s.sendall(b"POST /nowhere HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n")  # answered before its body
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 404 "), first
        s.sendall(b"12345" + b"GET /health/live HTTP/1.1\r\nhost: x\r\nx-pad: ")
        try:
            for _ in range(40):  # one header line growing past every limit
                s.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert read_all(s).startswith(b"HTTP/1.1 431 ")


def test_long_header_line_gets_431_and_long_url_414(limited: Server) -> None:
    with connect(limited) as s:
        s.sendall(b"GET /health/live HTTP/1.1\r\nhost: x\r\nx-long: " + b"v" * 5000 + b"\r\n\r\n")
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 431 ") and b"x-long" in answer
    with connect(limited) as s:
        s.sendall(b"GET /health/live?" + b"q" * 5000 + b" HTTP/1.1\r\nhost: x\r\n\r\n")
        assert read_all(s).startswith(b"HTTP/1.1 414 ")


def test_idle_connection_is_closed_after_the_header_timeout(limited: Server) -> None:
    with connect(limited) as s:
        started = time.monotonic()
        assert read_all(s) == b""  # closed without a word: nothing was asked
        assert time.monotonic() - started < 8  # the 1 s timeout, a sweep, and room for a loaded machine


def test_slow_head_gets_408(limited: Server) -> None:
    with connect(limited) as s:
        started = time.monotonic()
        s.sendall(b"GET /health/live HTTP/1.1\r\n")
        try:
            for _ in range(20):  # one header byte every 0.25 s: each arrives well within any read timeout
                s.sendall(b"x")
                time.sleep(0.25)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert time.monotonic() - started < 8  # the 1 s timeout, a sweep, and room for a loaded machine


def test_stalled_body_is_cut(limited: Server) -> None:
    body = json.dumps({"records": telco_records(1)}).encode()
    with connect(limited) as s:
        started = time.monotonic()
        s.sendall(predict_request(body)[: -len(body) // 2])  # half the body, then nothing
        answer = read_all(s)
    assert not answer.startswith(b"HTTP/1.1 200")
    assert time.monotonic() - started < 8  # the 1 s timeout, a sweep, and room for a loaded machine


def test_connections_over_the_limit_get_503(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    # a server of its own whose idle connections are not closed within a stall of this test's
    store = copy_store(churn_bundle, tmp_path / "models")
    with running_server(store, env={**LIMITS, "TABSERVE_HEADER_TIMEOUT_S": "30"}) as server:
        held = [connect(server) for _ in range(8)]
        try:
            with connect(server) as extra:
                extra.sendall(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
                answer = read_all(extra)
            assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
            assert b"retry-after: 1" in answer.lower()
        finally:
            for s in held:
                s.close()
        deadline = time.monotonic() + 10  # until the server notices the closed connections
        while httpx.get(server.url + "/health/live", timeout=5).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)


class Client(threading.Thread):
    """A keep-alive client sending predict requests back to back until the server closes."""

    def __init__(self, server: Server, body: bytes) -> None:
        super().__init__(daemon=True)
        self.server, self.request = server, predict_request(body)
        self.sent = self.answered = 0
        self.closes = 0  # answers that said Connection: close

    def run(self) -> None:
        s = connect(self.server)
        buffer = b""
        try:
            while True:
                s.sendall(self.request)
                self.sent += 1
                while b"\r\n\r\n" not in buffer:
                    chunk = s.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(buffer) < length:
                    chunk = s.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                buffer = buffer[length:]
                self.answered += 1
                if b"connection: close" in head.lower():
                    self.closes += 1
                    return  # as HTTP clients do: the connection is not used again
        except OSError:
            return
        finally:
            s.close()


def test_sigterm_under_load_answers_every_request_sent(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    body = json.dumps({"records": telco_records(1)}).encode()
    with running_server(store) as server:
        clients = [Client(server, body) for _ in range(16)]
        for c in clients:
            c.start()
        deadline = time.monotonic() + 60
        while sum(c.answered for c in clients) < 200:  # a count, not a fixed sleep: a loaded machine is slower
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.05)
        server.proc.send_signal(signal.SIGTERM)
        for c in clients:
            c.join(timeout=20)
        assert server.proc.wait(timeout=20) in (0, -signal.SIGTERM)  # uvicorn exits by the signal it got
    sent, answered = sum(c.sent for c in clients), sum(c.answered for c in clients)
    assert sent > 100
    assert answered == sent, f"{sent - answered} of {sent} requests got no answer"
    assert sum(c.closes for c in clients) == len(clients)  # each heard Connection: close on its last answer
