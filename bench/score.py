"""Batch-scoring benchmark: `tabserve score` vs pyarrow's read ceiling and a naive pandas scorer.

    python bench/score.py            # 1,000,000-row CSV, ~2 min
    python bench/score.py --big      # also a 10,000,000-row CSV (1.4 GB) for the memory ratio

The input is built by sampling whole lines of data/telco_churn.csv (seeded), written once under
--workdir and reused (then in the page cache, as in the issue's reference figures). In one run:
(a) pyarrow's threaded read_csv of the file (the I/O ceiling) and its streaming reader;
(b) `tabserve score` end to end, CSV → CSV, as a separate process (the CLI, default settings);
(c) the same, CSV → Parquet; (d) a naive reference: pandas.read_csv, the bundle's encoding
applied row by row as a request handler would, one session.run on the whole matrix, to_csv.
(a)-(c) run --repeats times (3) and the best counts, the same rule for the ceiling and for us.
rows/s for (b) and (c) are the CLI's own figure (file open to rename, no interpreter start);
wall seconds with start-up are shown beside it. Peak RSS is the CLI process's VmHWM (polled).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.csv as pcsv
from checkout import ROOT
from serve import TABSERVE, add_models, churn_bundle

if TYPE_CHECKING:
    from service.bundle import BundleRef

TELCO = ROOT / "data" / "telco_churn.csv"


def build(path: Path, rows: int, seed: int = 0) -> Path:
    """A CSV of `rows` lines sampled (with replacement) from the telco file, header first."""
    if path.exists():
        return path
    lines = TELCO.read_bytes().splitlines(keepends=True)
    head, body = lines[0], lines[1:]
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        fh.write(head)
        for start in range(0, rows, 1_000_000):
            idx = rng.integers(0, len(body), min(1_000_000, rows - start))
            fh.writelines(body[i] for i in idx)
    tmp.replace(path)
    return path


def timed(fn):  # type: ignore[no-untyped-def]
    """(seconds, result) of one call."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def read_ceiling(path: Path, repeats: int) -> tuple[float, float]:
    """Best rows/s of pyarrow's threaded read_csv and of its streaming reader (all columns).

    NOTE: the first read_csv in a process is ~3x slower than the next ones (thread pool and
    allocator warm-up); the ceiling is the best of `repeats` runs."""
    best, stream = 0.0, 0.0
    for _ in range(repeats):
        secs, rows = timed(lambda: pcsv.read_csv(path).num_rows)
        best = max(best, rows / secs)
        secs, rows = timed(lambda: sum(b.num_rows for b in pcsv.open_csv(path)))
        stream = max(stream, rows / secs)
    return best, stream


def run_cli(
    model: str,
    models: Path,
    source: Path,
    target: Path,
    extra: Sequence[str] = (),
    command: Sequence[str] = TABSERVE,
) -> tuple[float, float, float]:
    """(rows/s the CLI reports, wall seconds, peak RSS MB) of one `tabserve score` process
    (`command`: how to run `tabserve`, e.g. another checkout's code)."""
    cmd = [*command, "score", "--model", model, "--input", str(source)]
    cmd += ["--output", str(target), "--models-dir", str(models), *extra]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = 0
    while proc.poll() is None:  # NOTE: ru_maxrss of a child counts this (large) parent's pages
        peak = max(peak, _hwm_kb(proc.pid))
        time.sleep(0.02)
    wall = time.perf_counter() - started
    out = proc.stdout.read() if proc.stdout else ""
    found = re.search(r"\(([\d,]+) rows/s\)", out)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"tabserve score failed: {out}")
    rate = float(found.group(1).replace(",", ""))
    return rate, wall, peak / 1024


def _hwm_kb(pid: int) -> int:
    """The process's peak resident set (VmHWM) so far, 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(found.group(1)) if found else 0


def named_bundle(models: Path, model: str) -> BundleRef:
    """The bundle `model` names in `models`; the churn bundle trained first if it is the one and absent."""
    from service import release

    if model == "churn":
        churn_bundle(models)
    return release.resolve(models, model)


def naive(model_dir: Path, source: Path, target: Path) -> float:
    """rows/s of what a quick script does: pandas, per-row encoding, one session.run, to_csv."""
    import onnxruntime as ort
    import pandas as pd

    from service.encoders import RecordEncoder
    from service.features import Preprocess

    started = time.perf_counter()
    pre = Preprocess.load(model_dir / "preprocess.json")
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    encoder = RecordEncoder(pre)
    encoded = [encoder.encode([row]) for row in frame.to_dict("records")]
    num = np.concatenate([e.num for e in encoded])
    cat = np.concatenate([e.cat for e in encoded])
    out = session.run(None, {"num": num, "cat": cat})[0]
    frame = pd.DataFrame({"customerID": frame["customerID"], "probability": out[:, 1]})
    frame["label"] = pre.labels_for(out)
    frame.to_csv(target, index=False)
    return len(frame) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_models(parser)
    parser.add_argument("--model", default="churn", help="name or name@version in --models")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tabserve-bench-score"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big", action="store_true", help="also score a 10x larger file (memory ratio)")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="runs of (a)-(c); the best counts")
    args = parser.parse_args()
    ref = named_bundle(args.models, args.model)
    args.workdir.mkdir(parents=True, exist_ok=True)
    small = build(args.workdir / f"telco_{args.rows}.csv", args.rows)
    print(f"model {ref.name} v{ref.version}; input {small} ({small.stat().st_size / 1e6:.0f} MB)", flush=True)

    threaded, streaming = read_ceiling(small, args.repeats)
    runs = [run_cli(args.model, args.models, small, args.workdir / "scored.csv") for _ in range(args.repeats)]
    csv_rate, csv_wall, csv_rss = max(runs)
    print("CSV → CSV runs (rows/s):", ", ".join(f"{r[0]:,.0f}" for r in runs))
    runs = [run_cli(args.model, args.models, small, args.workdir / "scored.parquet") for _ in range(args.repeats)]
    pq_rate, pq_wall, pq_rss = max(runs)
    rows = [
        ("(a) pyarrow read_csv, threaded (ceiling)", threaded, "", ""),
        ("    pyarrow open_csv, streaming", streaming, "", ""),
        ("(b) tabserve score CSV → CSV", csv_rate, f"{csv_wall:.1f}", f"{csv_rss:.0f}"),
        ("(c) tabserve score CSV → Parquet", pq_rate, f"{pq_wall:.1f}", f"{pq_rss:.0f}"),
    ]
    if not args.skip_naive:
        rows.append(("(d) naive pandas + per-row encode", naive(ref.path, small, args.workdir / "naive.csv"), "", ""))
    big_rss = None
    if args.big:
        big = build(args.workdir / f"telco_{10 * args.rows}.csv", 10 * args.rows)
        big_rate, big_wall, big_rss = run_cli(args.model, args.models, big, args.workdir / "scored_big.csv")
        rows.append((f"(b) CSV → CSV, {10 * args.rows:,} rows", big_rate, f"{big_wall:.1f}", f"{big_rss:.0f}"))

    print(f"\n| {args.rows:,} rows unless stated | rows/s | wall s (with start-up) | peak RSS MB |")
    print("|---|---|---|---|")
    for name, rate, wall, rss in rows:
        print(f"| {name} | {rate:,.0f} | {wall} | {rss} |")
    print(f"\nCSV → CSV vs threaded read ceiling: {csv_rate / threaded:.2f}x  (required ≥ 0.3x)")
    print(f"CSV → CSV: {csv_rate:,.0f} rows/s  (required ≥ 1,000,000)")
    if len(rows) > 4 and not args.skip_naive:
        print(f"CSV → CSV vs naive pandas: {csv_rate / rows[4][1]:.1f}x")
    if big_rss is not None:
        print(f"peak RSS 10x file / 1x file: {big_rss / csv_rss:.2f}  (required ≤ 1.5)")


if __name__ == "__main__":
    main()
