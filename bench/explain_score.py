"""Reason codes in batch scoring: `tabserve score --explain 4` against plain `tabserve score` on the
same 1,000,000-row telco CSV (CSV → CSV), runs alternating, in one process tree.

    python bench/explain_score.py --models /tmp/xs --model telco_churn     # ~1 min with 3 pairs

The input is bench/score.py's (whole lines sampled from data/telco_churn.csv, seeded, under
--workdir). Each rate is the CLI's own rows/s figure; the ratio is best explain over best plain.
Bar (issue 17): explain ≥ 0.3× plain.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from score import build, named_bundle, run_cli
from serve import add_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_models(parser)
    parser.add_argument("--model", default="churn", help="name or name@version in --models")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tabserve-bench-score"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--pairs", type=int, default=3, help="plain/explain pairs; the best of each counts")
    parser.add_argument("--explain", default="4", help="reasons per row, or all")
    args = parser.parse_args()
    named_bundle(args.models, args.model)
    args.workdir.mkdir(parents=True, exist_ok=True)
    source = build(args.workdir / f"telco_{args.rows}.csv", args.rows)
    target = args.workdir / "scored.csv"
    plain, explained = [], []
    for pair in range(args.pairs):  # which runs first alternates, so a drift in load hits both
        first_plain = pair % 2 == 0
        for is_plain in (first_plain, not first_plain):
            extra = [] if is_plain else ["--explain", args.explain]
            (plain if is_plain else explained).append(run_cli(args.model, args.models, source, target, extra)[0])
    print(f"{args.rows:,} rows CSV → CSV, {args.pairs} pairs")
    print("plain   rows/s:", ", ".join(f"{r:,.0f}" for r in plain))
    print(f"--explain {args.explain} rows/s:", ", ".join(f"{r:,.0f}" for r in explained))
    ratio = max(explained) / max(plain)
    print(f"best plain {max(plain):,.0f}, best explain {max(explained):,.0f}: {ratio:.2f}x  (required ≥ 0.3x)")


if __name__ == "__main__":
    main()
