"""The CPU budget: how many CPUs this process may really use (docs/operations.md#cpu-budget).

The affinity mask (taskset, a cpuset), the cgroup CPU quota (a container's CPU limit, v2 `cpu.max`
or v1 `cpu.cfs_quota_us`) and an explicit setting (`--cpus`, `TABSERVE_CPUS`) that wins over the
quota, up to the affinity.
A fractional quota is rounded down: a thread more than the quota pays for is stopped for the rest of
each quota period, a latency spike, where a thread fewer only leaves the fraction unused.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("tabserve.cpus")
_said: set[str] = set()  # warnings given: the budget is read once per process and worker, said once


@dataclass(frozen=True)
class CpuBudget:
    """CPUs to size thread pools and workers by, and where that figure came from."""

    cpus: int  # whole CPUs, at least 1
    source: str  # why: "affinity 1 of 2 cores", "cgroup quota 1.5 CPUs", "--cpus/TABSERVE_CPUS 2"
    affinity: int  # CPUs in the affinity mask
    quota: float | None  # the cgroup quota in CPUs (None: no limit found)
    setting: int | None  # the explicit setting, if any

    def per_worker(self, workers: int) -> int:
        """Each of `workers` processes' share: the budget is split between them, never multiplied."""
        return max(1, self.cpus // max(1, workers))

    def serving_threads(self, workers: int) -> int:
        """ONNX Runtime threads for each of `workers` serving processes: its share less the CPU its
        event loop keeps busy, at least one (BENCHMARKS.md: a second thread on two CPUs cost 10 %)."""
        return max(1, self.per_worker(workers) - 1)

    def inference_on_loop(self, workers: int) -> bool:
        """Whether a serving worker runs ORT on its event loop: with one CPU it gains nothing from a
        second thread, and where more cores are in reach (a quota, `--cpus 1`, workers splitting the
        budget) the two would spend that CPU in parallel, under a quota throttled for the rest of the period
        (BENCHMARKS.md)."""
        return self.per_worker(workers) == 1 and self.affinity > 1

    def to_json(self) -> dict[str, Any]:
        """As GET /models shows it."""
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.cpus} CPU{'s' if self.cpus != 1 else ''} ({self.source})"


def cpu_budget(setting: int | None = None, root: Path | str = "/") -> CpuBudget:
    """The budget of this process: `setting` if given, else min(affinity, cgroup quota rounded down).

    `root` is where /proc and /sys are looked up (a test's fake tree)."""
    root = Path(root)
    cores = os.cpu_count() or 1
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    problems: list[str] = []
    quota, where = cgroup_quota(root, problems)
    for problem in problems if setting is None else []:  # with a setting, what the quota files hold is moot
        _warn(problem + ": set --cpus or TABSERVE_CPUS")
    if setting is not None and setting > affinity:  # threads past the cores in reach only take turns on them
        _warn(
            f"--cpus/TABSERVE_CPUS {setting} is more than the {affinity} CPU(s) in reach (the affinity mask): {affinity} used"
        )
        return CpuBudget(
            affinity, f"--cpus/TABSERVE_CPUS {setting}, the affinity's {affinity}", affinity, quota, setting
        )
    if setting is not None:
        return CpuBudget(setting, f"--cpus/TABSERVE_CPUS {setting}", affinity, quota, setting)
    if quota is not None and math.floor(quota) < affinity:
        cpus = max(1, math.floor(quota))
        return CpuBudget(
            cpus, f"cgroup quota {quota:g} CPU{'' if quota == 1 else 's'} at {where}", affinity, quota, None
        )
    reason = f"affinity {affinity} of {cores} cores" if affinity < cores else f"all {cores} cores"
    return CpuBudget(affinity, reason, affinity, quota, None)


def cgroup_quota(root: Path, problems: list[str] | None = None) -> tuple[float | None, str]:
    """The tightest CPU quota on this process's cgroup and its parents, in CPUs, and the file it is in;
    a quota file that cannot be read, or holds no numbers, is read as no limit and added to `problems`."""
    found: list[tuple[float, str]] = []
    problems = [] if problems is None else problems
    for version, directory, top in _cpu_cgroups(root):
        while True:
            quota = _quota_v2(directory, problems) if version == 2 else _quota_v1(directory, problems)
            if quota is not None:
                found.append((quota, "/" + str(directory.relative_to(root))))
            if directory == top:
                break
            directory = directory.parent
    return min(found) if found else (None, "")


def _cpu_cgroups(root: Path) -> list[tuple[int, Path, Path]]:
    """(cgroup version, this process's directory, the mount's top) for each mounted CPU controller."""
    try:
        mountinfo = (root / "proc/self/mountinfo").read_text(errors="replace")
        memberships = (root / "proc/self/cgroup").read_text(errors="replace")
    except OSError:
        return []
    paths: dict[str, str] = {}  # "" for v2, else the v1 controller list ("cpu,cpuacct")
    for line in memberships.splitlines():
        if line.count(":") >= 2:
            _, controllers, member = line.split(":", 2)
            paths[controllers] = member
    out = []
    for line in mountinfo.splitlines():
        fields, _, tail = line.partition(" - ")
        parts, kinds = fields.split(), tail.split()
        if len(parts) < 5 or len(kinds) < 3:
            continue
        mount_root, mount_point = parts[3], root / parts[4].lstrip("/")
        path: str | None = None
        if kinds[0] == "cgroup2":
            path, version = paths.get(""), 2
        elif kinds[0] == "cgroup" and "cpu" in kinds[2].split(","):
            path, version = next((p for c, p in paths.items() if "cpu" in c.split(",")), None), 1
        if path is None:
            continue
        out.append((version, _inside(mount_point, mount_root, path), mount_point))
    return out


def _inside(mount_point: Path, mount_root: str, path: str) -> Path:
    """The process's cgroup directory under a mount (a container sees its own cgroup as the mount's top)."""
    relative = os.path.relpath(path, mount_root) if path.startswith(mount_root) else "."
    directory = (mount_point / relative).resolve() if relative != "." else mount_point
    try:
        inside = directory.is_relative_to(mount_point.resolve()) and directory.is_dir()
    except OSError:  # a folder this user may not enter
        inside = False
    return directory if inside else mount_point


def _quota_v2(directory: Path, problems: list[str]) -> float | None:
    """`cpu.max`: "max 100000" is no limit, "150000 100000" is 1.5 CPUs."""
    text = _read(directory / "cpu.max", problems)
    if text is None or text.split()[:1] == ["max"]:
        return None
    return _ratio(directory / "cpu.max", text.split()[:2], problems)


def _quota_v1(directory: Path, problems: list[str]) -> float | None:
    """`cpu.cfs_quota_us` over `cpu.cfs_period_us`; -1 is no limit."""
    limit = _read(directory / "cpu.cfs_quota_us", problems)
    period = _read(directory / "cpu.cfs_period_us", problems)
    if limit is None or period is None:
        return None
    return _ratio(directory / "cpu.cfs_quota_us", [limit, period], problems)


def _read(path: Path, problems: list[str]) -> str | None:
    """A cgroup file's text; None where there is none, or it cannot be read (a problem)."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:  # no controller file at this level: no limit set here
        return None
    except OSError as exc:
        problems.append(f"cannot read {path} ({exc.strerror}): a CPU quota there is not known")
        return None


def _ratio(path: Path, fields: list[str], problems: list[str]) -> float | None:
    """Quota over period in CPUs; None (no limit) for -1 or 0, and for what is no number (a problem)."""
    try:
        limit, period = (int(f) for f in fields)
    except ValueError:  # also fewer than two fields
        shown = " ".join(f.strip() for f in fields)
        problems.append(f"{path} holds {shown!r}, no quota and period: read as no limit")
        return None
    return limit / period if limit > 0 and period > 0 else None


def _warn(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.warning(message)
