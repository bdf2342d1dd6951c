"""ONNX Runtime time of two bundles' model.onnx on the same 1,024 real rows, alternating (issue 20's
inference bar: the shipped graph within 2× of the one before).

    python bench/graph_cost.py OLD_BUNDLE NEW_BUNDLE            # e.g. models/churn/1 from two checkouts
    python bench/graph_cost.py OLD NEW --rows 1 --rounds 20
    python bench/graph_cost.py OLD NEW --data other.csv         # rows of another file

Each round times `session.run` on the batch 200 times per bundle (one ORT thread, as a serving worker
on one CPU), order alternating; the figure is the median over rounds of each bundle's best run, and
the median of the rounds' NEW/OLD ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
from checkout import ROOT

from service.features import Preprocess


def inputs(bundle: Path, rows: int, data: Path) -> dict[str, np.ndarray]:
    pre = Preprocess.load(bundle / "preprocess.json")
    df = pd.read_csv(data, nrows=rows, dtype=str, keep_default_na=False)
    enc = pre.encode_columns({c: df[c].to_numpy() for c in df.columns}, len(df))
    return {"num": enc.num, "cat": enc.cat}


def session(bundle: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(bundle / "model.onnx"), opts, providers=["CPUExecutionProvider"])


def best_run(sess: ort.InferenceSession, feed: dict[str, np.ndarray], repeats: int = 200) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        sess.run(None, feed)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--data", type=Path, default=ROOT / "data/telco_churn.csv", help="rows to score (CSV)")
    args = parser.parse_args()
    bundles = {"old": args.old, "new": args.new}
    sessions = {k: session(b) for k, b in bundles.items()}
    feeds = {k: inputs(b, args.rows, args.data) for k, b in bundles.items()}
    times: dict[str, list[float]] = {"old": [], "new": []}
    for i in range(args.rounds):
        for k in ("old", "new") if i % 2 == 0 else ("new", "old"):
            times[k].append(best_run(sessions[k], feeds[k]))
    ratios = [n / o for o, n in zip(times["old"], times["new"], strict=True)]
    for k in ("old", "new"):
        t = statistics.median(times[k])
        print(f"{k}: {bundles[k]}  {t * 1e6:.0f} µs per {args.rows:,} rows ({t * 1e6 / args.rows:.2f} µs per row)")
    print(f"new / old time: {statistics.median(ratios):.2f}× (rounds {min(ratios):.2f}–{max(ratios):.2f})")


if __name__ == "__main__":
    main()
