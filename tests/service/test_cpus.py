"""The CPU budget: affinity, cgroup v1/v2 quotas read from real files, the setting, and what uses it."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from service import bundle
from service.cpus import CpuBudget, cpu_budget
from service.runtime import session_options
from service.scoring.local import scoring_workers
from tests.service.conftest import copy_store, running_server, telco_records

AFFINITY = len(os.sched_getaffinity(0))


def fake_root(tmp: Path, version: int, member: str, quotas: dict[str, str], mount_root: str = "/") -> Path:
    """A /proc and /sys/fs/cgroup tree as a container shows it: this process in cgroup `member`,
    `quotas` the cpu.max (v2) or "quota period" (v1) text of cgroup directories."""
    root = tmp / "root"
    (root / "proc/self").mkdir(parents=True)
    if version == 2:
        mount = "/sys/fs/cgroup"
        line = f"30 23 0:26 {mount_root} {mount} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"
        membership = f"0::{member}\n"
    else:
        mount = "/sys/fs/cgroup/cpu,cpuacct"
        line = f"32 31 0:29 {mount_root} {mount} rw,relatime - cgroup cgroup rw,cpu,cpuacct"
        membership = f"5:memory:{member}\n4:cpu,cpuacct:{member}\n"
    tmpfs = "25 23 0:24 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755"
    (root / "proc/self/mountinfo").write_text(f"22 1 0:21 / / rw - ext4 /dev/vda rw\n{tmpfs}\n{line}\n")
    (root / "proc/self/cgroup").write_text(membership)
    for directory, text in quotas.items():
        folder = root / mount.lstrip("/") / directory.lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        if version == 2:
            (folder / "cpu.max").write_text(text + "\n")
        else:
            quota, period = text.split()
            (folder / "cpu.cfs_quota_us").write_text(quota + "\n")
            (folder / "cpu.cfs_period_us").write_text(period + "\n")
    return root


def test_v2_no_limit_leaves_the_affinity(tmp_path: Path) -> None:
    budget = cpu_budget(root=fake_root(tmp_path, 2, "/", {"/": "max 100000"}))
    assert (budget.cpus, budget.quota, budget.setting) == (AFFINITY, None, None)
    assert budget.affinity == AFFINITY


def test_v2_half_a_cpu_is_one_cpu(tmp_path: Path) -> None:
    budget = cpu_budget(root=fake_root(tmp_path, 2, "/", {"/": "50000 100000"}))
    assert (budget.cpus, budget.quota) == (1, 0.5)
    assert "cgroup quota 0.5 CPUs" in budget.source


def test_v2_fraction_rounds_down(tmp_path: Path) -> None:
    budget = cpu_budget(root=fake_root(tmp_path, 2, "/", {"/": "150000 100000"}))
    assert budget.quota == 1.5
    assert budget.cpus == min(AFFINITY, 1)  # a thread past the quota is throttled, not half-used


def test_v2_tightest_limit_on_the_path_counts(tmp_path: Path) -> None:
    quotas = {"/kubepods/pod1": "100000 100000", "/kubepods/pod1/app": "max 100000", "/": "max 100000"}
    budget = cpu_budget(root=fake_root(tmp_path, 2, "/kubepods/pod1/app", quotas))
    assert (budget.cpus, budget.quota) == (1, 1.0)
    assert "/sys/fs/cgroup/kubepods/pod1" in budget.source


def test_v2_container_sees_its_cgroup_as_the_mount(tmp_path: Path) -> None:
    """No cgroup namespace: /proc/self/cgroup names the host's path, the mount is that path's folder."""
    root = fake_root(tmp_path, 2, "/docker/abc", {"/": "100000 100000"}, mount_root="/docker/abc")
    assert cpu_budget(root=root).quota == 1.0


def test_v1_quota_over_period(tmp_path: Path) -> None:
    budget = cpu_budget(root=fake_root(tmp_path, 1, "/kubepods/pod1", {"/kubepods/pod1": "50000 100000"}))
    assert (budget.cpus, budget.quota) == (1, 0.5)
    assert "cpu,cpuacct/kubepods/pod1" in budget.source


def test_v1_minus_one_is_no_limit(tmp_path: Path) -> None:
    budget = cpu_budget(root=fake_root(tmp_path, 1, "/", {"/": "-1 100000"}))
    assert (budget.cpus, budget.quota) == (AFFINITY, None)


def test_setting_wins_over_the_quota_up_to_the_affinity(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An audit: `--cpus 1000` on two cores sized each ONNX Runtime session 999 threads (2,007 in the
    process): threads past the cores in reach only take turns. The setting is capped there, and said."""
    root = fake_root(tmp_path, 2, "/", {"/": "50000 100000"})
    budget = cpu_budget(AFFINITY, root=root)
    assert (budget.cpus, budget.quota, budget.setting) == (AFFINITY, 0.5, AFFINITY)
    assert f"TABSERVE_CPUS {AFFINITY}" in budget.source and not caplog.text
    budget = cpu_budget(1000, root=root)
    assert (budget.cpus, budget.setting) == (AFFINITY, 1000)
    assert f"--cpus/TABSERVE_CPUS 1000 is more than the {AFFINITY} CPU(s) in reach" in caplog.text


@pytest.mark.parametrize(
    ("version", "text"),
    [(v, t) for v in (1, 2) for t in ["abc 100000", "100000 abc", "1e5 100000", ""]] + [(2, "50000")],
)
def test_a_quota_file_that_holds_no_numbers_is_no_limit_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, version: int, text: str
) -> None:
    """An audit: these were a ZeroDivisionError or ValueError traceback from every command, `--cpus` or not."""
    root = fake_root(tmp_path, version, "/", {"/": "50000 100000"})
    quota = next(root.rglob("cpu.max" if version == 2 else "cpu.cfs_quota_us"))
    quota.write_text(text if version == 2 else text.split(" ")[0])
    if version == 1 and " " in text:
        quota.with_name("cpu.cfs_period_us").write_text(text.split(" ")[1])
    assert (cpu_budget(1, root=root).cpus, caplog.text) == (1, "")  # a review: it said to set --cpus, which was set
    assert cpu_budget(root=root).quota is None
    assert "no quota and period: read as no limit: set --cpus or TABSERVE_CPUS" in caplog.text


@pytest.mark.parametrize("text", ["100000 0", "0 100000", "-50000 100000"])
def test_a_quota_of_no_time_is_no_limit_in_v2_as_in_v1(tmp_path: Path, text: str) -> None:
    assert cpu_budget(root=fake_root(tmp_path, 2, "/", {"/": text})).quota is None


def test_a_cgroup_that_cannot_be_read_is_said_and_the_rest_still_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Membership that is not UTF-8 was a UnicodeDecodeError; a quota file that cannot be read (here a
    folder in its place) dropped the limit without a word."""
    root = fake_root(tmp_path, 2, "/app", {"/app": "50000 100000", "/": "max 100000"})
    (root / "proc/self/cgroup").write_bytes(b"0::/app\n1:name=\xff\xfe:/x\n".decode("unicode_escape").encode("latin-1"))
    assert cpu_budget(root=root).quota == 0.5
    cpu_max = root / "sys/fs/cgroup/app/cpu.max"
    cpu_max.unlink()
    cpu_max.mkdir()
    assert cpu_budget(root=root).quota is None
    assert f"cannot read {cpu_max} (Is a directory): a CPU quota there is not known" in caplog.text


def test_no_proc_files_means_no_quota(tmp_path: Path) -> None:
    assert cpu_budget(root=tmp_path).quota is None


def test_this_machine_against_its_affinity() -> None:
    budget = cpu_budget()
    assert budget.affinity == AFFINITY
    assert 1 <= budget.cpus <= AFFINITY


def test_a_pinned_process_has_one_cpu() -> None:
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from service.cpus import cpu_budget; b = cpu_budget(); print(b.cpus, b.source)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "1"


@pytest.mark.parametrize(
    ("cpus", "workers", "each", "threads"), [(8, 1, 8, 7), (8, 3, 2, 1), (2, 4, 1, 1), (2, 1, 2, 1), (1, 1, 1, 1)]
)
def test_workers_split_the_budget(cpus: int, workers: int, each: int, threads: int) -> None:
    budget = CpuBudget(cpus, "test", cpus, None, None)
    assert (budget.per_worker(workers), budget.serving_threads(workers)) == (each, threads)


@pytest.mark.parametrize(
    ("cpus", "affinity", "workers", "on_loop"), [(1, 8, 1, True), (1, 1, 1, False), (2, 2, 2, True), (4, 4, 1, False)]
)
def test_one_cpu_of_several_runs_inference_on_the_loop(cpus: int, affinity: int, workers: int, on_loop: bool) -> None:
    assert CpuBudget(cpus, "test", affinity, None, None).inference_on_loop(workers) == on_loop


def test_scoring_threads_follow_the_budget() -> None:
    assert [scoring_workers(n) for n in (1, 2, 16)] == [1, 2, 2]


def test_onnx_runtime_pool_never_spins() -> None:
    opts = session_options(4)
    assert opts.intra_op_num_threads == 4
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def test_version_shows_the_budget() -> None:
    cmd = [sys.executable, "-m", "tabserve.cli", "--version"]
    cases = [("1", "CPU budget: 1 CPU "), ("1000", f"CPU budget: {AFFINITY} CPUs (--cpus/TABSERVE_CPUS 1000")]
    # an audit: ' 1' was refused here and read by `serve`, and '' read as unset here and refused by `serve`
    cases += [(" 1 ", "CPU budget: 1 CPU "), ("", f"CPU budget: {AFFINITY} CPU")]
    for setting, said in cases:
        run = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "TABSERVE_CPUS": setting}, timeout=60
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("tabserve ")
        assert said in run.stdout and "C accelerators:" in run.stdout


@pytest.mark.skipif(AFFINITY < 2, reason="a setting of several CPUs: needs two cores in the affinity mask")
def test_service_sizes_onnx_runtime_from_the_budget(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    with running_server(store, "--cpus", str(AFFINITY)) as server:
        cpus = httpx.get(server.url + "/models").json()["cpus"]
        setting = (cpus["cpus"], cpus["setting"], cpus["workers"], cpus["threads_per_worker"])
        assert setting == (AFFINITY, AFFINITY, 1, AFFINITY - 1)  # one CPU for the event loop
        assert cpus["inference"] == "thread"
        assert f"CPU budget: {AFFINITY} CPUs (--cpus/TABSERVE_CPUS {AFFINITY})" in server.output()


@pytest.mark.skipif(AFFINITY < 2, reason="two workers' share: needs two cores in the affinity mask")
def test_workers_split_the_budget_in_the_service(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    with running_server(store, "--workers", "2", env={"TABSERVE_CPUS": str(AFFINITY)}) as server:
        cpus = httpx.get(server.url + "/models").json()["cpus"]
        each = AFFINITY // 2
        assert (cpus["cpus"], cpus["workers"], cpus["threads_per_worker"]) == (AFFINITY, 2, max(1, each - 1))
        where = "the event loop" if each == 1 else "the inference thread"
        assert f"2 worker(s), {max(1, each - 1)} ONNX Runtime thread(s) each, run on {where}" in server.output()


@pytest.mark.skipif(AFFINITY < 2, reason="one CPU of several: needs two cores in the affinity mask")
def test_one_cpu_of_two_serves_from_the_event_loop(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    records = telco_records(40)
    with running_server(store, "--cpus", "1") as server:
        cpus = httpx.get(server.url + "/models").json()["cpus"]
        assert (cpus["cpus"], cpus["threads_per_worker"], cpus["inference"]) == (1, 1, "loop")
        assert "run on the event loop" in server.output()
        with ThreadPoolExecutor(8) as pool:  # concurrent requests: batches form on the loop
            answers = list(pool.map(lambda r: httpx.post(server.url + "/predict", json={"records": [r]}), records))
        together = httpx.post(server.url + "/predict", json={"records": records}).json()["predictions"]
    assert [a.json()["predictions"][0]["label"] for a in answers] == [p["label"] for p in together]
    probabilities = [a.json()["predictions"][0]["probability"] for a in answers]
    assert probabilities == pytest.approx([p["probability"] for p in together], abs=1e-6)


def test_an_empty_setting_is_unset_for_the_service_as_for_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import Settings

    monkeypatch.setenv("TABSERVE_CPUS", "")
    monkeypatch.setenv("TABSERVE_PORT", "")
    assert (Settings().cpus, Settings().port) == (None, 8000)
    monkeypatch.setenv("TABSERVE_CPUS", " 2 ")
    assert Settings().cpus == 2
