"""Abuse benchmark: does `tabserve serve` stay up, answer every request and keep its memory flat
under overload, slow clients, a header bomb, gzip bombs and a mixed soak with a hot reload?

    python bench/abuse.py                        # six scenarios, ~20 s each, under ~3 min
    python bench/abuse.py --seconds 5            # a quick check
    python bench/abuse.py --models DIR           # reuse the churn bundle in DIR (else one is trained)
    python bench/abuse.py --only overload,soak   # some scenarios

Each scenario runs against a freshly started `tabserve serve` process (1 worker, ONNX Runtime
threads = 1, its own copy of the bundle), so its memory figures are its own. Without --models the
bundle is trained with one member (`--ensemble 1`, quicker), not the default three. Every
connection goes to 127.0.0.1; the clients are asyncio connections (uvloop) writing HTTP/1.1 by
hand, in this one process. Every loop ends at the scenario's deadline (in-flight requests get the client timeout).

  overload      ~1,000 keep-alive connections sending single-record predicts back to back, --max-queue 64
  slow-clients  idle connections, slowloris heads, slow and stalled bodies beside 16 normal clients,
                header and body timeouts of 2 s
  idle-flood    up to 15,000 idle connections at once beside 16 normal clients (server defaults)
  header-bomb   20 connections sending one endless header line (up to 200 MB each) beside 16 normal clients
  gzip-bomb     4 gzip CSV uploads inflating to ~1 GB each (valid rows; zeros without a newline)
                beside 16 normal clients
  soak          64 clients: 1- and 100-record predicts, V2 infer, malformed JSON, a bad field,
                and the next version published half-way (hot reload)

Per scenario one Markdown row: the well-behaved clients' requests sent (not the uploads: the notes
count those), their answers by status, their requests with no answer (reset or closed before a
whole response, or none within --timeout), the server's RSS idle (after start and a warm-up
request) and at its peak (VmRSS every 50 ms), and notes on the hostile connections (what the
server answered, how many it closed and after how long). The summary checks three requirements:
no 5xx other than 503/504 (hostile connections' answers included); no request without an answer
(uploads included; hostile connections are expected to be cut); peak RSS under 2x idle in every
scenario; where the soak ran, a fourth: version 2 answered (the store is polled every 2 s: a soak
of a few seconds may end before it). The exit status is 0 either way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from serve import ROOT, TELCO, free_port, rss_mb, telco_body, v2_body

HOST = "127.0.0.1"  # loopback only: every connection this script opens goes here
NORMAL_CLIENTS = 16  # well-behaved keep-alive clients beside each attack
MAX_PER_CLIENT = 10_000_000  # requests one client sends at most (the deadline ends it long before)
BROKEN = (OSError, EOFError, TimeoutError, ValueError, asyncio.LimitOverrunError)  # no whole answer
VERSION = re.compile(rb'"(?:model_)?version":\s*"?(\d+)')  # predict and V2 answers name the version


@dataclass
class Tally:
    """What well-behaved requests of one kind got back."""

    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    no_answer: int = 0
    max_latency_s: float = 0.0
    versions: Counter[int] = field(default_factory=Counter)

    def answered(self, status: int, latency_s: float, body: bytes) -> None:
        """Count one whole answer."""
        self.statuses[status] += 1
        self.max_latency_s = max(self.max_latency_s, latency_s)
        if status == 200 and (found := VERSION.search(body, 0, 200)):
            self.versions[int(found.group(1))] += 1


@dataclass
class Cut:
    """Hostile connections of one kind, and what the server did with them."""

    kind: str
    opened: int = 0
    refused: int = 0  # connections that could not be opened
    after_s: list[float] = field(default_factory=list)  # connect → the server's answer or close
    statuses: Counter[int] = field(default_factory=Counter)  # answers sent before closing
    silent: int = 0  # closed or reset with no answer
    max_sent: int = 0  # most bytes one connection sent

    def ended(self, seconds: float, first: bytes | None) -> None:
        """The server answered (`first`: its first bytes) or closed the connection."""
        self.after_s.append(seconds)
        if first and first.startswith(b"HTTP/1.") and first[9:12].isdigit():
            self.statuses[int(first[9:12])] += 1
        else:
            self.silent += 1

    def note(self) -> str:
        """One line: how many were cut, when, and how."""
        text = f"{self.kind}: {len(self.after_s)}/{self.opened} cut"
        if self.after_s:
            how = [by_status(self.statuses)] if self.statuses else []
            how += [f"{self.silent} closed without answer"] if self.silent else []
            text += f" in {min(self.after_s):.1f}–{max(self.after_s):.1f} s ({', '.join(how)})"
        if self.max_sent > 1 << 20:
            text += f", up to {self.max_sent / 2**20:,.0f} MiB written"
        return text + (f", {self.refused} refused" if self.refused else "")


@dataclass
class Outcome:
    """A scenario's result: its well-behaved requests, and notes on the rest."""

    requests: Tally
    notes: list[str]
    uploads: Tally | None = None  # gzip-bomb: uploads must be answered too
    cuts: list[Cut] = field(default_factory=list)  # hostile connections: only their statuses are checked
    reloaded: bool | None = None  # soak: whether the version published half-way answered


@dataclass
class Context:
    """What every scenario gets: the command line's settings and the requests, built once."""

    seconds: float
    timeout: float
    conns: int
    upload_timeout: float
    single: bytes  # a whole single-record POST /predict
    hundred: bytes
    v2: bytes
    malformed: bytes
    bad_field: bytes
    bomb_mb: int  # what each gzip bomb inflates to
    bombs: list[bytes]  # gzip-bomb upload bodies: rows, zeros
    store: Path = Path()  # the scenario's own model store (soak publishes into it)


def clients_note(n: int, tally: Tally, seconds: float) -> str:
    """`16 clients, 2,345 req/s, max latency 12 ms`."""
    latency = tally.max_latency_s * 1000
    return f"{n} clients, {tally.sent / seconds:,.0f} req/s, max latency {latency:,.0f} ms"


def by_status(statuses: Counter[int]) -> str:
    """`200: 12,345, 503: 20`."""
    return ", ".join(f"{status}: {n:,}" for status, n in sorted(statuses.items())) or "none"


# --- HTTP/1.1 by hand -------------------------------------------------------------------------


def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """An HTTP/1.1 request, head and body, as it goes on the wire."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def post_json(path: str, body: str | bytes) -> bytes:
    """A JSON POST."""
    data = body.encode() if isinstance(body, str) else body
    return request("POST", path, data, {"Content-Type": "application/json"})


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """Status, whether the server closes the connection after it, and the body (a chunked body
    is read whole and dropped); an incomplete answer raises."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = dict(_header(line) for line in lines[1:] if line)
    close = headers.get(b"connection", b"").lower() == b"close"
    if b"content-length" in headers:
        return status, close, await reader.readexactly(int(headers[b"content-length"]))
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        await _read_chunked(reader)
        return status, close, b""
    while await reader.read(1 << 16):  # NOTE: no length: the body ends when the connection does
        pass
    return status, True, b""


def _header(line: bytes) -> tuple[bytes, bytes]:
    name, _, value = line.partition(b":")
    return name.strip().lower(), value.strip()


async def _read_chunked(reader: asyncio.StreamReader) -> None:
    while size := int((await reader.readline()).split(b";")[0], 16):  # ValueError at EOF: cut short
        await reader.readexactly(size + 2)
    while (await reader.readline()) not in (b"\r\n", b""):  # trailers
        pass


def _close(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
    if conn:
        conn[1].close()


# --- clients ------------------------------------------------------------------------------------


async def client(port: int, requests: Iterator[bytes], tally: Tally, deadline: float, timeout: float) -> None:
    """One keep-alive client: requests back to back until the deadline, on a new connection
    whenever the server closes one (`Connection: close`, or a failure counted as no answer)."""
    conn = None
    for req in itertools.islice(requests, MAX_PER_CLIENT):
        if time.monotonic() >= deadline:
            break
        tally.sent += 1
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                conn = conn or await asyncio.open_connection(HOST, port)
                conn[1].write(req)
                status, close, body = await read_response(conn[0])
        except BROKEN:
            tally.no_answer += 1
            _close(conn)
            conn = None
            await asyncio.sleep(0.05)  # NOTE: a dead server is not hammered in a tight loop
            continue
        tally.answered(status, time.monotonic() - started, body)
        if close:
            _close(conn)
            conn = None
    _close(conn)


def normal_clients(
    port: int, ctx: Context, tally: Tally, deadline: float, n: int = NORMAL_CLIENTS
) -> list[Coroutine[Any, Any, None]]:
    """`n` clients sending single-record predicts."""
    return [client(port, itertools.repeat(ctx.single), tally, deadline, ctx.timeout) for _ in range(n)]


async def attack(port: int, pieces: Iterable[bytes], interval: float, deadline: float, cut: Cut) -> None:
    """One hostile connection: `pieces` written one at a time, `interval` s apart, until the
    server answers or closes it, or the deadline passes; `cut` records what the server did."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        cut.refused += 1
        return
    cut.opened += 1
    opened = time.monotonic()
    sender = asyncio.ensure_future(_send(writer, pieces, interval, cut))
    try:
        async with asyncio.timeout(max(0.0, deadline - opened)):
            first: bytes | None = await reader.read(4096)  # the answer's start, or b"" when closed
        cut.ended(time.monotonic() - opened, first)
    except TimeoutError:
        pass  # still open at the deadline
    except OSError:
        cut.ended(time.monotonic() - opened, None)  # reset
    finally:
        sender.cancel()
        writer.close()


async def _send(writer: asyncio.StreamWriter, pieces: Iterable[bytes], interval: float, cut: Cut) -> None:
    sent = 0
    with contextlib.suppress(OSError):
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            sent += len(piece)
            cut.max_sent = max(cut.max_sent, sent)
            if interval:
                await asyncio.sleep(interval)


async def upload(port: int, body: bytes, tally: Tally, timeout: float) -> int | None:
    """One gzip CSV upload, its whole answer read; the status, or None for no whole answer."""
    headers = {"Content-Type": "text/csv", "Content-Encoding": "gzip"}
    tally.sent += 1
    started, conn = time.monotonic(), None
    try:
        async with asyncio.timeout(timeout):
            conn = await asyncio.open_connection(HOST, port)
            conn[1].write(request("POST", "/models/churn/score", body, headers))
            status, _, _ = await read_response(conn[0])
    except BROKEN:
        tally.no_answer += 1
        return None
    finally:
        _close(conn)
    tally.answered(status, time.monotonic() - started, b"")
    return status


async def uploader(port: int, body: bytes, tally: Tally, deadline: float, timeout: float) -> None:
    """Uploads one after another until the deadline."""
    while time.monotonic() < deadline:
        if await upload(port, body, tally, timeout) != 200:
            await asyncio.sleep(0.5)  # NOTE: a refused upload is retried after a pause, as Retry-After asks


# --- scenarios ----------------------------------------------------------------------------------


async def overload(port: int, ctx: Context) -> Outcome:
    """~1,000 keep-alive connections sending single-record predicts back to back."""
    tally, deadline = Tally(), time.monotonic() + ctx.seconds
    await asyncio.gather(*normal_clients(port, ctx, tally, deadline, ctx.conns))
    return Outcome(tally, [clients_note(ctx.conns, tally, ctx.seconds)])


async def slow_clients(port: int, ctx: Context) -> Outcome:
    """Idle, slowloris, slow-body and stalled-body connections beside 16 normal clients."""
    tally, deadline = Tally(), time.monotonic() + ctx.seconds
    head, _, body = ctx.single.partition(b"\r\n\r\n")
    head += b"\r\n\r\n"
    # NOTE: a head that cannot end before the deadline at one byte per 0.5 s
    loris = head[: head.index(b"\r\n") + 2] + b"X-Slow: " + b"a" * int(ctx.seconds * 2 + 10)
    cuts = [Cut("idle"), Cut("slowloris"), Cut("slow body"), Cut("stalled body")]
    attacks = [attack(port, [], 0, deadline, cuts[0]) for _ in range(300)]
    attacks += [attack(port, _bytes(loris), 0.5, deadline, cuts[1]) for _ in range(100)]
    attacks += [attack(port, [head, *_bytes(body)], 0.5, deadline, cuts[2]) for _ in range(25)]
    attacks += [attack(port, [head, body[:10]], 0, deadline, cuts[3]) for _ in range(25)]
    await asyncio.gather(*attacks, *normal_clients(port, ctx, tally, deadline))
    notes = [clients_note(NORMAL_CLIENTS, tally, ctx.seconds), *(c.note() for c in cuts)]
    return Outcome(tally, notes, cuts=cuts)


async def idle_flood(port: int, ctx: Context) -> Outcome:
    """Up to 15,000 idle connections at once beside 16 normal clients: the server holds
    max_connections of them, answers the others 503, and closes the idle ones at its header timeout."""
    tally, deadline = Tally(), time.monotonic() + ctx.seconds
    n = min(15_000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1_000)
    cut = Cut(f"{n:,} idle")
    await asyncio.gather(
        *(attack(port, [], 0, deadline, cut) for _ in range(n)), *normal_clients(port, ctx, tally, deadline)
    )
    return Outcome(tally, [clients_note(NORMAL_CLIENTS, tally, ctx.seconds), cut.note()], cuts=[cut])


def _bytes(data: bytes) -> Iterator[bytes]:
    return (data[i : i + 1] for i in range(len(data)))


async def header_bomb(port: int, ctx: Context) -> Outcome:
    """20 connections each sending one header line that never ends, beside 16 normal clients."""
    tally, deadline = Tally(), time.monotonic() + ctx.seconds
    head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Pad: "
    pad = b"a" * (1 << 16)  # one write
    bombs = Cut("header bombs")
    attacks = [
        attack(port, [head, *itertools.repeat(pad, (200 << 20) // len(pad))], 0, deadline, bombs) for _ in range(20)
    ]
    await asyncio.gather(*attacks, *normal_clients(port, ctx, tally, deadline))
    notes = [clients_note(NORMAL_CLIENTS, tally, ctx.seconds), bombs.note()]
    return Outcome(tally, notes, cuts=[bombs])


async def gzip_bomb(port: int, ctx: Context) -> Outcome:
    """4 gzip CSV uploads that inflate to ~1 GB (two of valid rows, two of zeros without a
    newline), over and over, beside 16 normal clients."""
    tally, uploads, deadline = Tally(), Tally(), time.monotonic() + ctx.seconds
    bodies = [ctx.bombs[i % len(ctx.bombs)] for i in range(4)]
    loaders = [uploader(port, body, uploads, deadline, ctx.upload_timeout) for body in bodies]
    await asyncio.gather(*loaders, *normal_clients(port, ctx, tally, deadline))
    notes = [
        clients_note(NORMAL_CLIENTS, tally, ctx.seconds),
        f"uploads (gzip of {ctx.bomb_mb:,} MiB: rows {len(ctx.bombs[0]) / 2**20:.1f} MiB, "
        f"zeros {len(ctx.bombs[1]) / 2**20:.1f} MiB): {uploads.sent} sent, "
        f"{by_status(uploads.statuses)}, {uploads.no_answer} without answer, longest {uploads.max_latency_s:.1f} s",
    ]
    return Outcome(tally, notes, uploads=uploads)


async def soak(port: int, ctx: Context) -> Outcome:
    """64 clients sending a mix of good and bad requests; the next version is published half-way."""
    tally, deadline = Tally(), time.monotonic() + ctx.seconds
    mix = [ctx.single] * 6 + [ctx.hundred, ctx.v2, ctx.malformed, ctx.bad_field]
    clients = [
        client(port, itertools.cycle(mix[i % len(mix) :] + mix[: i % len(mix)]), tally, deadline, ctx.timeout)
        for i in range(64)
    ]
    await asyncio.gather(publish_next(ctx.store, ctx.seconds / 2), *clients)
    notes = [
        clients_note(64, tally, ctx.seconds),
        f"version 2 published at {ctx.seconds / 2:g} s; answers by version: {by_status(tally.versions)}",
    ]
    if not tally.versions[2]:  # the server looks for new versions every 2 s (poll_interval_s)
        notes.append("version 2 never answered: no hot reload seen (too short a run?)")
    return Outcome(tally, notes, reloaded=bool(tally.versions[2]))


async def publish_next(store: Path, delay: float) -> None:
    """Copy churn/1 to churn/2 after `delay` s, through a hidden name and a rename (atomic)."""
    await asyncio.sleep(delay)
    staging = store / "churn" / ".staging-abuse"
    await asyncio.to_thread(shutil.copytree, store / "churn" / "1", staging)
    staging.rename(store / "churn" / "2")


Scenario = Callable[[int, Context], Coroutine[Any, Any, Outcome]]  # (port, context) → outcome
SCENARIOS: dict[str, tuple[Scenario, Mapping[str, float]]] = {  # name: (scenario, server settings)
    "overload": (overload, {"max_queue": 64}),
    "slow-clients": (slow_clients, {"header_timeout_s": 2, "body_timeout_s": 2}),
    "idle-flood": (idle_flood, {}),
    "header-bomb": (header_bomb, {}),
    "gzip-bomb": (gzip_bomb, {}),
    "soak": (soak, {}),
}


# --- the server and its memory ------------------------------------------------------------------


class RssSampler:
    """A thread reading a process's resident memory every 50 ms; keeps the peak, and kills the
    process past a cap (the machine is shared: a runaway server must not take it down)."""

    def __init__(self, pid: int, cap_mb: float) -> None:
        self.pid, self.cap_mb = pid, cap_mb
        self.peak_mb, self.killed = 0.0, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                mb = rss_mb(self.pid)
            except (OSError, ValueError):  # gone, or a worker ending mid-read
                continue
            self.peak_mb = max(self.peak_mb, mb)
            if mb > self.cap_mb:
                os.kill(self.pid, signal.SIGKILL)
                self.killed = True
                return


@dataclass
class Server:
    """A running `tabserve serve`."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    idle_mb: float = 0.0


def server_options(options: Mapping[str, float], serve_help: str) -> tuple[list[str], dict[str, str]]:
    """Settings as CLI flags where `serve` has them, else as TABSERVE_* variables."""
    flags, env = [], {}
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if re.search(re.escape(flag) + r"(?![\w-])", serve_help):
            flags += [flag, str(value)]
        else:
            env[f"TABSERVE_{key.upper()}"] = str(value)
    return flags, env


@contextlib.contextmanager
def serving(store: Path, flags: list[str], env: dict[str, str], log: Path) -> Iterator[Server]:
    """A `tabserve serve` process on a free port, ready and warmed up, its idle RSS taken."""
    port = free_port()
    cmd = [sys.executable, "-m", "tabserve.cli", "serve", "--models", str(store), "--port", str(port)]
    cmd += ["--threads", "1", "--log-level", "warning", *flags]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, port, log)
        fetch(port, "POST", "/predict", telco_body(1).encode())  # warm-up: the first request's lazy work
        time.sleep(0.5)
        yield Server(proc, port, log, rss_mb(proc.pid))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Until GET /health/ready answers 200 (60 s at most)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError):
            if fetch(port, "GET", "/health/ready") == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"tabserve serve did not start:\n{log_tail(log)}")


def fetch(port: int, method: str, path: str, body: bytes | None = None) -> int:
    """The status of one request."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request(method, path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def log_tail(log: Path, lines: int = 15) -> str:
    """The server log's last lines."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Result:
    """One scenario's row."""

    name: str
    outcome: Outcome
    idle_mb: float
    peak_mb: float

    @property
    def statuses(self) -> Counter[int]:
        """Every answer the server gave, hostile connections' included."""
        total = self.outcome.requests.statuses + (self.outcome.uploads.statuses if self.outcome.uploads else Counter())
        for cut in self.outcome.cuts:
            total += cut.statuses
        return total

    @property
    def server_errors(self) -> int:
        """Answers of 5xx other than 503 (overloaded) and 504 (timed out)."""
        return sum(n for status, n in self.statuses.items() if status >= 500 and status not in (503, 504))

    @property
    def no_answer(self) -> int:
        """Requests (uploads included) without a whole answer."""
        uploads = self.outcome.uploads.no_answer if self.outcome.uploads else 0
        return self.outcome.requests.no_answer + uploads


def run_scenario(name: str, ctx: Context, serve_help: str, bundle: Path, tmp: Path, cap_mb: float) -> Result:
    """One scenario against a fresh server with its own copy of the store."""
    scenario, options = SCENARIOS[name]
    ctx.store = tmp / name / "models"
    shutil.copytree(bundle, ctx.store / "churn" / "1")
    flags, env = server_options(options, serve_help)
    settings = " ".join([*flags, *(f"{key}={value}" for key, value in env.items())]) or "defaults"
    print(f"{name}: {ctx.seconds:g} s, server settings: {settings}", flush=True)
    log = tmp / name / "server.log"
    with serving(ctx.store, flags, env, log) as server:
        with RssSampler(server.proc.pid, cap_mb) as sampler, asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            outcome = r.run(scenario(server.port, ctx))
        died = server.proc.poll()
    if sampler.killed:
        outcome.notes.append(f"SERVER KILLED: RSS over the {cap_mb:,.0f} MB cap")
    elif died is not None:
        outcome.notes.append(f"SERVER EXITED (status {died})")
        print(log_tail(log), flush=True)
    result = Result(name, outcome, server.idle_mb, max(sampler.peak_mb, server.idle_mb))
    print(f"  {row(result)}", flush=True)
    return result


def row(r: Result) -> str:
    """The scenario's Markdown table row."""
    t = r.outcome.requests
    cells = [r.name, f"{t.sent:,}", by_status(t.statuses), f"{t.no_answer:,}"]
    cells += [f"{r.idle_mb:.0f}", f"{r.peak_mb:.0f}", f"{r.peak_mb / r.idle_mb:.2f}x", "; ".join(r.outcome.notes)]
    return "| " + " | ".join(cells) + " |"


def report(results: list[Result]) -> None:
    """The table, then the requirements (the hot reload's where the soak ran)."""
    print(f"\ncommand: python bench/abuse.py {shlex.join(sys.argv[1:])}".rstrip())
    print(
        f"host: nproc {len(os.sched_getaffinity(0))}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, load average {os.getloadavg()[0]:.2f}\n"
    )
    print("| scenario | requests | answers by status | no answer | idle RSS MB | peak RSS MB | peak/idle | notes |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(row(r))
    bad = {r.name: f"{r.server_errors:,}" for r in results if r.server_errors}
    silent = {r.name: f"{r.no_answer:,}" for r in results if r.no_answer}
    fat = {r.name: f"{r.peak_mb / r.idle_mb:.2f}x" for r in results if r.peak_mb >= 2 * r.idle_mb}
    checks: list[tuple[str, dict[str, str]]] = [
        ("0 answers of 5xx other than 503/504", bad),
        ("0 requests without an answer", silent),
        ("peak RSS under 2x idle in every scenario", fat),
    ]
    soaks = [r for r in results if r.outcome.reloaded is not None]
    if soaks:
        stale = {r.name: "version 2 never answered" for r in soaks if not r.outcome.reloaded}
        checks.append(("the version published during the soak answers (hot reload)", stale))
    print()
    for text, failures in checks:
        where = ", ".join(f"{name} {value}" for name, value in failures.items())
        print(f"requirement: {text}: {'NOT MET (' + where + ')' if failures else 'met'}")
    print(f"summary: {sum(not f for _, f in checks)} of {len(checks)} requirements met")


def churn_bundle(models: Path | None, tmp: Path) -> Path:
    """The churn champion in `models`, trained first (quickly) if there is none."""
    from service import bundle, release

    store = models or tmp / "trained"
    if not (store / "churn").is_dir() or not bundle.versions(store, "churn"):
        cmd = [sys.executable, "-m", "tabserve.cli", "train", "--data", str(TELCO), "--target", "Churn"]
        cmd += ["--name", "churn", "--models-dir", str(store), "--ensemble", "1", "--no-plots"]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return Path(release.resolve(store, "churn").path)


def gzip_bombs(inflated: int) -> list[bytes]:
    """Two gzip bodies of `inflated` bytes: the telco header then one row repeated; zeros, no newline."""
    lines = TELCO.read_bytes().splitlines(keepends=True)
    return [_deflate(lines[0], lines[1] * 8000, inflated), _deflate(b"", bytes(1 << 20), inflated)]


def _deflate(first: bytes, unit: bytes, inflated: int) -> bytes:
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip member
    parts = [deflate.compress(first)]
    parts += [deflate.compress(unit) for _ in range(max(1, inflated // len(unit)))]
    return b"".join([*parts, deflate.flush()])


def context(args: argparse.Namespace, names: list[str]) -> Context:
    """The requests every scenario sends, built once."""
    record = json.loads(telco_body(1))["records"][0]
    bad = {"records": [{**record, "tenure": "lots"}]}
    return Context(
        seconds=args.seconds,
        timeout=args.timeout,
        conns=args.conns,
        upload_timeout=args.upload_timeout,
        single=post_json("/predict", telco_body(1)),
        hundred=post_json("/predict", telco_body(100)),
        v2=post_json("/v2/models/churn/infer", v2_body(telco_body(1))),
        malformed=post_json("/predict", b'{"records": [{"tenure": 1,'),
        bad_field=post_json("/predict", json.dumps(bad)),
        bomb_mb=args.bomb_mb,
        bombs=gzip_bombs(args.bomb_mb << 20) if "gzip-bomb" in names else [],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--models", type=Path, help="store with a churn bundle (default: train one, --ensemble 1, in a temp dir)"
    )
    parser.add_argument("--seconds", type=float, default=20, help="duration of each scenario")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--conns", type=int, default=1000, help="overload's connections")
    parser.add_argument("--timeout", type=float, default=30, help="seconds a request waits for its answer")
    parser.add_argument("--upload-timeout", type=float, default=60, help="seconds an upload's whole answer may take")
    parser.add_argument("--bomb-mb", type=int, default=1024, help="inflated size of each gzip bomb")
    parser.add_argument("--rss-cap-mb", type=float, help="kill the server past it (default: half of MemAvailable)")
    args = parser.parse_args()
    names = args.only.split(",")
    if unknown := set(names) - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # ~1,500 sockets here, as many in the server
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    cap_mb = args.rss_cap_mb or available_mb() / 2
    tmp = Path(tempfile.mkdtemp(prefix="tabserve-abuse-"))
    try:
        bundle = churn_bundle(args.models, tmp)
        serve_help = subprocess.run(
            [sys.executable, "-m", "tabserve.cli", "serve", "--help"],
            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "COLUMNS": "250"},
        ).stdout  # fmt: skip
        ctx = context(args, names)
        report([run_scenario(name, ctx, serve_help, bundle, tmp, cap_mb) for name in names])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def available_mb() -> float:
    """MemAvailable from /proc/meminfo."""
    found = re.search(r"MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    return int(found.group(1)) / 1024 if found else 4096.0


if __name__ == "__main__":
    main()
