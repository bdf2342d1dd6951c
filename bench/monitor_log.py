"""`tabserve monitor` over a large prediction log: the wall time of the whole command.

    python bench/monitor_log.py                 # 10,000,000 logged rows over 30 days, 1,000,000 labelled
    python bench/monitor_log.py --rows 1000000  # smaller

The log is built once under --workdir (then reused): the telco file scored through the real
`PredictionLog` (its own schema and files), then repeated with new ids and timestamps over 30
days, one Parquet file per day per 500,000 rows, with `Contract` shifted to month-to-month in the
last ten days (a drift the report must show) and outcomes for --labelled rows as feedback files.
The figure is `tabserve monitor --html` end to end, as a user runs it (interpreter start included),
best of --repeats.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from score import TELCO
from serve import add_models, churn_bundle

DAY = 86_400 * 1_000_000  # in the log's microseconds
FILE_ROWS = 500_000


def scored_once(models: Path, work: Path) -> pa.Table:
    """The telco file as the log records it, through `tabserve score --log`."""
    log = work / "seed-log"
    if not log.exists():
        cmd = [sys.executable, "-m", "tabserve.cli", "score", "--model", "churn", "--models", str(models)]
        subprocess.run([*cmd, "--input", str(TELCO), "--output", str(work / "seed.csv"), "--log", str(log)], check=True)
    return pq.read_table(sorted(log.glob("churn/date=*/*.parquet")))


def build(models: Path, work: Path, rows: int, labelled: int) -> Path:
    root = work / f"log-{rows}"
    if root.exists():
        return root
    seed = scored_once(models, work)
    labels = pacsv.read_csv(TELCO, convert_options=pacsv.ConvertOptions(include_columns=["customerID", "Churn"]))
    truth = dict(zip(labels.column("customerID").to_pylist(), labels.column("Churn").to_pylist(), strict=True))
    outcome = pa.array([truth[c] for c in seed.column("customerID").to_pylist()])
    start = int(time.time() * 1e6) - 30 * DAY
    per_day, written, copy = rows // 30, 0, 0
    for day in range(30):
        folder = root / "churn" / f"date={time.strftime('%Y-%m-%d', time.gmtime((start + day * DAY) / 1e6))}"
        folder.mkdir(parents=True)
        parts, made = [], 0
        while made < per_day:
            part = seed.slice(0, min(len(seed), per_day - made))
            ids = pc.binary_join_element_wise(part.column("customerID"), pa.scalar(f"-{copy}"), "")
            at = pa.array(start + day * DAY + np.sort(np.random.default_rng(copy).integers(0, DAY, len(part))))
            part = part.set_column(part.schema.get_field_index("customerID"), "customerID", ids)
            part = part.set_column(0, "_at", at.cast(pa.timestamp("us", tz="UTC")))
            if day >= 20:  # the drift the report must show
                shifted = pa.array(["Month-to-month"] * len(part))
                part = part.set_column(part.schema.get_field_index("Contract"), "Contract", shifted)
            parts.append(part)
            if written < labelled:
                feedback(root, ids, outcome[: len(part)], at, copy)
                written += len(part)
            made, copy = made + len(part), copy + 1
        table = pa.concat_tables(parts)
        for i in range(0, len(table), FILE_ROWS):
            pq.write_table(table.slice(i, FILE_ROWS), folder / f"bench-{i // FILE_ROWS}.parquet", compression="zstd")
    return root


def feedback(root: Path, ids: pa.Array, outcome: pa.Array, at: pa.Array, copy: int) -> None:
    folder = root / "churn" / "feedback" / "date=2026-01-01"
    folder.mkdir(parents=True, exist_ok=True)
    later = pc.add(at, pa.scalar(DAY // 2)).cast(pa.timestamp("us", tz="UTC"))
    table = pa.table({"customerID": ids, "_outcome": outcome, "_target": pa.array(["Churn"] * len(ids)), "_at": later})
    pq.write_table(table, folder / f"bench-{copy}.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--labelled", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    add_models(parser)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tabserve-bench-monitor"))
    args = parser.parse_args()
    churn_bundle(args.models)
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    root = build(args.models, args.workdir, args.rows, args.labelled)
    print(f"log of {args.rows:,} rows under {root} ({time.perf_counter() - started:.0f} s to build or find)")
    cmd = [sys.executable, "-m", "tabserve.cli", "monitor", "--model", "churn", "--models", str(args.models)]
    cmd += ["--log", str(root), "--html", str(args.workdir / "report.html")]
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - t)
    print(done.stdout)
    print(
        f"tabserve monitor --html over {args.rows:,} rows ({args.labelled:,} labelled): best {min(times):.1f} s of {times}"
    )


if __name__ == "__main__":
    main()
