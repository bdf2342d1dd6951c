"""A/B: the service from two checkouts under the same wrk load, alternating, on this machine.

    git worktree add /tmp/old HEAD~3                           # a checkout of the baseline
    (cd /tmp/old && python setup.py build_ext --inplace)       # its C accelerators (refused without)
    python bench/compare.py /tmp/old .                         # single record, 64 connections
    python bench/compare.py /tmp/old . --records 100 --pairs 8 # 100-record requests
    python bench/compare.py /tmp/old . --score                 # `tabserve score` of a 1 M-row CSV
    python bench/compare.py . . --b-flags "--log /tmp/tabserve-log" # one checkout: logging off (A) and on (B)
    python bench/compare.py . . --models STORE --b-flags=--shadow  # a store with a challenger: shadow off / on

On a shared machine, two benchmark runs minutes apart differ by more than most changes being
measured (±20 %). Here both servers run side by side (the idle one costs nothing) and each pair
runs A then B or B then A, alternating, 3 s each, so drift cancels out; the median of the B/A
ratios is the figure, beside the server's CPU time per request (A/B: what B's extra work would cost
in throughput where the server has the CPU to itself, far steadier than req/s here). Both serve the
same model store (`--models`: by default this checkout's models/, the churn bundle trained into it
first if absent). A checkout with a C accelerator's source but not its module built (`*.so` files are
not in git: a fresh worktree has none) runs the Python path: refused unless A and B miss the same ones;
one built before its source's last edit runs the older code: refused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import urllib.request
from pathlib import Path

from score import build, run_cli
from serve import add_models, churn_bundle, free_port, lua_script, server, telco_body, v2_body, wrk


def cli(checkout: Path) -> list[str]:
    """The `tabserve` command with the code of `checkout` (it comes first on sys.path)."""
    start = f"import sys; sys.path.insert(0, {str(checkout)!r}); from tabserve.cli import main; main()"
    return [sys.executable, "-c", start]


# the checkout's own report of its C accelerators (service/accelerators.py), the checkout first on sys.path;
# null where it has no such file (the editable install's finder would answer from the checkout it maps to)
PROBE = """
import json, pathlib, sys
sys.path.insert(0, sys.argv[1])
own = pathlib.Path(sys.argv[1], "service", "accelerators.py").exists()
if own:
    from service.accelerators import accelerators
print(json.dumps(accelerators() if own else None))
"""


def accelerators(checkout: Path) -> dict[str, bool]:
    """Whether each C accelerator of `checkout` imports, by its own service.accelerators ({} before it existed)."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(checkout)], capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout) or {})


def unbuilt(checkout: Path) -> dict[str, str]:
    """C sources with no module built for this Python, or one built before the source's last edit."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    found = {}
    for source in sorted(checkout.glob("service/**/*.c")):
        module = source.with_name(source.stem + suffix)
        if not module.exists():
            found[str(source.relative_to(checkout))] = "not built"
        elif module.stat().st_mtime < source.stat().st_mtime:
            found[str(source.relative_to(checkout))] = "built before its last edit"
    return found


def same_accelerators(checkouts: dict[str, Path]) -> None:
    """Refuse checkouts that run different C code: a module missing on one side only (its Python path
    runs instead), or built before its source was edited (it imports, but runs the older code)."""
    problems: dict[str, list[str]] = {}
    for name, path in checkouts.items():
        built = accelerators(path)
        print(f"{name} ({path}): C accelerators " + (", ".join(m for m, ok in built.items() if ok) or "none"))
        problems[name] = [f"{m} missing" for m, ok in built.items() if not ok]
        problems[name] += [f"{source} {why}" for source, why in unbuilt(path).items()]
    outdated = any("before" in problem for found in problems.values() for problem in found)
    if len({repr(found) for found in problems.values()}) == 1 and not outdated:
        return  # the same ones missing on every side (or none): the same code
    lines = [
        f"{name} ({checkouts[name]}): {', '.join(found)}: "
        f"(cd {checkouts[name]} && {sys.executable} setup.py build_ext --inplace)"
        for name, found in problems.items()
        if found
    ]
    sys.exit(f"refused: {' and '.join(checkouts)} would not run the same C code\n" + "\n".join(lines))


def command(checkout: Path, models: Path, port: int, flags: str = "") -> list[str]:
    """`tabserve serve` with the code of `checkout` (it comes first on sys.path) and extra flags."""
    return [
        *cli(checkout),
        *("serve", "--models", str(models), "--threads", "1"),
        *("--log-level", "warning", "--port", str(port), *shlex.split(flags)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("a", type=Path, help="checkout A (the baseline)")
    parser.add_argument("b", type=Path, help="checkout B (the change)")
    add_models(parser)
    parser.add_argument("--records", type=int, default=1, help="records per request")
    parser.add_argument("--v2", action="store_true", help="send KServe V2 requests instead of /predict")
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--score", action="store_true", help="time `tabserve score` of a CSV instead")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the CSV (--score)")
    parser.add_argument("--a-flags", default="", help="extra flags for A's `tabserve serve` (`score` with --score)")
    parser.add_argument("--b-flags", default="", help="extra flags for B's `tabserve serve` (e.g. --log DIR)")
    args = parser.parse_args()
    same_accelerators({"A": args.a.resolve(), "B": args.b.resolve()})
    churn_bundle(args.models)
    if args.score:
        compare_scoring(args)
        return
    body = telco_body(args.records)
    route = "/v2/models/churn/infer" if args.v2 else "/predict"
    urls, pids = {}, {}
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tabserve-ab-")))
        script = lua_script(v2_body(body) if args.v2 else body, folder, "body")
        for name, checkout, flags in (("A", args.a.resolve(), args.a_flags), ("B", args.b.resolve(), args.b_flags)):
            port = free_port()
            proc = stack.enter_context(server(command(checkout, args.models, port, flags), port, {}, "/health/ready"))
            pids[name] = proc.pid
            urls[name] = f"http://127.0.0.1:{port}{route}"
            wrk(urls[name], script, 16, 1)  # warm-up
        ratios, p99s, costs = [], [], []
        for i in range(args.pairs):
            order = ["A", "B"] if i % 2 == 0 else ["B", "A"]
            got, cpu = {}, {}
            for name in order:
                before = cpu_s(pids[name])
                got[name] = wrk(urls[name], script, args.conns, args.seconds)
                cpu[name] = (cpu_s(pids[name]) - before) / (got[name][0] * args.seconds) * 1e6  # µs a request
            ratios.append(got["B"][0] / got["A"][0])
            p99s.append(got["B"][2] / got["A"][2])
            costs.append(cpu["A"] / cpu["B"])
            print(
                f"pair {i + 1}: A {got['A'][0]:,.0f} req/s (p99 {got['A'][2]:.1f} ms, {cpu['A']:.0f} CPU-µs), "
                f"B {got['B'][0]:,.0f} req/s (p99 {got['B'][2]:.1f} ms, {cpu['B']:.0f} CPU-µs), B/A {ratios[-1]:.2f}",
                flush=True,
            )
        for name, url in urls.items():  # what a prediction log or a shadow did, when one is on
            scraped = urllib.request.urlopen(url[: url.index("/", 8)] + "/metrics").read().decode()
            lines = [x for x in scraped.splitlines() if x.startswith(("tabserve_log_", "tabserve_shadow_"))]
            if lines:
                print(f"{name}: " + "; ".join(lines))
    print(
        f"{args.records}-record requests, {args.conns} connections: B/A median {statistics.median(ratios):.2f}, "
        f"p99 B/A median {statistics.median(p99s):.2f}, server CPU per request A/B median {statistics.median(costs):.2f}"
    )


def cpu_s(pid: int) -> float:
    """CPU seconds a process has used, all its threads (user + system): the server's cost per
    request varies far less than its throughput on a shared machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def compare_scoring(args: argparse.Namespace) -> None:
    """B/A of the rows/s `tabserve score` reports for one CSV, runs alternating as for the service
    (--a-flags and --b-flags go to each side's `tabserve score`)."""
    source = build(Path("/tmp/tabserve-bench-score") / f"telco_{args.rows}.csv", args.rows)
    checkouts = {"A": args.a.resolve(), "B": args.b.resolve()}
    flags = {"A": shlex.split(args.a_flags), "B": shlex.split(args.b_flags)}
    ratios = []
    with tempfile.TemporaryDirectory(prefix="tabserve-ab-score-") as work:

        def rate(name: str) -> float:
            target = Path(work) / f"{name}.csv"
            return run_cli("churn", args.models, source, target, flags[name], command=cli(checkouts[name]))[0]

        for i in range(args.pairs):
            order = ["A", "B"] if i % 2 == 0 else ["B", "A"]
            got = {name: rate(name) for name in order}
            ratios.append(got["B"] / got["A"])
            print(f"pair {i + 1}: A {got['A']:,.0f} rows/s, B {got['B']:,.0f} rows/s, B/A {ratios[-1]:.2f}", flush=True)
    print(f"CSV scoring, {args.rows:,} rows: B/A median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
