"""The HTTP protocol: each response's writes leave together, nothing held is lost or reordered."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path

from service import bundle
from service.http import HELD_MAX, OneWriteTransport, unsupported
from tests.service.conftest import Server, copy_store, running_server, telco_records


class Recording(asyncio.Transport):
    """The socket's side of a transport: what reached it, write by write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0


def test_writes_of_one_callback_leave_as_one() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes], list[bytes]]:
        raw = Recording()
        t = OneWriteTransport(raw, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(bytearray(b"body"))
        held = list(raw.writes)  # nothing sent while the callback runs
        await asyncio.sleep(0)
        first = list(raw.writes)
        t.write(b"next")
        await asyncio.sleep(0)
        return held, first, raw.writes

    held, first, after = asyncio.run(scenario())
    assert held == []
    assert first == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    assert after == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"next"]


def test_big_writes_close_and_abort() -> None:
    async def scenario() -> tuple[Recording, Recording]:
        loop = asyncio.get_running_loop()
        raw, dropped = Recording(), Recording()
        t = OneWriteTransport(raw, loop)
        t.write(b"x" * (HELD_MAX - 1))
        t.write(b"yy")  # past the limit: out at once, with what was held
        assert raw.writes == [b"x" * (HELD_MAX - 1) + b"yy"]
        t.writelines([b"a", b"b"])
        t.close()  # what is held goes out before the close
        assert raw.writes[1:] == [b"ab"] and raw.closed
        u = OneWriteTransport(dropped, loop)
        u.write(b"never sent")
        u.abort()
        gone = Recording()
        late = OneWriteTransport(gone, loop)
        late.write(b"held")
        gone.close()  # NOTE: closed underneath it before the callback ended: nothing is written
        await asyncio.sleep(0)
        assert gone.writes == []
        return raw, dropped

    raw, dropped = asyncio.run(scenario())
    assert len(raw.writes) == 2  # the flush scheduled by the first write found nothing left
    assert dropped.writes == [] and dropped.aborted


def _exchange(server: Server, payload: bytes | list[bytes]) -> bytes:
    """Send raw bytes (a list: in separate sends, a moment apart) and read until the server closes."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        for i, piece in enumerate([payload] if isinstance(payload, bytes) else payload):
            if i:
                time.sleep(0.05)  # the server reads them as two chunks
            s.sendall(piece)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _request(body: bytes, close: bool) -> bytes:
    head = b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    return head + b"content-length: %d\r\n%s\r\n" % (len(body), b"connection: close\r\n" if close else b"") + body


def test_pipelined_requests_and_connection_close(churn_server: Server) -> None:
    records = telco_records(3)
    bodies = [json.dumps({"records": [r]}).encode() for r in records]
    # NOTE: three requests in one packet; the last asks to close: every answer, in order, then EOF
    raw = _exchange(churn_server, _request(bodies[0], False) + _request(bodies[1], False) + _request(bodies[2], True))
    answers = raw.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 3, raw
    for answer, record in zip(answers, records, strict=True):
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"200 OK"), answer
        assert json.loads(body)["predictions"][0]["customerID"] == record["customerID"]
    bad = _exchange(churn_server, _request(b'{"records": [}', True))
    assert bad.startswith(b"HTTP/1.1 400") and b"malformed JSON" in bad


def test_a_request_asking_to_upgrade_is_answered_as_http_1_1_with_its_body(churn_server: Server) -> None:
    """An HTTP audit: with `Upgrade: h2c` (curl --http2, Java's RestClient) httptools skipped the body,
    so every POST read as empty ("malformed JSON"), chunked or not (uvicorn#2722)."""
    record = telco_records(1)[0]
    body = json.dumps({"records": [record]}).encode()
    upgrade = (
        b"upgrade: h2c\r\nconnection: Upgrade, HTTP2-Settings, close\r\nhttp2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
    )
    head = b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" + upgrade
    sized = head + b"content-length: %d\r\n\r\n" % len(body) + body
    chunked = head + b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    line, blank = sized.index(b"upgrade:"), sized.index(b"\r\n\r\n") + 3
    # whole, chunked, and in two sends split where the Upgrade line begins or inside the blank line
    # after the head (a diff review: the first was still a 400)
    for payload in (sized, chunked, [sized[:line], sized[line:]], [sized[:blank], sized[blank:]]):
        answer = _exchange(churn_server, payload)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["predictions"][0]["customerID"] == record["customerID"]


def test_only_the_head_loses_its_upgrade_header() -> None:
    from service.http import without_upgrade

    head = b"POST /x HTTP/1.1\r\nUPGRADE: h2c\r\nconnection: upgrade\r\n\r\n"
    body = b'id,note\r\n1,"a\r\nupgrade: kept"\r\n'  # a quoted CSV cell: the body is never touched
    assert without_upgrade(head + body) == head.replace(b"UPGRADE:", b"x-upgrade-ignored:") + body
    rest = b"host: x\r\nUpgrade: h2c\r\n"  # a head's second piece (no end yet): all of it is head
    assert without_upgrade(rest, b"1\r\n") == b"host: x\r\nx-upgrade-ignored: h2c\r\n"
    # a diff review: pieces split where a line or the head ends (the line's start, or the blank line,
    # in the piece before): the header was missed, or the body taken for head and rewritten
    assert without_upgrade(b"Upgrade: h2c\r\n\r\n", b"x\r\n") == b"x-upgrade-ignored: h2c\r\n\r\n"
    assert without_upgrade(b"\nUpgrade: h2c\r\n", b"1\r\n\r") == b"\nUpgrade: h2c\r\n"  # a body
    assert without_upgrade(b"\n" + body, b"h2c\r\n\r") == b"\n" + body
    plain = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"
    assert without_upgrade(plain) is plain


def test_stock_protocol_serves_when_ours_is_turned_off(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    with running_server(store, env={"TABSERVE_HTTP": "stock"}) as server:
        assert "serving with uvicorn's stock h11 protocol (http=stock)" in server.output()
        answer = _exchange(server, _request(json.dumps({"records": telco_records(1)}).encode(), True))
        assert answer.startswith(b"HTTP/1.1 200") and b"server: uvicorn" in answer
        bomb = b"GET /health/live HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 1_000_000  # never ends
        # h11's own bound on an unfinished head: a 400, or the connection reset under the sender
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            assert _exchange(server, bomb).startswith(b"HTTP/1.1 400")
        assert _exchange(server, b"GET /health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").startswith(
            b"HTTP/1.1 200"
        )


def test_protocol_check_accepts_the_installed_uvicorn() -> None:
    assert unsupported() is None


def _half_closed(server: Server, payload: bytes, pause_s: float = 0.0) -> bytes:
    """Send raw bytes, then shut the socket's sending side (as `nc -N` does); read until EOF."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(payload)
        time.sleep(pause_s)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_bytes_that_break_the_parser_are_answered_never_a_silent_close(churn_server: Server) -> None:
    """A broken chunk size in a request's own body: 400 is its answer (it was EOF, no bytes). Bytes past
    a Content-Length that break the parser: the whole request is answered first, then 400 (both lost)."""
    head = b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    broken = _exchange(churn_server, head + b"zz\r\nabc\r\n0\r\n\r\n")
    assert broken.startswith(b"HTTP/1.1 400") and b"connection: close" in broken, broken
    body = json.dumps({"records": telco_records(1)}).encode()
    request = _request(body, False)
    answers = _exchange(churn_server, request + b"\x00\x01 not http\r\n\r\n").split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"400"], answers
    assert json.loads(answers[0].partition(b"\r\n\r\n")[2])["predictions"][0]["customerID"] == "7590-VHVEG"


def test_a_client_that_half_closes_after_its_request_gets_the_answer(churn_server: Server) -> None:
    """HTTP/1.0 scripts and `nc -N` shut their side once the request is sent: the answer still comes."""
    live = _half_closed(churn_server, b"GET /health/live HTTP/1.0\r\n\r\n")
    assert live.startswith(b"HTTP/1.1 200"), live
    body = json.dumps({"records": telco_records(1)}).encode()
    scored = _half_closed(churn_server, _request(body, False))
    assert scored.startswith(b"HTTP/1.1 200") and b"7590-VHVEG" in scored, scored
    # the close arriving as the answer is done (held for the loop's next turn) lost it a few times in 1,000
    pauses = [i * 0.004 / 400 for i in range(400)]
    lost = sum(not _half_closed(churn_server, _request(body, False), p).startswith(b"HTTP/1.1 200") for p in pauses)
    assert lost == 0, f"{lost} of {len(pauses)} answers lost"


def _refused(server: Server) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    scraped = _exchange(server, b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").partition(b"\r\n\r\n")
    families = {f.name: f for f in text_string_to_metric_families(scraped[2].decode())}
    return {s.labels["status"]: s.value for s in families["tabserve_http_refused"].samples if s.name.endswith("_total")}


def test_answers_the_http_layer_gives_itself_are_counted(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """A head over its limit, bytes that are no HTTP and a connection past the limit never reach the app
    (tabserve_requests): they are counted by status, so an overload of connections shows in /metrics."""
    store = copy_store(churn_bundle, tmp_path)
    with running_server(store, "--max-connections", "2") as server:
        assert _refused(server) == {}
        huge = b"GET /health/live HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 40_000 + b"\r\n\r\n"
        assert _exchange(server, huge).startswith(b"HTTP/1.1 431")
        assert _exchange(server, b"\x00\x01 not http\r\n\r\n").startswith(b"HTTP/1.1 400")
        host, port = server.url.removeprefix("http://").split(":")
        with contextlib.ExitStack() as held:
            for _ in range(2):
                held.enter_context(socket.create_connection((host, int(port)), timeout=10))
            time.sleep(0.2)
            with socket.create_connection((host, int(port)), timeout=10) as third:
                assert third.recv(65536).startswith(b"HTTP/1.1 503")
        time.sleep(0.2)  # the held connections close
        # a request whose own body breaks the parser reached the app, which counts it: not counted twice
        head = (
            b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        assert _exchange(server, head + b"zz\r\nabc\r\n0\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert _refused(server) == {"400": 1.0, "431": 1.0, "503": 1.0}
