"""CPU budget benchmark: serving, scoring and training on the CPUs they are given.

    python bench/budget.py                      # the three parts in four scenarios, ~10 min; needs wrk
    python bench/budget.py --only serve         # one part: serve | score | train
    python bench/budget.py --scenarios whole,pinned --rounds 5

Scenarios: `whole`, the whole machine; `pinned`, the process on core 1 (`taskset -c 1`) with wrk on
core 0; `quota`, the process in a cgroup with a quota of one CPU (cgroup v2 `cpu.max`, else v1
`cpu.cfs_quota_us`; where neither can be created the scenario is skipped and says why); `busy`,
beside one busy-looping process. Every figure is also printed as a ratio to the whole-machine run
of the same invocation (the machine's speed drifts by more than that between runs).

- serve: tabserve with its defaults (the budget sizes its threads), the bare ASGI app and plain
  FastAPI + ORT (bench/refs.py) side by side under the same constraint; single record, 64
  connections, wrk -t1; --rounds rounds, the order rotating; the median of each.
- score: `tabserve score` of a --rows CSV (bench/score.py's file) to CSV; the CLI's rows/s, best of --repeats.
- train: `tabserve train` on telco, default configuration, a fresh store; wall seconds (median of --repeats).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from checkout import ROOT
from score import build, run_cli
from serve import TABSERVE, TELCO, add_models, churn_bundle, free_port, lua_script, server, telco_body, uvicorn_cmd, wrk

SCENARIOS = ("whole", "pinned", "quota", "busy")
CGROUP = "tabserve-bench"
Prefix = list[str]
UNRATIOED = {"ORT threads"}  # figures shown without their ratio to the whole machine


def cgroup_of_one_cpu() -> tuple[Path | None, str]:
    """A cgroup whose CPU quota is one CPU (v2, else v1), or None and why not."""
    v2 = [p for p in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")) if (p / "cgroup.controllers").exists()]
    v1 = [
        p for p in (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/cpu,cpuacct")) if (p / "cpu.cfs_quota_us").exists()
    ]
    tried = []
    for base in [*v2, *v1]:
        try:
            if base in v2:
                if "cpu" not in (base / "cgroup.controllers").read_text().split():
                    tried.append(f"{base}: cgroup v2 without the cpu controller")
                    continue
                if "cpu" not in (base / "cgroup.subtree_control").read_text().split():
                    (base / "cgroup.subtree_control").write_text("+cpu")
                (base / CGROUP).mkdir(exist_ok=True)
                (base / CGROUP / "cpu.max").write_text("100000 100000")
            else:
                (base / CGROUP).mkdir(exist_ok=True)
                (base / CGROUP / "cpu.cfs_period_us").write_text("100000")
                (base / CGROUP / "cpu.cfs_quota_us").write_text("100000")
            return base / CGROUP, f"cgroup v{2 if base in v2 else 1} {base / CGROUP}, quota 1 CPU"
        except OSError as exc:
            tried.append(f"{base / CGROUP}: {exc}")
    return None, "no CPU cgroup could be created, skipped (" + "; ".join(tried or ["no cgroup mount"]) + ")"


@contextlib.contextmanager
def scenario(name: str) -> Iterator[tuple[Prefix, Prefix] | None]:
    """(prefix for the measured process, CPUs for the driver) of a scenario; None where it cannot run."""
    if name == "whole":
        yield [], []
    elif name == "pinned":
        yield ["taskset", "-c", "1"], ["0"]
    elif name == "busy":
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            yield [], []
        finally:
            hog.kill()
            hog.wait()
    elif name == "quota":
        group, said = cgroup_of_one_cpu()
        print(f"quota: {said}", flush=True)
        if group is None:
            yield None
            return
        try:
            yield ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh"], []
        finally:
            time.sleep(0.5)  # the last process in it has exited
            with contextlib.suppress(OSError):
                group.rmdir()


@contextlib.contextmanager
def driver_on(cpus: Prefix) -> Iterator[None]:
    """Run this process (and the wrk it starts) on `cpus` meanwhile; [] leaves it as it is."""
    before = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def budget_seen(prefix: Prefix) -> str:
    """What `tabserve --version` run under the same constraint says its CPU budget is."""
    out = subprocess.run([*prefix, *TABSERVE, "--version"], capture_output=True, text=True, env=_env()).stdout
    line = next((x for x in out.splitlines() if x.startswith("CPU budget:")), "CPU budget: ?")
    return line.removeprefix("CPU budget: ").split(";")[0]


def _env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200"}


def serve_part(prefix: Prefix, driver: Prefix, store: Path, script: Path, args: argparse.Namespace) -> dict[str, float]:
    """Median req/s and p99 of tabserve and both references, side by side, rounds rotating."""
    env = {"TABSERVE_BENCH_BUNDLE": str(store / "churn" / "1")}
    commands: dict[str, tuple[Callable[[int], list[str]], str]] = {
        "bare": (lambda port: uvicorn_cmd("bench.refs:bare", port, 1), "/"),
        "plain": (lambda port: uvicorn_cmd("bench.refs:plain_app", port, 1, factory=True), "/docs"),
        "tabserve": (
            lambda port: [*TABSERVE, "serve", "--models", str(store), "--log-level", "warning", "--port", str(port)],
            "/health/ready",
        ),
    }
    got: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    with contextlib.ExitStack() as stack:
        urls = {}
        for name, (make, ready) in commands.items():
            port = free_port()
            stack.enter_context(server([*prefix, *make(port)], port, env, ready))
            urls[name] = f"http://127.0.0.1:{port}/predict"
        seen = httpx.get(urls["tabserve"].replace("/predict", "/models")).json()["cpus"]
        with driver_on(driver):
            for url in urls.values():
                wrk(url, script, 16, 1)  # warm-up
            names = list(commands)
            for i in range(args.rounds):
                for name in names[i % 3 :] + names[: i % 3]:
                    rps, _, p99, _ = wrk(urls[name], script, 64, args.seconds)
                    got[name].append((rps, p99))
    out = {f"{name} req/s": statistics.median(r for r, _ in runs) for name, runs in got.items()}
    out |= {f"{name} p99 ms": statistics.median(p for _, p in runs) for name, runs in got.items()}
    out["tabserve / bare"] = statistics.median(t[0] / b[0] for t, b in zip(got["tabserve"], got["bare"], strict=True))
    out["tabserve / plain"] = statistics.median(t[0] / p[0] for t, p in zip(got["tabserve"], got["plain"], strict=True))
    out["ORT threads"] = seen["threads_per_worker"]
    return out


def score_part(prefix: Prefix, driver: Prefix, store: Path, source: Path, args: argparse.Namespace) -> dict[str, float]:
    """Best rows/s `tabserve score` reports for the CSV, and its wall seconds with start-up."""
    with tempfile.TemporaryDirectory(prefix="tabserve-budget-score-") as folder, driver_on(driver):
        target = Path(folder) / "scored.csv"
        runs = [run_cli("churn", store, source, target, command=[*prefix, *TABSERVE]) for _ in range(args.repeats)]
    best = max(runs)
    return {"score rows/s": best[0], "score wall s": best[1]}


def train_part(prefix: Prefix, driver: Prefix, args: argparse.Namespace) -> dict[str, float]:
    """Median wall seconds of `tabserve train` on telco with the default configuration."""
    walls = []
    for _ in range(args.train_repeats):
        cmd = [*prefix, *TABSERVE, "train", "--data", str(TELCO), "--target", "Churn", "--name", "churn"]
        with tempfile.TemporaryDirectory(prefix="tabserve-budget-train-") as store, driver_on(driver):
            started = time.perf_counter()
            subprocess.run([*cmd, "--models-dir", store], check=True, capture_output=True, cwd=ROOT, env=_env())
            walls.append(time.perf_counter() - started)  # before the store is deleted
    return {"train s": statistics.median(walls)}


def report(part: str, results: dict[str, dict[str, float]], budgets: dict[str, str]) -> None:
    """One markdown table per part: each figure, and its ratio to the whole-machine run."""
    keys = list(next(iter(results.values())))
    print(f"\n{part}:\n| scenario | budget tabserve sees | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    whole = results.get("whole")
    for name, figures in results.items():
        cells = []
        for key in keys:
            value = figures[key]
            shown = f"{value:,.0f}" if value >= 100 or key in UNRATIOED else f"{value:,.2f}"
            if whole is not None and name != "whole" and whole[key] and key not in UNRATIOED:
                shown += f" ({value / whole[key]:.2f}×)"
            cells.append(shown)
        print(f"| {name} | {budgets.get(name, '')} | " + " | ".join(cells) + " |", flush=True)


def bars(results: dict[str, dict[str, dict[str, float]]]) -> None:
    """The issue's bars, where this run measured them."""
    pinned = results.get("serve", {}).get("pinned")
    if pinned is not None:
        print("\nserving pinned to one core (wrk on the other), single record, 64 connections:")
        print(f"  tabserve / bare ASGI pinned = {pinned['tabserve / bare']:.2f}x (required >= 0.4x)")
        print(f"  tabserve / plain FastAPI+ORT pinned = {pinned['tabserve / plain']:.2f}x (required >= 2.5x)")
        print(f"  tabserve p99 = {pinned['tabserve p99 ms']:.2f} ms (required <= 10 ms)")
    train = results.get("train", {})
    if "whole" in train and "busy" in train:
        ratio = train["busy"]["train s"] / train["whole"]["train s"]
        print(f"training beside a busy process / idle = {ratio:.2f}x (required <= 2x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--only", choices=("serve", "score", "train"), action="append", help="a part (repeatable)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, of " + ", ".join(SCENARIOS))
    add_models(parser)
    parser.add_argument("--rounds", type=int, default=3, help="serve: rotating rounds of the three servers")
    parser.add_argument("--seconds", type=int, default=5, help="serve: seconds per wrk run")
    parser.add_argument("--rows", type=int, default=1_000_000, help="score: rows of the CSV")
    parser.add_argument("--repeats", type=int, default=2, help="score: runs per scenario, the best counts")
    parser.add_argument("--train-repeats", type=int, default=1, help="train: runs per scenario, the median counts")
    args = parser.parse_args()
    if not shutil.which("wrk") and (not args.only or "serve" in args.only):
        sys.exit("wrk not found: apt-get install wrk")
    parts = args.only or ["serve", "score", "train"]
    names = [s for s in args.scenarios.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="tabserve-budget-") as folder:
        work = Path(folder)
        store = work / "models"
        if "serve" in parts or "score" in parts:  # training makes its own store
            shutil.copytree(churn_bundle(args.models), store / "churn" / "1")
        script = lua_script(telco_body(1), work, "body1")
        source = (
            build(Path("/tmp/tabserve-bench-score") / f"telco_{args.rows}.csv", args.rows) if "score" in parts else None
        )
        results: dict[str, dict[str, dict[str, float]]] = {part: {} for part in parts}
        budgets: dict[str, str] = {}
        print(f"machine: {os.cpu_count()} CPUs; parts {', '.join(parts)}; scenarios {', '.join(names)}", flush=True)
        for name in names:
            with scenario(name) as constraint:
                if constraint is None:
                    continue
                prefix, driver = constraint
                budgets[name] = budget_seen(prefix)
                print(f"{name}: tabserve's CPU budget {budgets[name]}", flush=True)
                for part in parts:
                    if part == "serve":
                        results[part][name] = serve_part(prefix, driver, store, script, args)
                    elif part == "score":
                        assert source is not None
                        results[part][name] = score_part(prefix, driver, store, source, args)
                    else:
                        results[part][name] = train_part(prefix, driver, args)
                    print(
                        f"  {part}: " + ", ".join(f"{k} {v:,.2f}" for k, v in results[part][name].items()), flush=True
                    )
        for part in parts:
            if results[part]:
                report(part, results[part], budgets)
        bars(results)


if __name__ == "__main__":
    main()
