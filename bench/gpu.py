"""CUDA against CPU for one bundle, on a machine with a GPU: ONNX Runtime time per batch size through
each provider, the largest difference of their outputs, and `tabserve serve --device cuda` against
`--device cpu` under the same closed-loop client.

    python bench/gpu.py models/churn/1                 # rows from data/telco_churn.csv
    python bench/gpu.py models/churn/1 --seconds 5     # each serving measurement's length
    python bench/gpu.py models/churn/1 --no-serving    # ONNX Runtime figures only

ORT: each batch size's median of repeated runs, after a warm-up; CPU with one thread (a serving
worker on one CPU) and with every core; CUDA as the service runs it (full float32) and with ORT's
default TF32 products, each one's largest difference from the CPU's outputs. Serving: 16 keep-alive clients, each sending its next request
when the last is answered, for single records and 100-record requests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pandas as pd
from checkout import ROOT

from service.features import Preprocess

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
BATCHES = (1, 64, 1024, 16384, 262144)
DEVICES = ("cpu", "cuda")


def feeds(bundle: Path, data: Path) -> dict[int, dict[str, np.ndarray]]:
    """Each batch size's inputs: the file's rows, drawn with replacement past its length."""
    pre = Preprocess.load(bundle / "preprocess.json")
    df = pd.read_csv(data, dtype=str, keep_default_na=False)
    enc = pre.encode_columns({c: df[c].to_numpy() for c in df.columns}, len(df))
    rng = np.random.default_rng(0)
    out = {}
    for n in BATCHES:
        rows = rng.integers(0, len(df), n)
        out[n] = {"num": enc.num[rows], "cat": enc.cat[rows]}
    return out


def session(bundle: Path, provider: str, threads: int = 0, tf32: bool = False) -> ort.InferenceSession:
    """CUDA as the service runs it (full float32), or with ORT's default TF32 products (`tf32`)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    options = {"use_tf32": "1" if tf32 else "0"} if provider == CUDA else {}
    sess = ort.InferenceSession(str(bundle / "model.onnx"), opts, providers=[(provider, options), CPU])
    if sess.get_providers()[0] != provider:
        raise SystemExit(f"{provider} did not load (providers in use: {sess.get_providers()})")
    return sess


def median_run(sess: ort.InferenceSession, feed: dict[str, np.ndarray]) -> float:
    for _ in range(3):
        sess.run(None, feed)
    rows = len(feed["num"])
    times = []
    for _ in range(max(5, min(200, 2_000_000 // rows))):
        started = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def ort_figures(bundle: Path, data: Path) -> None:
    inputs = feeds(bundle, data)
    sessions = {
        "CPU, 1 thread": session(bundle, CPU, 1),
        "CPU, all cores": session(bundle, CPU),
        "CUDA": session(bundle, CUDA),
        "CUDA, TF32": session(bundle, CUDA, tf32=True),
    }
    big = inputs[16384]
    outs = {k: s.run(None, big) for k, s in sessions.items()}
    for k in ("CUDA", "CUDA, TF32"):
        diff = max(
            float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
            for a, b in zip(outs[k], outs["CPU, 1 thread"], strict=True)
            if np.asarray(a).dtype.kind == "f"
        )
        print(f"outputs, {k} vs CPU on 16,384 rows: largest difference {diff:.2e}")
    print("| rows per call | " + " | ".join(f"{k} µs/row" for k in sessions) + " | CPU 1 thread / CUDA |")
    print("|---" * (len(sessions) + 2) + "|")
    for n, feed in inputs.items():
        t = {k: median_run(s, feed) for k, s in sessions.items()}
        cells = " | ".join(f"{t[k] * 1e6 / n:.3f}" for k in sessions)
        print(f"| {n:,} | {cells} | {t['CPU, 1 thread'] / t['CUDA']:.2f}× |", flush=True)


def serve(store: Path, device: str, port: int) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "tabserve.cli",
        "serve",
        "--models",
        str(store),
        "--port",
        str(port),
        "--device",
        device,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ready = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1)
            if ready.status_code == 200:
                providers = {m["provider"] for m in ready.json()["models"].values()}
                print(f"--device {device}: serving on {', '.join(sorted(providers))}")
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"tabserve serve --device {device} was not ready within 60 s")


def load(url: str, body: dict[str, object], seconds: float, clients: int = 16) -> tuple[float, float, float]:
    """Requests per second, p50 and p99 latency (ms) of closed-loop keep-alive clients."""
    latencies: list[float] = []
    end = time.monotonic() + seconds

    def client() -> None:
        mine = []
        with httpx.Client(timeout=30) as c:
            while time.monotonic() < end:
                started = time.perf_counter()
                assert c.post(url, json=body).status_code == 200
                mine.append(time.perf_counter() - started)
        latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = np.array(latencies) * 1e3
    return len(ms) / (time.monotonic() - started), float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def serving_figures(bundle: Path, data: Path, seconds: float) -> None:
    records = pd.read_csv(data, nrows=100).to_dict("records")
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "models"
        shutil.copytree(bundle, store / bundle.parent.name / bundle.name)
        for i, device in enumerate(DEVICES):
            proc = serve(store, device, 8790 + i)
            try:
                for n in (1, 100):
                    rps, p50, p99 = load(f"http://127.0.0.1:{8790 + i}/predict", {"records": records[:n]}, seconds)
                    print(
                        f"--device {device}, {n}-record requests: {rps:,.0f} req/s ({rps * n:,.0f} rows/s), p50 {p50:.2f} ms, p99 {p99:.2f} ms",
                        flush=True,
                    )
            finally:
                proc.terminate()
                proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", type=Path, default=ROOT / "data/telco_churn.csv", help="rows to score (CSV)")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--no-serving", action="store_true", help="ONNX Runtime figures only")
    args = parser.parse_args()
    if CUDA not in ort.get_available_providers():
        raise SystemExit(f"this ONNX Runtime has no {CUDA} ({ort.get_available_providers()}): run it on a GPU machine")
    print(f"onnxruntime {ort.__version__}, {os.cpu_count()} CPUs")
    ort_figures(args.bundle, args.data)
    if not args.no_serving:
        serving_figures(args.bundle.resolve(), args.data, args.seconds)


if __name__ == "__main__":
    main()
