"""A real `tabserve serve` process on a loopback port, over a real model store."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service import bundle
from tests.conftest import TELCO


@dataclass
class Server:
    """A running service: its base URL, store and process."""

    url: str
    store: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        """What the server logged so far."""
        return self.log.read_text(errors="replace")


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(store: Path, *flags: str, ready: bool = True, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start `tabserve serve` as a user would (settings as flags or TABSERVE_* variables) and stop it afterwards."""
    port = free_port()
    log = store.parent / f"server-{port}.log"
    env = {**os.environ, "TABSERVE_POLL_INTERVAL_S": "0.2", **(env or {})}
    cmd = [sys.executable, "-m", "tabserve.cli", "serve", "--models", str(store), "--port", str(port), *flags]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", store, proc, log)
    try:
        wait_until(server, "/health/ready" if ready else "/health/live")
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def wait_until(server: Server, path: str, timeout: float = 30.0) -> None:
    """Poll until `path` answers 200 (fails with the server's log otherwise)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"server exited {server.proc.returncode}:\n{server.output()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + path, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"{path} not ready after {timeout}s:\n{server.output()}")


def copy_store(src: bundle.BundleRef, dest: Path) -> Path:
    """A fresh store holding one copy of a bundle as version 1."""
    target = dest / src.name / "1"
    shutil.copytree(src.path, target)
    return dest


def republish(store: Path, src: bundle.BundleRef) -> bundle.BundleRef:
    """Publish a copy of a bundle as the next version, through the real atomic publish."""

    def write(out: Path) -> None:
        for item in src.path.iterdir():
            shutil.copy2(item, out / item.name)

    return bundle.publish(store, src.name, write)


@pytest.fixture(scope="module")
def churn_server(churn_bundle: bundle.BundleRef, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One service over a store holding the churn bundle, shared by a test module."""
    store = copy_store(churn_bundle, tmp_path_factory.mktemp("serve") / "models")
    with running_server(
        store, "--admin-token", "s3cret", "--max-records", "500", "--max-body-bytes", "200000"
    ) as server:
        yield server


def telco_records(n: int, start: int = 0) -> list[dict[str, object]]:
    """Rows of the real telco file as a JSON client sends them (numbers as numbers)."""
    import csv

    with TELCO.open(newline="") as fh:
        rows = list(csv.DictReader(fh))[start : start + n]
    numeric = {"SeniorCitizen", "tenure", "MonthlyCharges", "TotalCharges"}
    out = []
    for row in rows:
        row.pop("Churn")
        out.append(
            {k: (float(v) if k in numeric and v.strip() else (None if k in numeric else v)) for k, v in row.items()}
        )
    return out
