"""Live drift against the real service: records like training's stay stable; one feature shifted
crosses PSI 0.25 while the others stay under 0.1, in GET /models/{name}/monitor and /metrics."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from service import bundle
from service.drift import population_stability, psi_noise, reading
from tests.conftest import TELCO
from tests.service.conftest import copy_store, running_server, telco_records

RECORDS = telco_records(3000, start=1000)


def _send(url: str, records: list[dict[str, object]]) -> None:
    for i in range(0, len(records), 100):
        assert httpx.post(url + "/predict", json={"records": records[i : i + 100]}).status_code == 200


def test_a_shifted_feature_crosses_the_threshold_and_the_others_stay(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    with running_server(store, env={"TABSERVE_MONITOR_WINDOW": "2000"}) as server:
        _send(server.url, RECORDS[:2000])
        before = httpx.get(server.url + "/models/churn/monitor").json()
        _send(server.url, [{**r, "Contract": "Month-to-month"} for r in RECORDS[:2000]])
        after = httpx.get(server.url + "/models/churn/monitor").json()
        metrics = httpx.get(server.url + "/metrics").text
    assert before["window_rows"] == 2000 and 2000 <= after["window_rows"] <= 2200  # counted in blocks
    assert max(doc["psi"] for doc in before["features"].values()) < 0.1, before
    shifted = after["features"].pop("Contract")
    assert shifted["psi"] > 0.25 and shifted["reading"] == "act"
    assert all(doc["psi"] < 0.1 for doc in after["features"].values()), after
    assert after["score"]["psi"] > before["score"]["psi"]  # month-to-month customers churn more
    line = next(x for x in metrics.splitlines() if x.startswith('tabserve_feature_psi{field="Contract"'))
    assert abs(float(line.split()[-1]) - shifted["psi"]) < 1e-9
    assert 'tabserve_missing_rate{field="TotalCharges",model="churn"}' in metrics


def test_a_window_of_a_few_rows_reads_too_few_rows_not_act(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """Three records like training's: their PSIs are noise (a numeric's deciles read about 3 with
    nothing moved), so the reading says so rather than "act"; the PSI itself is still given."""
    store = copy_store(churn_bundle, tmp_path / "models")
    with running_server(store) as server:
        # found by an HTTP audit: refused requests (outputs no number: 422) filled the window, PSI 8.3
        overflow = [{**r, "SeniorCitizen": -3e38} for r in RECORDS[:30]]
        for path, query in [("/predict", ""), ("/predict", "?explain=2")]:
            refused = httpx.post(server.url + path + query, json={"records": overflow})
            assert refused.status_code == 422 and "too far" in refused.text, refused.text
        _send(server.url, RECORDS[:2])
        assert httpx.post(server.url + "/predict?explain=2", json={"records": RECORDS[2:3]}).status_code == 200
        few = httpx.get(server.url + "/models/churn/monitor").json()
    assert few["window_rows"] == 3  # the answered rows, explained or not
    assert few["features"]["tenure"]["psi"] > 0.25 and few["features"]["tenure"]["reading"] == "too few rows"
    assert few["score"]["reading"] == "too few rows"
    assert {doc["reading"] for doc in few["features"].values()} == {"too few rows"}


def test_psi_noise_is_what_an_unchanged_population_reads() -> None:
    """Rows drawn from the reference itself: at a window's size psi_noise says the PSI they read
    (within a factor of 2 over 200 draws), and the reading turns from "too few rows" to "stable"."""
    rng = np.random.default_rng(0)
    expected = np.full(10, 0.1)
    for rows in (30, 300, 3000):
        psis = [
            population_stability(np.bincount(rng.integers(0, 10, rows), minlength=10), expected) for _ in range(200)
        ]
        assert 0.5 < np.mean(psis) / psi_noise(expected, rows) < 2, rows
    assert reading(0.3, psi_noise(expected, 30)) == "too few rows" and reading(0.3, psi_noise(expected, 3000)) == "act"
    assert (
        reading(0.05, psi_noise(expected, 3000)) == "stable" and reading(None, psi_noise(expected, 0)) == "no rows yet"
    )


def test_a_bundle_without_a_reference_says_so(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    for path in store.glob(f"*/*/{bundle.DRIFT_FILE}"):
        path.unlink()
    with running_server(store) as server:
        got = httpx.get(server.url + "/models/churn/monitor")
        assert httpx.post(server.url + "/predict", json={"records": RECORDS[:3]}).status_code == 200
    assert got.status_code == 404 and "retrain" in got.json()["error"]


def test_an_upload_larger_than_a_tenth_of_the_window_keeps_it_under_1_1x(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    body = TELCO.read_bytes()  # 7,043 rows in one upload: counted in blocks, not as one
    with running_server(store) as server:
        sizes = []
        for _ in range(2):
            url = server.url + "/models/churn/score"
            assert httpx.post(url, content=body, headers={"content-type": "text/csv"}).status_code == 200
            sizes.append(httpx.get(server.url + "/models/churn/monitor").json()["window_rows"])
    assert sizes[0] == 7043 and 10_000 <= sizes[1] <= 11_000, sizes
