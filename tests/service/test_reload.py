"""Hot reload under load, broken bundles, the queue limit, and the execution-provider logic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service import bundle, release
from service.runtime import CPU_EP, CUDA_EP, ProviderError, cuda_devices, providers_for
from tests.service.conftest import copy_store, republish, running_server, telco_records, wait_until


async def _hammer(url: str, stop: asyncio.Event, seen: list[tuple[int, int]]) -> None:
    records = telco_records(3)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while not stop.is_set():
            r = await client.post("/predict", json={"records": records})
            seen.append((r.status_code, r.json().get("version", -1)))


def test_new_version_swaps_in_under_load_with_zero_failures(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    with running_server(store) as server:

        async def main() -> list[tuple[int, int]]:
            stop, seen = asyncio.Event(), []
            clients = [asyncio.create_task(_hammer(server.url, stop, seen)) for _ in range(16)]
            await asyncio.sleep(0.5)
            await asyncio.to_thread(republish, store, churn_bundle)  # what a re-run of `train` does
            deadline = time.monotonic() + 60
            while not any(v == 2 for _, v in seen[-50:]) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*clients)
            return seen

        seen = asyncio.run(main())
    statuses = {s for s, _ in seen}
    assert statuses == {200}, f"failed requests during reload: {statuses}"
    versions = [v for _, v in seen]
    assert versions[0] == 1 and versions[-1] == 2 and len(seen) > 100
    assert versions.index(2) > 0 and all(v == 2 for v in versions[versions.index(2) + 32 :])


def test_retire_rolls_back_and_never_reuses_the_number(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    assert republish(store, churn_bundle).version == 2
    with running_server(store, "--admin-token", "t", "--poll-interval-s", "0") as server:
        assert httpx.post(server.url + "/predict", json={"records": telco_records(1)}).json()["version"] == 2
        run = subprocess.run(
            [sys.executable, "-m", "tabserve.cli", "retire", "churn", "--models", str(store)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0 and "retired churn version 2" in run.stdout and "version 1 serves" in run.stdout
        assert (store / "churn" / "2.retired" / bundle.MODEL_FILE).is_file() and bundle.versions(store, "churn") == [1]
        reload = httpx.post(server.url + "/admin/reload", headers={"authorization": "Bearer t"}).json()
        assert reload["current"] == {"churn": 1}
        assert httpx.post(server.url + "/predict", json={"records": telco_records(1)}).json()["version"] == 1
        assert "rolled back churn: version 1 serves again (was 2)" in server.output()
        # the next training run gets a new number: "churn 2" keeps naming the retired model
        assert republish(store, churn_bundle).version == 3
        reload = httpx.post(server.url + "/admin/reload", headers={"authorization": "Bearer t"}).json()
        assert reload["current"] == {"churn": 3}
    with pytest.raises(bundle.BundleError, match="no published version '2'"):
        bundle.retire(store, "churn@2")
    # nor a number deleted by hand once the release file has named it (a running service still
    # held the deleted model under it, and a gate decision on it was taken for the champion's)
    release.decide(store, "churn", "promote", 3)
    shutil.rmtree(store / "churn" / "3")
    assert republish(store, churn_bundle).version == 4
    bundle.retire(store, "churn@1")
    with pytest.raises(bundle.BundleError, match="only published version"):
        bundle.retire(store, "churn")


def _edited(path: Path, **changes: object) -> None:
    """preprocess.json with `changes` (a hand edit)."""
    doc = json.loads((path / bundle.PREPROCESS_FILE).read_text())
    (path / bundle.PREPROCESS_FILE).write_text(json.dumps({**doc, **changes}))


def _fifo(path: Path) -> None:
    (path / bundle.PREPROCESS_FILE).unlink()
    os.mkfifo(path / bundle.PREPROCESS_FILE)


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: (p / bundle.MODEL_FILE).write_bytes(b"this is not onnx"),
        lambda p: (p / bundle.PREPROCESS_FILE).write_text("{ not json"),
        lambda p: (p / bundle.PREPROCESS_FILE).unlink(),
        # a store audit: these loaded, and served classes N and Y, a regression, or a 500 on every request
        lambda p: _edited(p, labels="NY"),
        lambda p: _edited(p, task="foo"),
        lambda p: _edited(p, threshold="0.5"),
        lambda p: _edited(p, positive="Maybe"),
        _fifo,  # its read blocked the loader for good, holding the store's lock
    ],
    ids=["corrupt-onnx", "bad-json", "missing-file", "labels-text", "task", "threshold-text", "positive", "fifo"],
)
def test_broken_bundle_is_refused_and_old_version_keeps_serving(
    churn_bundle: bundle.BundleRef, tmp_path: Path, damage: object
) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    with running_server(store, "--admin-token", "t", "--poll-interval-s", "0") as server:
        broken = store / "churn" / "2"
        broken.mkdir()
        for item in churn_bundle.path.iterdir():
            (broken / item.name).write_bytes(item.read_bytes())
        damage(broken)  # type: ignore[operator]
        report = httpx.post(server.url + "/admin/reload", headers={"authorization": "Bearer t"}, timeout=30).json()
        assert list(report["failed"]) == ["churn@2"] and report["current"] == {"churn": 1}
        assert bundle.MODEL_FILE in report["failed"]["churn@2"] or bundle.PREPROCESS_FILE in report["failed"]["churn@2"]
        r = httpx.post(server.url + "/predict", json={"records": telco_records(2)})
        assert r.status_code == 200 and r.json()["version"] == 1
        assert "refusing bundle" in server.output()
        metrics = httpx.get(server.url + "/metrics").text
        assert 'tabserve_reloads_total{outcome="failed"} 1.0' in metrics


def test_full_queue_answers_503_with_retry_after(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    flags = ("--max-queue", "2", "--max-delay-ms", "300", "--max-batch-size", "100000")
    with running_server(store, *flags) as server:

        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                calls = [client.post("/predict", json={"records": telco_records(1)}) for _ in range(12)]
                return await asyncio.gather(*calls)

        responses = asyncio.run(main())
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]


def test_batching_off_still_answers(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    with running_server(store, "--no-batching") as server:
        r = httpx.post(server.url + "/predict", json={"records": telco_records(3)})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 3
        assert "tabserve_batch_rows_count" in httpx.get(server.url + "/metrics").text


def test_empty_store_is_live_but_not_ready_until_a_bundle_appears(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    store = tmp_path / "models"  # not made yet: a typo in the path is said in the log
    with running_server(store, ready=False) as server:
        empty = httpx.get(server.url + "/health/ready")  # the store read, nothing in it: not "loading"
        for _ in range(50):  # the first read of the store runs beside the server's start
            if empty.json()["status"] != "loading":
                break
            time.sleep(0.1)
            empty = httpx.get(server.url + "/health/ready")
        assert empty.status_code == 503 and empty.json()["status"] == "no models"
        assert f"{store} holds no servable bundle" in empty.json()["why"]
        assert httpx.post(server.url + "/predict", json={"records": telco_records(1)}).status_code == 503
        assert f"no loadable bundles in {store} (no such folder: a typo?) yet" in server.output()
        republish(store, churn_bundle)
        wait_until(server, "/health/ready")
        assert httpx.post(server.url + "/predict", json={"records": telco_records(1)}).status_code == 200


def test_provider_selection() -> None:
    both = [CUDA_EP, CPU_EP]
    assert providers_for("cpu", both, gpus=1) == [CPU_EP]
    assert providers_for("auto", both, gpus=1) == [CUDA_EP, CPU_EP]
    assert providers_for("auto", both, gpus=0) == [CPU_EP]
    assert providers_for("auto", [CPU_EP], gpus=1) == [CPU_EP]
    with pytest.raises(ProviderError, match="no CUDA device"):
        providers_for("cuda", both, gpus=0)
    with pytest.raises(ProviderError, match="no CUDAExecutionProvider"):
        providers_for("cuda", [CPU_EP], gpus=1)


@pytest.mark.skipif(cuda_devices() > 0, reason="this machine has a GPU: strict cuda starts")
def test_strict_cuda_refuses_to_start_without_a_gpu(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "tabserve.cli", "serve", "--models", str(tmp_path), "--device", "cuda"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert run.returncode == 2
    assert "device=cuda" in run.stderr and len(run.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(cuda_devices() > 0, reason="this machine has a GPU")
def test_auto_device_starts_quietly_on_cpu(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    with running_server(store, "--device", "auto") as server:
        ready = httpx.get(server.url + "/health/ready").json()
        log = server.output()
    assert ready["models"]["churn"]["provider"] == CPU_EP
    assert log.count("serving on CPUExecutionProvider") == 1
    assert "libcublas" not in log and "Failed to load" not in log


@pytest.mark.skipif(cuda_devices() == 0, reason="needs a CUDA GPU (runs on the device machine)")
def test_cuda_provider_is_really_used(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    with running_server(store, "--device", "cuda") as server:
        ready = httpx.get(server.url + "/health/ready").json()
        assert ready["models"]["churn"]["provider"] == CUDA_EP
        r = httpx.post(server.url + "/predict", json={"records": telco_records(64)})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 64
        # the CPU's answers, to float32 rounding: TF32 products (ORT's default on the GPU) missed this
        from tests.service.test_api import direct

        want = direct(server, telco_records(64))[:, 1]
        assert np.abs(np.array([p["probability"] for p in r.json()["predictions"]]) - want).max() < 1e-6


def test_a_version_loaded_by_number_then_promoted_is_not_closed_by_the_cache(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    from service import release
    from service.settings import Settings
    from service.store import ModelStore
    from service.telemetry import Telemetry

    store_dir = copy_store(churn_bundle, tmp_path / "models")
    release.decide(store_dir, "churn", "promote", 1, why="first")
    republish(store_dir, churn_bundle)
    store = ModelStore(Settings(models_dir=store_dir, older_versions=1, device="cpu"), Telemetry())

    async def scenario() -> None:
        await store.refresh()
        asked = await store.get_version("churn", 2)  # held in the cache of versions asked for by number
        release.decide(store_dir, "churn", "promote", 2, why="better")
        await store.refresh()
        assert store.current["churn"] is asked and asked not in store.older.values()
        await store.get_version("churn", 1)  # fills the one-entry cache: must not close the champion
        enc = asked.pre.encode_records(telco_records(2))
        assert (await asked.infer(enc)).shape == (2, 2)
        assert not asked.batcher._closed  # NOTE: a closed batcher still answers, one thread per request
        for model in [*store.current.values(), *store.older.values()]:
            model.close()

    asyncio.run(scenario())


def test_broken_newest_versions_and_folders_that_are_no_versions_leave_the_last_good_one_serving_at_start(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """A store audit: each broken newest version cost a poll before the next was tried (503 meanwhile);
    a folder `²` (a digit to Python, not to int()) stopped the service from starting, one of 20 digits
    loaded as champion and failed every request with a 500, and `007` was version 7 at `7/`."""
    store = copy_store(churn_bundle, tmp_path / "models")
    for name in ["2", "3", "\u00b2", "007", "9" * 20]:
        shutil.copytree(churn_bundle.path, store / "churn" / name)
    for broken in ["2", "3"]:
        (store / "churn" / broken / bundle.MODEL_FILE).write_bytes(b"")
    shutil.copytree(churn_bundle.path, store / "My Model" / "1")
    assert bundle.versions(store, "churn") == [1, 2, 3]
    with running_server(store, "--poll-interval-s", "3600", "--admin-token", "t") as server:  # the first scan alone
        answer = httpx.post(server.url + "/predict", json={"records": telco_records(2)})
        assert answer.status_code == 200 and answer.json()["version"] == 1, answer.text
        assert "Traceback" not in server.output()
        for name in ["\u00b2", "007", "9" * 20]:  # said once each, not left without a word
            assert server.output().count(f"{store / 'churn' / name} is no version (1 to 18 digits") == 1
        assert f"{store / 'My Model'} is no model name: left alone" in server.output()
        # a version as a user names it may have leading zeros, as a URL's may (`churn@01` was refused)
        assert release.resolve(store, "churn@01").version == 1
        assert httpx.get(server.url + "/v2/models/churn/versions/01/ready").status_code == 200
        # the model's folder moved away: it serves on as loaded, said (it was without a word)
        shutil.move(store / "churn", tmp_path / "churn-away")
        for _ in range(2):
            httpx.post(server.url + "/admin/reload", headers={"authorization": "Bearer t"})
        assert httpx.post(server.url + "/predict", json={"records": telco_records(1)}).json()["version"] == 1
        assert server.output().count("churn: its folder left") == 1
        shutil.move(tmp_path / "churn-away", store / "churn")
    # a review: a release.json that is no regular file blocked the event loop at its read
    os.mkfifo(release.path_of(store, "churn"))
    with running_server(store, "--poll-interval-s", "3600", ready=False) as server:
        deadline = time.monotonic() + 30
        while "release.json is not a regular file" not in server.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "release.json is not a regular file" in server.output()
        ready = httpx.get(server.url + "/health/ready")
        assert ready.status_code == 503  # nothing serves: which version was approved is unknown


def test_reloads_loaded_counts_each_bundle_load_and_only_those(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """An audit: `tabserve_reloads_total{outcome="loaded"}` was counted where a champion was swapped in,
    so a challenger's load and an older version's load by number went uncounted (their failures were
    counted), and promoting the challenger already in memory counted a load that never ran."""
    store = copy_store(churn_bundle, tmp_path / "models")
    release.decide(store, "churn", "promote", 1, why="first")

    def loaded(server: object) -> float:
        for line in httpx.get(server.url + "/metrics").text.splitlines():  # type: ignore[attr-defined]
            if line.startswith('tabserve_reloads_total{outcome="loaded"}'):
                return float(line.split()[-1])
        return 0.0

    auth = {"authorization": "Bearer t"}
    with running_server(store, "--admin-token", "t", "--poll-interval-s", "0") as server:
        assert loaded(server) == 1  # the champion at start
        republish(store, churn_bundle)
        release.decide(store, "churn", "challenger", 2, why="proposed")
        httpx.post(server.url + "/admin/reload", headers=auth, timeout=30).raise_for_status()
        assert httpx.get(server.url + "/models/churn").json()["release"]["challenger"] == 2
        assert loaded(server) == 2  # the challenger's load
        release.decide(store, "churn", "promote", 2, why="better")
        httpx.post(server.url + "/admin/reload", headers=auth, timeout=30).raise_for_status()
        r = httpx.post(server.url + "/predict", json={"records": telco_records(1)})
        assert r.json()["version"] == 2
        assert loaded(server) == 2  # promoted from memory: nothing was loaded
        old = httpx.get(server.url + "/v2/models/churn/versions/1/ready")
        assert old.status_code == 200, old.text
        assert loaded(server) == 3  # version 1 loaded again, by number


def test_a_model_published_later_that_sorts_first_does_not_take_the_default_routes(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """An audit: without --default-model, /predict and /invocations answered with the first model
    by name, looked up per request, so publishing `cancel` beside a serving `churn` moved their
    traffic to it at the next poll without a word (MLflow's answer names no model). The default is
    pinned when the store is first read; the newcomer is said once in the log."""
    store = copy_store(churn_bundle, tmp_path / "models")
    with running_server(store, "--poll-interval-s", "3600", "--admin-token", "t") as server:
        records = telco_records(2)
        before = httpx.post(server.url + "/predict", json={"records": records}).json()
        assert before["model"] == "churn"
        shutil.copytree(churn_bundle.path, store / "cancel" / "1")
        for _ in range(2):
            httpx.post(server.url + "/admin/reload", headers={"authorization": "Bearer t"})
        assert httpx.get(server.url + "/models/cancel").status_code == 200  # it serves by its own name
        after = httpx.post(server.url + "/predict", json={"records": records}).json()
        assert after["model"] == "churn", after
        assert httpx.get(server.url + "/models").json()["default"] == "churn"
        assert httpx.post(server.url + "/invocations", json={"dataframe_records": records}).status_code == 200
        metrics = httpx.get(server.url + "/metrics").text  # cancel is churn's copy: its rows tell who answered
        assert 'tabserve_rows_scored_total{model="churn"} 6.0' in metrics
        assert 'tabserve_rows_scored_total{model="cancel"}' not in metrics
        assert server.output().count("cancel sorts before churn, the default model") == 1


def test_a_pinned_default_that_leaves_the_store_gives_way(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """A review: `aaa` (never served: its model is broken) pinned as the default kept /predict on
    `no model named 'aaa'` after its folder was removed, until a restart."""
    store = copy_store(churn_bundle, tmp_path / "models")
    shutil.copytree(churn_bundle.path, store / "aaa" / "1")
    (store / "aaa" / "1" / bundle.MODEL_FILE).write_bytes(b"not onnx")
    with running_server(store) as server:
        records = {"records": telco_records(1)}
        assert httpx.post(server.url + "/predict", json=records).status_code != 200
        shutil.rmtree(store / "aaa")
        deadline = time.monotonic() + 10
        while (answer := httpx.post(server.url + "/predict", json=records)).status_code != 200:
            assert time.monotonic() < deadline, (answer.text, server.output())
            time.sleep(0.1)
        assert answer.json()["model"] == "churn"
        assert "aaa, the default model, left the store: /predict and /invocations answer with churn" in server.output()


def test_workers_share_one_default_model_a_restarted_one_too(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """A review: each worker pinned its own default at its first read, so one restarted after a crash
    took `aaa`, published since, and /predict answered with two models by turns."""
    store = copy_store(churn_bundle, tmp_path / "models")
    with running_server(store, "--workers", "2") as server:
        shutil.copytree(churn_bundle.path, store / "aaa" / "1")
        time.sleep(1.0)  # both workers have seen it (polls of 0.2 s)
        first = workers(server.proc.pid)
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(now := workers(server.proc.pid)) < len(first) or first[0] in now:  # uvicorn starts another
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.2)
        records, models = {"records": telco_records(1)}, set()
        for _ in range(20):  # a new connection each: either worker; the new one says 503 while it loads
            while (answer := httpx.post(server.url + "/predict", json=records)).status_code == 503:
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.2)
            models.add(answer.json().get("model"))
        assert models == {"churn"}, (models, server.output())


def workers(pid: int) -> list[int]:
    """The worker processes of `tabserve serve --workers N` (its children but multiprocessing's tracker)."""
    children = (Path("/proc") / str(pid) / "task" / str(pid) / "children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads worker pids from /proc")
def test_requests_while_a_restarted_worker_reads_the_store_are_told_it_is_loading(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """An audit: a worker restarted beside another that serves takes connections while it first reads
    the store, and answered them "no model is loaded yet: … holds no servable bundle" or "no model
    named 'churn' (serving: a)": false of a store with both in it."""
    store = copy_store(churn_bundle, tmp_path / "models")
    for name in "abcdefghijkl":  # a first read that takes a while
        shutil.copytree(churn_bundle.path, store / name / "1")
    records = telco_records(1)
    with running_server(store, "--workers", "2") as server:
        deadline = time.monotonic() + 20
        while len(before := workers(server.proc.pid)) != 2:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        os.kill(min(before), 9)
        said: set[str] = set()
        end = time.monotonic() + 5

        def client() -> None:  # several at once, a new connection each: the new worker takes some
            while time.monotonic() < end:
                for path in ("/predict", "/models/churn/predict"):
                    with contextlib.suppress(httpx.TransportError):  # the killed worker's own connections
                        answer = httpx.post(server.url + path, json={"records": records})
                        said.add(answer.json().get("error", "") if answer.status_code != 200 else "")

        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        assert "" in said
        for error in said - {""}:
            assert error.startswith("no model is loaded yet: the store is still being read"), said
