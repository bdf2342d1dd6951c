"""Releases on a running service: canary share and stickiness, promote and rollback under load with
zero failures, shadow agreement against an offline comparison, and a broken release file refused."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from service import bundle, release
from service.runtime import create_session
from service.shadow import score_psi
from tests.conftest import TELCO, quick_config
from tests.service.conftest import copy_store, republish, running_server, telco_records
from tests.service.test_api import v2_body

ADMIN = {"Authorization": "Bearer s3cret"}
CANARY_REQUESTS = 4_000  # each one is checked against its id's bucket: enough ids, not a statistic


def in_canary(customer: str, share: float) -> bool:
    """The documented rule (stable across processes): the id's BLAKE2b-64 as a fraction of 2^64."""
    return int.from_bytes(hashlib.blake2b(customer.encode(), digest_size=8).digest(), "big") / 2**64 < share


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory: pytest.TempPathFactory) -> bundle.BundleRef:
    """A second, genuinely different churn model (another seed and width): a real challenger."""
    from training.pipeline import train

    store = tmp_path_factory.mktemp("other")
    result = train(quick_config(TELCO, "Churn", store, name="churn", seed=7, hidden=[16]), say=lambda _: None)
    assert result.bundle is not None
    return result.bundle


def two_versions(churn: bundle.BundleRef, second: bundle.BundleRef, root: Path) -> Path:
    """A store with churn v1 and v2 (a copy of `second` under the same name)."""
    store = copy_store(churn, root / "models")
    shutil.copytree(second.path, store / "churn" / "2")
    return store


def admin(server_url: str, path: str, body: dict[str, object]) -> dict[str, object]:
    answer = httpx.post(server_url + path, json=body, headers=ADMIN, timeout=30)
    assert answer.status_code == 200, answer.text
    doc: dict[str, object] = answer.json()
    return doc


class Load:
    """Clients sending one-record requests with ids, noting (phase, id, version, status) of each."""

    def __init__(self, url: str, clients: int = 6) -> None:
        self.url, self.phase = url, "start"
        self.seen: list[tuple[str, str, int, int]] = []
        self.records = telco_records(7043)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            n = i * 997
            while not self._stop.is_set():
                record = self.records[n % len(self.records)]
                n += 7
                phase = self.phase
                try:
                    answer = client.post("/predict", json={"records": [record]})
                    version = answer.json().get("version", -1) if answer.status_code == 200 else -1
                    status = answer.status_code
                except httpx.HTTPError:
                    version, status = -1, 0
                # a request that straddled a decision belongs to neither side (its status still counts)
                straddled = self.phase != phase
                self.seen.append(("changing" if straddled else phase, str(record["customerID"]), version, status))

    def count(self, phase: str) -> int:
        return sum(1 for p, *_ in list(self.seen) if p == phase)

    def wait_for(self, phase: str, n: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.count(phase) < n:
            assert time.monotonic() < deadline, f"only {self.count(phase)} requests in phase {phase}"
            time.sleep(0.2)


def test_canary_promote_rollback_under_load(
    churn_bundle: bundle.BundleRef, other_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    store = two_versions(churn_bundle, other_bundle, tmp_path)
    release.decide(store, "churn", "promote", 1, why="the test starts on version 1")
    with running_server(store, "--admin-token", "s3cret") as server, Load(server.url) as load:
        load.wait_for("start", 500)
        load.phase = "changing"
        state = admin(server.url, "/admin/models/churn/promote", {"version": 2, "canary": 10, "why": "canary"})
        assert (state["champion"], state["challenger"], state["canary"]) == (1, 2, 0.1)
        listed = httpx.get(server.url + "/models").json()["models"][0]  # the listing says who else answers
        assert (listed["version"], listed["release"]) == (1, {"challenger": 2, "canary": 0.1, "shadow": False})
        info = 'tabserve_model_info{model="churn",provider="CPUExecutionProvider",role="%s",version="%d"}'
        during = httpx.get(server.url + "/metrics").text  # the challenger answering its share is listed too
        assert f"{info % ('champion', 1)} 1.0" in during and f"{info % ('challenger', 2)} 1.0" in during
        load.phase = "canary"
        load.wait_for("canary", CANARY_REQUESTS)
        load.phase = "changing"  # requests sent while a change is under way may see either side
        state = admin(server.url, "/admin/models/churn/promote", {"why": "the canary looked fine"})
        assert (state["champion"], state["challenger"]) == (2, None)
        load.phase = "promoted"
        load.wait_for("promoted", 1_000)
        load.phase = "changing"
        state = admin(server.url, "/admin/models/churn/rollback", {"why": "a bad week"})
        assert state["champion"] == 1
        load.phase = "rolled back"
        load.wait_for("rolled back", 1_000)
        metrics = httpx.get(server.url + "/metrics").text
    seen = list(load.seen)
    assert [s for s in seen if s[3] != 200] == []  # zero non-2xx through every change
    versions: dict[str, Counter[int]] = defaultdict(Counter)
    by_id: dict[str, set[int]] = defaultdict(set)
    for phase, customer, version, _ in seen:
        versions[phase][version] += 1
        if phase == "canary":
            by_id[customer].add(version)
    assert set(versions["start"]) == {1}
    canary = versions["canary"]
    assert sum(canary.values()) >= CANARY_REQUESTS and canary[2] > 0, canary
    # each id answered by the version its bucket says, always the same (phases begin once the
    # change has answered); and the rule gives the challenger its share of all the ids
    assert all(len(v) == 1 for v in by_id.values())
    assert {customer: v for customer, (v,) in by_id.items()} == {
        customer: 2 if in_canary(customer, 0.1) else 1 for customer in by_id
    }
    everyone = [str(r["customerID"]) for r in load.records]
    assert abs(sum(in_canary(c, 0.1) for c in everyone) / len(everyone) - 0.1) < 0.01
    # a request sent after a change answered is served as the change says
    assert set(versions["promoted"]) == {2} and set(versions["rolled back"]) == {1}
    assert 'tabserve_version_rows_scored_total{model="churn",version="2"}' in metrics
    assert f"{info % ('champion', 1)} 1.0" in metrics and f"{info % ('champion', 2)} 0.0" in metrics
    assert f"{info % ('challenger', 2)} 0.0" in metrics
    history = release.read(store, "churn")
    assert history is not None
    assert [h["action"] for h in history.history] == ["promote", "promote", "promote", "rollback"]
    assert history.history[-1]["why"] == "a bad week" and history.history[-1]["who"] == "admin API"


def test_shadow_agreement_matches_an_offline_comparison(
    churn_bundle: bundle.BundleRef, other_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    store = two_versions(churn_bundle, other_bundle, tmp_path)
    release.decide(store, "churn", "promote", 1)
    release.decide(store, "churn", "challenger", 2)
    records = telco_records(600, start=3000)
    log = tmp_path / "log"
    with (
        running_server(store, "--shadow", "--log", str(log)) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        start = 0
        for size in [1, 3, 10, 50] * 100:  # requests of several sizes, so batches mix
            if start >= len(records):
                break
            answer = client.post("/predict", json={"records": records[start : start + size]})
            assert answer.status_code == 200 and answer.json()["version"] == 1
            start += size
        deadline = time.monotonic() + 30
        while (shadow := client.get("/models/churn").json()["release"]["shadow"])["compared"] < len(records):
            assert time.monotonic() < deadline, shadow
            time.sleep(0.1)
        metrics = client.get("/metrics").text
        # the true outcomes come back: both versions' live metrics on the same records
        truth = [row["Churn"] for row in csv.DictReader(TELCO.open(newline=""))][3000:3600]
        outcomes = [{"customerID": r["customerID"], "Churn": y} for r, y in zip(records, truth, strict=True)]
        assert client.post("/models/churn/feedback", json={"records": outcomes}).status_code == 200
        live = client.get("/models/churn").json()["release"]["shadow"]["live"]
    assert shadow["challenger"] == 2 and shadow["shed"] == 0 and shadow["window"] == len(records)
    mine, theirs = (offline(ref, records) for ref in (churn_bundle, other_bundle))
    pre_a, pre_b = churn_bundle.preprocess, other_bundle.preprocess
    diff = np.abs(mine - theirs).max(axis=1)
    agree = np.mean(
        np.asarray(pre_a.labels)[pre_a.label_index(mine)] == np.asarray(pre_b.labels)[pre_b.label_index(theirs)]
    )
    assert shadow["label_agreement"] == pytest.approx(agree, abs=1e-9)
    assert shadow["mean_abs_diff"] == pytest.approx(diff.mean(), abs=1e-6)
    assert shadow["p99_abs_diff"] == pytest.approx(np.percentile(diff, 99), abs=1e-6)
    assert shadow["score_psi"] == pytest.approx(score_psi(mine[:, 1], theirs[:, 1]), abs=1e-6)
    assert 0 < diff.mean() < 0.1  # two real models: close, not equal
    assert 'tabserve_shadow_label_agreement{model="churn"}' in metrics
    # counts since the shadow began are counters (rate() reads them), its window's figures gauges
    assert f'tabserve_shadow_compared_total{{model="churn"}} {float(len(records))}' in metrics
    assert "tabserve_shadow_shed_total counter" in metrics and "# TYPE tabserve_shadow_window gauge" in metrics
    y = np.array([t == "Yes" for t in truth])
    assert live["rows"] == len(records)
    assert live["1"]["auc"] == pytest.approx(roc_auc_score(y, mine[:, 1]), abs=1e-6)
    assert live["2"]["auc"] == pytest.approx(roc_auc_score(y, theirs[:, 1]), abs=1e-6)


def test_requests_asking_for_reasons_are_shadowed_and_logged(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """Requests with `explain` ran through a batcher of their own that handed nothing to the shadow:
    never compared, on any route. The challenger is a copy of the champion: every row agrees."""
    store = two_versions(churn_bundle, churn_bundle, tmp_path)
    release.decide(store, "churn", "promote", 1)
    release.decide(store, "churn", "challenger", 2)
    records, log = telco_records(6, start=100), tmp_path / "log"
    with (
        running_server(store, "--shadow", "--log", str(log)) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        sent = [
            client.post("/predict", json={"records": records[:2], "explain": 4}, headers={"x-request-id": "native"}),
            client.post(
                "/v2/models/churn/infer", json={"id": "v2", **v2_body(records[2:4]), "parameters": {"explain": 2}}
            ),
            client.post(
                "/invocations",
                json={"dataframe_records": records[4:], "params": {"explain": "all"}},
                headers={"x-request-id": "mlflow"},
            ),
        ]
        assert all(r.status_code == 200 for r in sent), [r.text for r in sent]
        deadline = time.monotonic() + 30
        while (shadow := client.get("/models/churn").json()["release"]["shadow"])["compared"] < len(records):
            assert time.monotonic() < deadline, shadow
            time.sleep(0.1)
    assert shadow["label_agreement"] == 1.0 and shadow["mean_abs_diff"] == 0.0
    table = pq.read_table(sorted(log.glob("churn/date=*/*.parquet")))
    assert Counter(table.column("_request").to_pylist()) == {"native": 2, "v2": 2, "mlflow": 2}
    expected = offline(churn_bundle, records)[:, 1]  # the model's outputs, not an explanation's columns
    assert sorted(table.column("_probability").to_pylist()) == pytest.approx(sorted(expected.tolist()), rel=1e-6)


def offline(ref: bundle.BundleRef, records: list[dict[str, object]]) -> np.ndarray:
    """A bundle's outputs on records through its own encoding and a session of its own."""
    enc = ref.preprocess.encode_records(records)
    session = create_session(ref.path / bundle.MODEL_FILE, "cpu", 1)
    out: np.ndarray = session.run(None, {"num": enc.num, "cat": enc.cat})[0]
    return out


def test_a_broken_release_file_is_refused_and_the_last_good_state_serves(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    republish(store, churn_bundle)
    release.decide(store, "churn", "promote", 1, why="pinned")
    path = release.path_of(store, "churn")
    one = {"records": telco_records(1)}
    with running_server(store) as server:
        assert httpx.post(server.url + "/predict", json=one).json()["version"] == 1
        for broken, why in [
            ("{not json", "not valid JSON"),
            (json.dumps({"champion": "two"}), "champion must be a version number"),
            (json.dumps({"champion": 1, "challenger": 1}), "cannot be both champion and challenger"),
        ]:
            # written in place, as an editor would: the watcher may first see it half written (refused
            # as not JSON) and reads it again once it changes, so wait for this file's reason
            path.write_text(broken)
            deadline = time.monotonic() + 10
            while why not in ((state := httpx.get(server.url + "/models/churn").json()["release"])["refused"] or ""):
                assert time.monotonic() < deadline, (state, server.output())
                time.sleep(0.1)
            assert state["champion"] == 1
            assert httpx.post(server.url + "/predict", json=one).json()["version"] == 1
            assert why in server.output()
            # the listing and the readiness probe name it too (ready: the model serves its last good state)
            assert why in httpx.get(server.url + "/models").json()["refused"]["churn/release.json"]
            ready = httpx.get(server.url + "/health/ready")
            assert ready.status_code == 200 and why in ready.json()["refused"]["churn/release.json"]
            release.write(store, "churn", release.Release(champion=1))  # good again (a new size or time)
            time.sleep(0.5)
        # a version that is not in the store: said once, the serving one stays
        path.write_text(json.dumps({"champion": 9}))
        deadline = time.monotonic() + 10
        while "names version 9" not in server.output():
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        time.sleep(1.0)  # more polls of the same file
        assert httpx.post(server.url + "/predict", json=one).json()["version"] == 1
        assert server.output().count("names version 9, which cannot be loaded") == 1
        release.write(store, "churn", release.Release(champion=2))
        wait_until_version(server.url, 2)
        # a challenger that is not in the store: said once (its canary answers nothing), the champion answers all
        release.write(store, "churn", release.Release(champion=2, challenger=7, canary=0.5))
        deadline = time.monotonic() + 10
        while "names challenger version 7" not in server.output():
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        time.sleep(1.0)  # more polls of the same file
        answers = httpx.post(server.url + "/predict", json={"records": telco_records(1)}).json()
        assert answers["version"] == 2
        said = "names challenger version 7, which is not in the store; its canary share 0.5 answers nothing"
        assert server.output().count(said) == 1, server.output()


def wait_until_version(url: str, version: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while httpx.post(url + "/predict", json={"records": telco_records(1)}).json()["version"] != version:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_admin_decisions_need_the_token_and_a_sensible_request(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    with running_server(store, "--admin-token", "s3cret") as server:
        url = server.url + "/admin/models/churn/"
        assert httpx.post(url + "rollback", json={}).status_code == 401
        no_earlier = httpx.post(url + "rollback", json={}, headers=ADMIN)
        assert no_earlier.status_code == 409 and "no earlier champion" in no_earlier.json()["error"]
        assert httpx.post(url + "promote", json={"version": 5}, headers=ADMIN).status_code == 409
        assert httpx.post(url + "promote", json={"version": 1, "canary": 150}, headers=ADMIN).status_code == 422
        nan = httpx.post(
            url + "promote",
            content=b'{"version": 1, "canary": NaN}',
            headers={**ADMIN, "content-type": "application/json"},
        )
        assert nan.status_code == 422 and "finite" in nan.text, nan.text  # it said "less than 100"
        assert httpx.post(server.url + "/admin/models/..%2Fx/rollback", json={}, headers=ADMIN).status_code == 404
        shadow = httpx.post(url + "shadow", json={"on": True}, headers=ADMIN)
        assert shadow.status_code == 409 and "no challenger" in shadow.json()["error"]
        # read as version 1 before; a canary of `true` as 1 % and of "50" as 50 %
        for body in ({"version": True}, {"version": "1"}, {"version": 1.0}, {"canary": True}, {"canary": "50"}):
            assert httpx.post(url + "promote", json=body, headers=ADMIN).status_code == 422, body
        forged = httpx.post(url + "promote", json={"version": 1, "why": "ok\n  churn  alice: promote 7"}, headers=ADMIN)
        assert forged.status_code == 422 and "control characters" in forged.json()["error"]
        # an HTTP audit: the last of a key given twice won, a misspelt key was ignored (the challenger
        # promoted instead of version 5), `"on": "yes"` was true; a docs audit: no body at all was a 422
        json_type = {**ADMIN, "content-type": "application/json"}
        twice = httpx.post(url + "promote", content=b'{"version": 1, "version": 9}', headers=json_type)
        assert twice.status_code == 422 and "'version' is given twice" in twice.json()["error"], twice.text
        assert httpx.post(url + "promote", content=b'{"version": 1, "version": 9}').status_code == 401  # token first
        for path, body in [("promote", {"versoin": 5}), ("rollback", {"reason": "x"}), ("shadow", {"on": "yes"})]:
            assert httpx.post(url + path, json=body, headers=ADMIN).status_code == 422, (path, body)
        bare = httpx.post(url + "rollback", headers=ADMIN)
        assert bare.status_code == 409 and "no earlier champion" in bare.json()["error"], bare.text
        bare = httpx.post(url + "promote", headers=ADMIN)
        assert bare.status_code == 409 and "no challenger" in bare.json()["error"], bare.text
    assert not (tmp_path / "x").exists()
    assert release.read(store, "churn") is None  # nothing refused was recorded


def tabserve(*args: str, store: Path) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, on a given store (wide enough that table cells do not wrap)."""
    env = {**os.environ, "TABSERVE_MODELS_DIR": str(store), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "tabserve.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def roles(listing: str) -> dict[str, str]:
    """Version → role, from the rows of `tabserve models`."""
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in listing.splitlines() if "│ churn" in line]
    return {row[1]: row[2] for row in cells}


def test_listed_decisions_name_their_model_a_canary_and_the_shadow(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    shutil.copytree(store / "churn", store / "other")  # a second name: its decisions are listed after churn's
    for name in ("churn", "other"):
        release.decide(store, name, "promote", 1, why="first")
    republish(store, churn_bundle)
    release.decide(store, "churn", "promote", 2, canary=0.1, why="try it")
    release.decide(store, "churn", "shadow", shadow=True)
    lines = [line.strip() for line in tabserve("models", store=store).stdout.splitlines() if " — " in line]
    # each line named its version only: two models' "promote 1 — first" read alike, a canary as a promotion
    assert lines[0].startswith("churn ") and lines[-1].startswith("other ") and lines[-1].endswith("promote 1 — first")
    assert any(line.startswith("churn ") and "promote 2 as canary (10 %) — try it" in line for line in lines)
    assert any(line.startswith("churn ") and line.endswith("shadow on —") for line in lines)


def test_a_rolled_back_version_still_answers_by_number_until_retired(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    release.decide(store, "churn", "promote", 1, why="first")
    republish(store, churn_bundle)
    release.decide(store, "churn", "promote", 2, why="better")
    # what rollback would restore is the previous champion, not "retired" (a `tabserve retire` folder)
    assert roles(tabserve("models", store=store).stdout) == {"1": "previous champion", "2": "champion"}
    release.decide(store, "churn", "rollback", why="complaints")
    listing = tabserve("models", store=store).stdout
    assert roles(listing) == {"1": "champion", "2": "not serving"}
    assert "rollback to 1 — complaints" in listing  # the history names the version that is back
    body = v2_body(telco_records(2))
    with running_server(store, "--older-versions", "1") as server:
        newer = httpx.post(server.url + "/v2/models/churn/versions/2/infer", json=body)
        assert newer.status_code == 200 and newer.json()["model_version"] == "2", newer.text
        assert httpx.post(server.url + "/predict", json={"records": telco_records(1)}).json()["version"] == 1
        bundle.retire(store, "churn@2")  # held in memory, but a retired version is never served
        deadline = time.monotonic() + 10
        while (gone := httpx.post(server.url + "/v2/models/churn/versions/2/infer", json=body)).status_code == 200:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        assert gone.status_code == 404 and "version 2 is retired" in gone.json()["error"]
    listed = tabserve("models", store=store).stdout
    assert roles(listed) == {"1": "champion"} and "retired version(s) 2" in listed


def test_a_version_this_service_does_not_load_is_named_as_such(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    release.decide(store, "churn", "promote", 1, why="first")
    republish(store, churn_bundle)
    release.decide(store, "churn", "promote", 2, why="better")
    release.decide(store, "churn", "rollback", why="complaints")
    body = v2_body(telco_records(1))
    with running_server(store, "--older-versions", "0") as server:
        answer = httpx.post(server.url + "/v2/models/churn/versions/2/infer", json=body)
        assert answer.status_code == 404
        assert "version 2 is in the store but not loaded" in answer.json()["error"]
        assert "older_versions is 0" in answer.json()["error"]
        unknown = httpx.post(server.url + "/v2/models/churn/versions/3/infer", json=body)
        assert unknown.status_code == 404 and "has no version 3 (has [1, 2])" in unknown.json()["error"]


def test_refused_release_commands_exit_2_and_leave_the_file(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    release.decide(store, "churn", "promote", 1, why="pinned")
    before = release.path_of(store, "churn").read_bytes()
    for args, why in [
        (("rollback", "churn"), "no earlier champion"),
        (("promote", "churn@9"), "no published version 9"),
        (("shadow", "churn", "on"), "no challenger"),
        (("promote", "churn@1", "--canary", "150"), "--canary"),
    ]:
        run = tabserve(*args, store=store)
        assert run.returncode == 2 and why in run.stderr, (args, run.returncode, run.stderr)
    assert release.path_of(store, "churn").read_bytes() == before


def test_retire_takes_the_lock_never_a_serving_version_and_is_recorded(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """A canary's version is refused (it answers a share); once the canary ends it is retired, stops
    being the challenger and leaves a history entry, so `promote churn` cannot make a retired version
    champion. A reason with a line break (a forged history line) is refused."""
    store = copy_store(churn_bundle, tmp_path / "models")
    republish(store, churn_bundle)
    release.decide(store, "churn", "promote", 1, why="pinned")
    release.decide(store, "churn", "promote", 2, canary=0.2, why="try")
    refused = tabserve("retire", "churn@2", store=store)
    assert refused.returncode == 2 and "canary: `tabserve promote churn@1` ends the canary" in refused.stderr
    newline = tabserve("promote", "churn@1", "--why", "clean\n  churn  2099-01-01  cfo: promote 9", store=store)
    assert newline.returncode == 2 and "control characters" in newline.stderr
    assert tabserve("promote", "churn@1", "--why", "canary ended", store=store).returncode == 0
    retired = tabserve("retire", "churn@2", "--why", "not better", store=store)
    assert retired.returncode == 0, retired.stderr
    state = release.read(store, "churn")
    assert state is not None and (state.champion, state.challenger, state.canary) == (1, None, 0.0)
    assert state.history[-1]["action"] == "retire" and state.history[-1]["why"] == "not better"
    again = tabserve("promote", "churn", store=store)
    assert again.returncode == 2 and "no challenger" in again.stderr


def test_at_start_an_unloadable_champion_falls_back_to_an_earlier_champion_never_a_proposed_one(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """v3 champion (v1 before it), v2 a challenger never promoted: v3 gone at start, v1 serves; a
    release file broken at start (no last good state) serves nothing rather than a guess."""
    store = copy_store(churn_bundle, tmp_path / "models")
    republish(store, churn_bundle)
    republish(store, churn_bundle)
    release.decide(store, "churn", "promote", 1, why="v1")
    release.decide(store, "churn", "promote", 3, why="v3")
    release.decide(store, "churn", "challenger", 2, why="proposed")
    (store / "churn" / "3").rename(tmp_path / "away")
    with running_server(store) as server:
        listed = httpx.get(server.url + "/models/churn").json()
        answer = httpx.post(server.url + "/predict", json={"records": telco_records(1)}).json()
    assert listed["version"] == 1 and answer["version"] == 1, (listed, answer)
    release.path_of(store, "churn").write_text("{not json")
    with running_server(store, ready=False) as server:
        time.sleep(1.0)  # a few polls (0.2 s each)
        missing = httpx.post(server.url + "/predict", json={"records": telco_records(1)})
        ready = httpx.get(server.url + "/health/ready")
    assert missing.status_code == 503 and ready.status_code == 503, (missing.text, ready.text)
    assert "not valid JSON" in server.output()


def test_a_v2_request_with_its_id_tensor_is_sticky_and_logged(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """V2 has no place for ids among the features: the id column as one more tensor sends each id to
    one version under a canary (it went by chance per request) and into the log, so feedback joins."""
    store = copy_store(churn_bundle, tmp_path / "models")
    republish(store, churn_bundle)
    release.decide(store, "churn", "promote", 1, why="pinned")
    release.decide(store, "churn", "promote", 2, canary=0.5, why="half")
    records = telco_records(40)
    with running_server(store, "--log", str(tmp_path / "log")) as server:
        seen: dict[str, set[str]] = defaultdict(set)
        for _ in range(2):
            for record in records:
                body = v2_body([record])
                body["inputs"].append(
                    {"name": "customerID", "shape": [1], "datatype": "BYTES", "data": [record["customerID"]]}
                )
                answer = httpx.post(server.url + "/v2/models/churn/infer", json=body)
                assert answer.status_code == 200, answer.text
                seen[str(record["customerID"])].add(answer.json()["model_version"])
        outcomes = [{"customerID": r["customerID"], "Churn": "No"} for r in records]
        stored = httpx.post(server.url + "/models/churn/feedback", json={"records": outcomes}).json()
    assert {c: v for c, v in seen.items() if len(v) != 1} == {}
    assert {c: v.pop() for c, v in seen.items()} == {c: "2" if in_canary(c, 0.5) else "1" for c in seen}
    assert stored["stored"] == 40 and not stored["refused"], stored


def test_a_canary_or_shadow_whose_fields_differ_is_refused(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """Found by a release audit: a canary leaving out `gender` answered its share of V2 requests 400
    ("unknown input 'gender'"), and one reading a field the champion's clients do not send imputed it
    without a word; a shadow reading such a field was switched on and then never ran."""
    from training.pipeline import train

    result = train(quick_config(TELCO, "Churn", tmp_path / "other", name="churn", drop=["gender"]), say=lambda _: None)
    assert result.bundle is not None
    store = two_versions(churn_bundle, result.bundle, tmp_path)
    release.decide(store, "churn", "promote", 1)
    canary = tabserve("promote", "churn@2", "--canary", "30", store=store)
    assert canary.returncode == 2 and "cannot answer a canary" in canary.stderr, canary.stderr
    assert "it leaves out gender): promote it outright, or shadow it" in canary.stderr
    release.decide(store, "churn", "challenger", 2)
    assert release.decide(store, "churn", "shadow", shadow=True).shadow  # it reads less: the shadow can run
    release.decide(store, "churn", "promote", 2)
    shutil.copytree(result.bundle.path, store / "churn" / "3")  # reads what version 2 reads: shadowed
    release.decide(store, "churn", "challenger", 3)
    assert release.decide(store, "churn", "shadow", shadow=True).shadow
    # a new challenger the shadow cannot run on stops it (it stayed on, and never ran)
    assert not release.decide(store, "churn", "challenger", 1).shadow
    with pytest.raises(release.ReleaseError, match="cannot shadow version 2: the challenger reads gender"):
        release.decide(store, "churn", "shadow", shadow=True)
    with pytest.raises(release.ReleaseError, match=r"\(it reads gender\): promote it outright$"):
        release.decide(store, "churn", "promote", 1, canary=0.3)


def test_the_shadow_reads_a_date_at_its_own_reference_date() -> None:
    """A date's number is its age at its bundle's reference date, which a retrain on newer rows moves:
    copied by name, every challenger age was off by the days between them (agreement looked high)."""
    from service.features import Preprocess
    from service.shadow import Recode
    from tests.service.test_features import make_preprocess

    def dated(reference: str) -> Preprocess:
        start = {"name": "start", "kind": "numeric", "mean": 0, "std": 1, "median": 0, "min": 0, "max": 9}
        start["date"] = {"reference": reference, "format": "iso"}
        return Preprocess.from_json({**make_preprocess().to_json(), "features": [start]})

    champion, challenger = dated("2024-01-10T00:00:00"), dated("2026-01-10T00:00:00")
    records = [{"start": "2023-12-01"}, {"start": "2025-06-30"}, {"start": None}]
    old, new = champion.encode_records(records), challenger.encode_records(records)
    num, _ = Recode(champion, challenger)(old.num, old.cat)
    np.testing.assert_allclose(num, new.num, rtol=1e-6)
    assert not np.allclose(old.num[:2], new.num[:2])


def test_a_damaged_version_is_never_made_the_one_that_serves(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """Found by a release audit: rolled back to a bundle whose model.onnx was cut short, the service
    kept serving the version rolled back from while the file named the damaged one, and a restart
    served an older one still. Promote, canary and rollback now open the version first."""
    store = two_versions(churn_bundle, churn_bundle, tmp_path)
    release.decide(store, "churn", "promote", 1)
    release.decide(store, "churn", "promote", 2)
    graph = store / "churn" / "1" / bundle.MODEL_FILE
    graph.write_bytes(graph.read_bytes()[:500])
    before = release.path_of(store, "churn").read_bytes()
    for args in (("rollback", "churn"), ("promote", "churn@1"), ("promote", "churn@1", "--canary", "10")):
        run = tabserve(*args, store=store)
        assert run.returncode == 2 and "churn version 1 cannot be loaded" in run.stderr, (args, run.stderr)
    assert release.path_of(store, "churn").read_bytes() == before


def test_a_canary_is_ended_with_its_champion_damaged(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """Found by a diff review: ending a canary (promoting the champion again) opened the champion first
    and was refused when its file was damaged, though it changes no champion: the challenger kept its share."""
    store = two_versions(churn_bundle, churn_bundle, tmp_path)
    release.decide(store, "churn", "promote", 1)
    release.decide(store, "churn", "promote", 2, canary=0.1)
    graph = store / "churn" / "1" / bundle.MODEL_FILE
    graph.write_bytes(graph.read_bytes()[:500])
    run = tabserve("promote", "churn@1", store=store)
    assert run.returncode == 0, run.stderr
    state = release.read(store, "churn")
    assert state is not None and (state.champion, state.challenger, state.canary) == (1, 2, 0.0)
    # but naming a damaged newest version champion, with no release file yet, is still refused
    release.path_of(store, "churn").unlink()
    (store / "churn" / "1").rename(store / "churn" / "3")
    run = tabserve("promote", "churn@3", store=store)
    assert run.returncode == 2 and "churn version 3 cannot be loaded" in run.stderr, run.stderr
    assert not release.path_of(store, "churn").exists()


def test_the_default_model_unservable_is_said_not_answered_by_another(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """Found by a release audit: with churn's release file broken (and no good state to keep), a
    `/predict` without a model name was answered by the next model by name, which scored churn's record."""
    store = copy_store(churn_bundle, tmp_path / "models")
    shutil.copytree(store / "churn", store / "zeta")
    release.path_of(store, "churn").write_text('{"champion": "2"')
    with running_server(store) as server:
        answer = httpx.post(server.url + "/predict", json={"records": telco_records(1)})
        named = httpx.post(server.url + "/models/zeta/predict", json={"records": telco_records(1)})
    assert answer.status_code == 404, answer.text
    assert "model 'churn' is in the store but not served" in answer.json()["error"] and "not valid JSON" in answer.text
    assert named.status_code == 200 and named.json()["model"] == "zeta"


def test_a_loaded_challenger_whose_file_breaks_keeps_its_place_and_a_card_edit_loads_nothing(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    """Found by a diff review: a canary whose explain.onnx was then cut short was dropped (challenger
    None, canary 0) though the loaded one was sound, and stayed listed as refused once mended; any file
    in a bundle (the card, an editor's swap file) loaded the serving version again."""
    store = two_versions(churn_bundle, churn_bundle, tmp_path)
    release.decide(store, "churn", "promote", 1)
    release.decide(store, "churn", "promote", 2, canary=0.5)
    auth = {"authorization": "Bearer s3cret"}
    with running_server(store, "--admin-token", "s3cret") as server:
        (store / "churn" / "1" / bundle.CARD_FILE).write_text("edited")
        (store / "churn" / "1" / ".model_card.md.swp").write_bytes(b"vim")
        assert httpx.post(server.url + "/admin/reload", headers=auth).json()["loaded"] == []
        graph = store / "churn" / "2" / bundle.EXPLAIN_FILE
        whole = graph.read_bytes()
        graph.write_bytes(whole[:300])
        for _ in range(2):  # refused once, then left alone while its files stay so
            broken = httpx.post(server.url + "/admin/reload", headers=auth).json()
            assert "churn@2" in broken["refused"] and broken["loaded"] == [], broken
        state = httpx.get(server.url + "/models/churn").json()["release"]
        assert (state["champion"], state["challenger"], state["canary"]) == (1, 2, 0.5), state
        assert server.output().count("refusing bundle") == 1
        graph.write_bytes(whole)
        mended = httpx.post(server.url + "/admin/reload", headers=auth).json()
        assert mended["loaded"] == [] and mended["refused"] == {}, mended  # held again (a challenger)
        assert httpx.get(server.url + "/health/ready").json()["refused"] == {}
        # retired by hand: no longer held (a second review: it was kept and refused at every poll)
        (store / "churn" / "2").rename(store / "churn" / "2.retired")
        for _ in range(2):
            gone = httpx.post(server.url + "/admin/reload", headers=auth).json()
            assert gone["refused"] == {}, gone
        assert httpx.get(server.url + "/models/churn").json()["release"]["challenger"] is None
        assert server.output().count("refusing bundle") == 1
