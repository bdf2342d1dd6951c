"""Training wall time of `tabserve train` on telco with default settings, idle and beside a
competing CPU-bound process (a busy loop, as another tenant's job), alternating.

    python bench/train_speed.py                   # default settings, 3 rounds
    python bench/train_speed.py --flags "--threads 2" --rounds 2
    python bench/train_speed.py --big 500000      # one run on a 500 k-row telco-shaped file: wall, peak RSS

Each round runs the CLI as a user would (its own process, a fresh store) once idle and once with
one busy-looping process beside it; the figures are the CLI's wall time and CPU seconds. `--big N`
writes N telco rows drawn with replacement (seeded), each with a fresh customerID, and trains on it
once (defaults, no plots).
"""

from __future__ import annotations

import argparse
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from checkout import ROOT

TELCO = ROOT / "data/telco_churn.csv"


def train_once(flags: str, data: Path = TELCO) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one `tabserve train` run."""
    cmd = [sys.executable, "-m", "tabserve.cli", "train", "--data", str(data), "--target", "Churn"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tabserve-speed-") as store:
        cmd += ["--models-dir", store, *shlex.split(flags)]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - started
    if done.returncode:  # the CLI's own error line, not a bare exit status
        sys.exit(f"tabserve train failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def big_file(rows: int) -> Path:
    """`rows` telco rows drawn with replacement (seed 0), customerID made unique; written once."""
    import numpy as np
    import pandas as pd

    path = Path(tempfile.gettempdir()) / f"telco_{rows}.csv"
    if not path.is_file():
        df = pd.read_csv(TELCO, dtype=str, keep_default_na=False)
        df = df.iloc[np.random.default_rng(0).integers(0, len(df), rows)].reset_index(drop=True)
        df["customerID"] = [f"C{i:08d}" for i in range(rows)]
        df.to_csv(path.with_suffix(".tmp"), index=False)
        path.with_suffix(".tmp").rename(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flags", default="", help="extra `tabserve train` flags")
    parser.add_argument("--big", type=int, metavar="ROWS", help="one run on a telco-shaped file of ROWS rows")
    args = parser.parse_args()
    if args.big:
        data = big_file(args.big)
        wall, cpu = train_once(f"--no-plots {args.flags}", data)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB → GiB
        print(f"{args.big:,} rows: {wall:.0f} s wall ({wall / 60:.1f} min), {cpu:.0f} CPU s, peak RSS {peak:.2f} GiB")
        return
    idle, busy = [], []
    for i in range(args.rounds):
        idle.append(train_once(args.flags))
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            busy.append(train_once(args.flags))
        finally:
            hog.kill()
            hog.wait()
        print(f"round {i + 1}: idle {idle[-1][0]:.1f} s wall ({idle[-1][1]:.1f} CPU s), "
              f"beside a busy process {busy[-1][0]:.1f} s wall ({busy[-1][1]:.1f} CPU s)", flush=True)  # fmt: skip
    mid = statistics.median(w for w, _ in idle), statistics.median(w for w, _ in busy)
    print(f"`tabserve train {args.flags}`: median wall idle {mid[0]:.1f} s, beside a busy process {mid[1]:.1f} s")


if __name__ == "__main__":
    main()
