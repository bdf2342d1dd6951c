"""Property-based fuzzing of the JSON scoring routes against a real server: whatever a client
sends, the answer is never a 5xx (503 and 504, the refusals under load, aside)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service.conftest import Server, telco_records
from tests.service.test_api import v2_body

ROUTES = ["/predict", "/models/churn/predict", "/v2/models/churn/infer", "/invocations"]
# NOTE: bounded so the whole module stays well under a minute in CI
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
RECORDS = telco_records(20)
field_names = st.sampled_from([*RECORDS[0], "records", "inputs", "id", "data", "name", "shape", "datatype"])


@st.composite
def mutated_records(draw: st.DrawFn) -> dict[str, Any]:
    """A real telco record with some fields given other values, some dropped, some added."""
    record = dict(draw(st.sampled_from(RECORDS)))
    for name in draw(st.lists(field_names, max_size=4)):
        if draw(st.booleans()):
            record[name] = draw(json_values)
        else:
            record.pop(name, None)
    return record


@st.composite
def bodies(draw: st.DrawFn) -> Any:
    """A body for any of the routes: well-formed for one of them, mutated, or anything at all."""
    records = draw(st.lists(mutated_records(), min_size=0, max_size=3))
    kind = draw(st.sampled_from(["native", "v2", "mlflow", "any"]))
    if kind == "native":
        return {"records": records}
    if kind == "v2":
        body = v2_body(RECORDS[: len(records) + 1])
        for tensor in draw(st.lists(st.sampled_from(body["inputs"]), max_size=2)):  # type: ignore[arg-type]
            tensor[draw(st.sampled_from(["shape", "datatype", "data", "name", "parameters"]))] = draw(json_values)
        if draw(st.booleans()):
            body["id"] = draw(json_values)
        return body
    if kind == "mlflow":
        key = draw(st.sampled_from(["dataframe_records", "instances", "inputs", "dataframe_split"]))
        if key == "dataframe_split":
            columns = draw(st.lists(st.one_of(field_names, json_values), max_size=4))
            return {key: {"columns": columns, "data": draw(st.lists(st.lists(json_values, max_size=4), max_size=3))}}
        return {key: records}
    return draw(json_values)


@pytest.fixture
def client(churn_server: Server) -> Iterator[httpx.Client]:
    """One client for a test's examples: a new one each time builds an SSL context (~60 ms)."""
    with httpx.Client(base_url=churn_server.url, timeout=30) as client:
        yield client


def assert_no_server_error(client: httpx.Client, path: str, content: bytes, content_type: str) -> None:
    answer = client.post(path, content=content, headers={"content-type": content_type})
    assert answer.status_code < 500 or answer.status_code in (503, 504), (path, content[:300], answer.text[:300])
    assert answer.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("path", ROUTES)
def test_no_json_body_gets_a_5xx(client: httpx.Client, path: str) -> None:
    @FUZZ
    @given(body=bodies())
    def check(body: Any) -> None:
        assert_no_server_error(client, path, json.dumps(body).encode(), "application/json")

    check()


@pytest.mark.parametrize("path", ROUTES)
def test_no_damaged_body_gets_a_5xx(client: httpx.Client, path: str) -> None:
    valid = json.dumps({"records": RECORDS[:2]}).encode()

    @FUZZ
    @given(
        cut=st.integers(0, len(valid)),
        junk=st.binary(max_size=8),
        content_type=st.sampled_from(["application/json", "text/csv"]),
    )
    def check(cut: int, junk: bytes, content_type: str) -> None:
        body = valid[:cut] + junk + valid[cut + len(junk) :]
        answer = client.post(path, content=body, headers={"content-type": content_type})
        assert answer.status_code < 500 or answer.status_code in (503, 504), (path, body[:300], answer.text[:300])

    check()
