"""Feedback against a log of long text: the server's peak RSS and the wall time of concurrent calls.

    python bench/feedback_memory.py                    # this checkout
    python bench/feedback_memory.py --checkout /tmp/a  # another one (a `git worktree`), same machine

A --checkout that would run other C code than this one (a fresh worktree has no `*.so`: `python
setup.py build_ext --inplace` there) is refused, by bench/compare.py's check.

A served churn model logs 400 requests of 50 records whose `gender` is a 5,000-character unseen
level (logged as sent: 20,000 rows, ~100 MB of text in the open segment), then 20 one-record
`POST /models/churn/feedback` calls arrive at once. Each call looks its ids up in the log; the
figure is the server's peak RSS during the calls (VmHWM, reset just before them through
/proc/PID/clear_refs: Linux) against its RSS before them, and their wall time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
from compare import cli, same_accelerators
from score import TELCO
from serve import ROOT, churn_bundle, free_port, server

LONG = "x" * 5000


def rss_mb(pid: int, key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of a process, in MB."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith(key))


def reset_peak(pid: int) -> None:
    """Start VmHWM afresh from the current RSS, so the peak read later is the calls' own."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the code to serve (default: this one)")
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    same_accelerators({"this checkout": ROOT, "--checkout": args.checkout.resolve()})  # else not comparable
    with tempfile.TemporaryDirectory(prefix="tabserve-feedback-") as folder:
        measure(Path(folder), args)


def measure(work: Path, args: argparse.Namespace) -> None:
    """Log the long-text requests, then time the concurrent feedback calls and take their peak RSS."""
    models = work / "models"
    churn_bundle(models)
    port = free_port()
    cmd = [*cli(args.checkout.resolve()), "serve", "--models", str(models), "--port", str(port)]
    records = pd.read_csv(TELCO).head(50).drop(columns=["Churn"]).to_dict("records")
    url = f"http://127.0.0.1:{port}"
    with server([*cmd, "--log", str(work / "log")], port, {}, "/health/ready") as proc:
        for i in range(400):
            batch = [{**r, "customerID": f"c{i}-{j}", "gender": LONG} for j, r in enumerate(records)]
            assert httpx.post(url + "/models/churn/predict", json={"records": batch}, timeout=60).status_code == 200
        before = rss_mb(proc.pid, "VmRSS")
        reset_peak(proc.pid)

        def feedback(i: int) -> int:
            body = {"records": [{"customerID": f"c{i}-0", "Churn": "Yes"}]}
            return httpx.post(url + "/models/churn/feedback", json=body, timeout=600).status_code

        started = os.times().elapsed
        with ThreadPoolExecutor(args.calls) as pool:
            statuses = set(pool.map(feedback, range(args.calls)))
        seconds = os.times().elapsed - started
        peak = rss_mb(proc.pid, "VmHWM")
    print(
        f"{args.checkout}: {args.calls} feedback calls at once, statuses {sorted(statuses)}, {seconds:.1f} s; "
        f"RSS {before:.0f} MB before, peak during the calls {peak:.0f} MB ({peak / before:.2f}×)"
    )


if __name__ == "__main__":
    main()
