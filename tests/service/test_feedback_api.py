"""Outcomes through the front doors as users send them: the route of a real service with a log, and
`tabserve feedback` on real files (found by a feedback audit)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from service import bundle
from tests.service.conftest import Server, copy_store, running_server, telco_records

SCORED = 20  # the first telco rows, scored into the service's log


@pytest.fixture(scope="module")
def served(churn_bundle: bundle.BundleRef, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A service with a prediction log that has scored the first SCORED telco customers."""
    store = copy_store(churn_bundle, tmp_path_factory.mktemp("feedback") / "models")
    with running_server(store, "--log", str(store.parent / "log")) as server:
        answer = httpx.post(server.url + "/predict", json={"records": telco_records(SCORED)})
        assert answer.status_code == 200, answer.text
        yield server


def ids(n: int) -> list[str]:
    return [str(r["customerID"]) for r in telco_records(n)]


def post_csv(server: Server, body: bytes) -> httpx.Response:
    return httpx.post(server.url + "/models/churn/feedback", content=body, headers={"content-type": "text/csv"})


def test_a_csv_that_is_not_utf8_is_a_400_naming_the_line(served: Server) -> None:
    """A cp1252 header (`Résumé`) or a UTF-16 file was a 500 with a UnicodeDecodeError traceback."""
    first = ids(1)[0]
    cp1252 = post_csv(served, f"customerID,Churn,R\xe9sum\xe9\n{first},No,x\n".encode("cp1252"))
    assert cp1252.status_code == 400 and "not UTF-8 (line 1 holds the byte 0xe9)" in cp1252.json()["error"]
    later = post_csv(served, f"customerID,Churn,note\n{first},No,ok\n{first},No,caf\xe9\n".encode("cp1252"))
    assert later.status_code == 400 and "line 3" in later.json()["error"], later.text
    utf16 = post_csv(served, f"customerID,Churn\n{first},No\n".encode("utf-16"))
    assert utf16.status_code == 400 and "byte-order mark says utf-16" in utf16.json()["error"]
    ragged = post_csv(served, f"customerID,Churn\n{first},No\n{first},No,x\n".encode())
    assert ragged.status_code == 400 and "line 3: expected 2 columns, got 3" in ragged.json()["error"]


def test_header_names_are_stripped_and_one_named_twice_after_stripping_is_refused(served: Server) -> None:
    """`customerID ,Churn` refused every row as "the id column is missing"; scoring strips names."""
    first = ids(1)[0]
    spaced = post_csv(served, f" customerID ,Churn \n{first},No\n".encode())
    assert spaced.status_code == 200 and spaced.json()["stored"] == 1, spaced.text
    twice = post_csv(served, f"customerID,Churn,Churn \n{first},No,Yes\n".encode())
    assert twice.status_code == 400 and "named more than once in the CSV header: Churn" in twice.json()["error"]
