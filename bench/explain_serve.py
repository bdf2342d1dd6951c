"""Reason codes under load: a single-record /predict with `"explain": 4` against the same request
without it, on one server, wrk at 64 connections, pairs alternating which runs first.

    python bench/explain_serve.py              # 6 pairs of 5 s, ~2 min (trains the churn bundle if needed)

Bars (issue 17): explain throughput ≥ 0.5× plain, explain p99 ≤ 15 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from serve import churn_bundle, free_port, lua_script, server, telco_body, wrk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("/tmp/tabserve-bench-explain"))
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--explain", default="4", help="reasons per record, or all")
    args = parser.parse_args()
    churn_bundle(args.models)
    plain = telco_body(1)
    explain: int | str = int(args.explain) if args.explain.isdigit() else args.explain
    explained = json.dumps({**json.loads(plain), "explain": explain})
    with tempfile.TemporaryDirectory(prefix="tabserve-explain-") as tmp:
        folder = Path(tmp)
        scripts = {"plain": lua_script(plain, folder, "plain"), "explain": lua_script(explained, folder, "explain")}
        port = free_port()
        cmd = [sys.executable, "-m", "tabserve.cli", "serve", "--models", str(args.models), "--threads", "1"]
        cmd += ["--log-level", "warning", "--port", str(port)]
        url = f"http://127.0.0.1:{port}/predict"
        with server(cmd, port, {}, "/health/ready"):
            for script in scripts.values():
                wrk(url, script, 16, 1)  # warm-up
            ratios, p99s = [], []
            for i in range(args.pairs):
                order = ["plain", "explain"] if i % 2 == 0 else ["explain", "plain"]
                got = {name: wrk(url, scripts[name], args.conns, args.seconds) for name in order}
                ratios.append(got["explain"][0] / got["plain"][0])
                p99s.append(got["explain"][2])
                errors = got["plain"][3] + got["explain"][3]
                print(
                    f"pair {i + 1}: plain {got['plain'][0]:,.0f} req/s (p99 {got['plain'][2]:.1f} ms), "
                    f"explain {got['explain'][0]:,.0f} req/s (p99 {got['explain'][2]:.1f} ms), "
                    f"ratio {ratios[-1]:.2f}, errors {errors}",
                    flush=True,
                )
        print(
            f"single record, explain={args.explain}, {args.conns} connections: explain / plain median "
            f"{statistics.median(ratios):.2f} (required ≥ 0.5); explain p99 median {statistics.median(p99s):.1f} ms "
            "(required ≤ 15 ms)"
        )


if __name__ == "__main__":
    main()
