"""POST /models/{name}/score (service/api/score.py) against a real server: streamed both ways, limits."""

from __future__ import annotations

import csv
import gzip
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service import bundle
from service.scoring.files import open_source
from service.scoring.local import Scorer, score_file
from tests.conftest import TELCO
from tests.service.conftest import copy_store, running_server
from tests.service.test_scoring import _cp1252_telco, _telco_head


def test_http_score_streams_and_matches_the_cli(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    small = _telco_head(tmp_path / "small.csv", 300)
    lines = small.read_bytes().splitlines(keepends=True)
    lines[5] = b"bad,row\n"
    small.write_bytes(b"".join(lines))
    score_file(Scorer(churn_bundle, "cpu"), small, tmp_path / "cli.csv", keep=["customerID", "gender"])
    body = TELCO.read_bytes()
    header, rows = body.split(b"\n", 1)
    with running_server(store) as server:
        url = server.url + "/models/churn/score?keep=customerID&keep=gender"
        answer = httpx.post(url, content=small.read_bytes(), headers={"content-type": "text/csv"}, timeout=60)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
        assert answer.content == (tmp_path / "cli.csv").read_bytes()

        # a gzip upload (two members, as `cat a.gz b.gz` makes) scores to the same answer
        raw = small.read_bytes()
        packed = gzip.compress(raw[:5000]) + gzip.compress(raw[5000:])
        zipped = httpx.post(url, content=packed, headers={"content-type": "text/csv", "content-encoding": "gzip"})
        assert zipped.status_code == 200 and zipped.content == answer.content
        for bad, status, needle in [(raw, 422, "not valid gzip"), (packed[:-20], 422, "truncated")]:
            refused = httpx.post(url, content=bad, headers={"content-type": "text/csv", "content-encoding": "gzip"})
            assert refused.status_code == status and needle in refused.json()["error"]
        brotli = httpx.post(url, content=raw, headers={"content-type": "text/csv", "content-encoding": "br"})
        assert brotli.status_code == 415 and "'br' is not supported" in brotli.json()["error"]

        wrong = httpx.post(url, content=b"a,b\n1,2\n", headers={"content-type": "text/csv"})
        assert wrong.status_code == 422 and "missing 19 column" in wrong.json()["error"]
        assert httpx.post(url, content=b"x", headers={"content-type": "application/json"}).status_code == 415

        # NOTE: bodies streamed up in chunks (never whole in memory here either), answers read as
        # they come. The first uploads settle the scorer's working set (near +170 MB with 16k-row
        # blocks, creeping up by a few tens of MB over the next uploads as the allocators settle);
        # doubling the body after that must move the peak by far less than the 280 MB a server
        # holding the body, or the answer, would add.
        def upload(megabytes: int) -> Iterator[bytes]:
            yield header + b"\n"
            for _ in range(megabytes * 1_000_000 // len(rows)):
                yield rows

        def lines_back(megabytes: int) -> int:
            count = 0
            with httpx.stream("POST", url, content=upload(megabytes), headers={"content-type": "text/csv"}) as r:
                assert r.status_code == 200
                for chunk in r.iter_bytes():
                    count += chunk.count(b"\n")
            return count

        assert lines_back(20) == 20_000_000 // len(rows) * rows.count(b"\n") + 1
        assert lines_back(140) == 140_000_000 // len(rows) * rows.count(b"\n") + 1
        warm = _hwm_mb(server.proc.pid)
        assert lines_back(280) == 280_000_000 // len(rows) * rows.count(b"\n") + 1
        grown = _hwm_mb(server.proc.pid) - warm
    assert grown < 100, f"the server's peak memory grew {grown:.0f} MB with a 280 MB body"


def _hwm_mb(pid: int) -> float:
    return _status_mb(pid, "VmHWM")


def _status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"{key} not in /proc/{pid}/status")


def test_http_score_body_limit(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    header, rows = TELCO.read_bytes().split(b"\n", 1)
    big = header + b"\n" + rows * 2  # ≈ 2 MB
    with running_server(store, "--max-score-bytes", "1000000") as server:
        url = server.url + "/models/churn/score"
        declared = httpx.post(url, content=big, headers={"content-type": "text/csv"})
        assert declared.status_code == 413 and "1000000-byte limit" in declared.json()["error"]

        def chunks() -> Iterator[bytes]:  # NOTE: no Content-Length: the limit is found mid-way
            yield header + b"\n"
            yield rows
            yield rows

        # NOTE: the answer is cut short, never a complete-looking CSV
        with (
            pytest.raises(httpx.HTTPError),
            httpx.stream("POST", url, content=chunks(), headers={"content-type": "text/csv"}) as r,
        ):
            assert r.status_code == 200
            for _ in r.iter_bytes():
                pass
        assert httpx.get(server.url + "/models/nope").json()["error"].startswith("no model named 'nope'")
        assert "upload scoring stopped: body is over the 1000000-byte limit" in server.output()
        # said once, as a warning: not also an "Exception in ASGI application" traceback (a docs audit)
        assert "Traceback" not in server.output() and "Exception in ASGI application" not in server.output()


def test_http_score_names_its_query_parameter_and_logs_rows_not_utf8(
    churn_bundle: bundle.BundleRef, tmp_path: Path
) -> None:
    store = copy_store(churn_bundle, tmp_path / "models")
    source, bad = _cp1252_telco(tmp_path / "cp1252.csv")
    csv = {"content-type": "text/csv"}
    with running_server(store) as server:
        url = server.url + "/models/churn/score"
        # over HTTP `keep` is a query parameter, not the command line's --keep
        refused = httpx.post(url + "?keep=nope", content=_telco_head(tmp_path / "in.csv", 5).read_bytes(), headers=csv)
        assert refused.status_code == 422
        assert refused.json()["error"] == "?keep names column(s) not in the input: nope"
        # the rows stay in the answer with their reason; the server's log says how many and what reads them
        answer = httpx.post(url, content=source.read_bytes(), headers=csv, timeout=60)
        assert answer.status_code == 200 and answer.text.count("not valid UTF-8") == bad
        deadline = time.monotonic() + 10  # the summary is logged as the scorer's thread ends
        while "not valid UTF-8 (" not in server.output() and time.monotonic() < deadline:
            time.sleep(0.1)
    assert (
        f"upload: {bad} rows are not valid UTF-8 (cp1252 reads them): the client should send UTF-8" in server.output()
    )


def test_http_score_reads_a_body_as_its_charset_and_query_say(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """`tabserve score`'s --encoding, --sep and --decimal over HTTP: the Content-Type's charset (or
    ?encoding=), ?sep= and ?decimal=. A European export was read with the training file's points."""
    store = copy_store(churn_bundle, tmp_path / "models")
    source, _ = _cp1252_telco(tmp_path / "cp1252.csv")
    cli = tmp_path / "cli.csv"
    cp1252 = churn_bundle.preprocess.read.but(None, "cp1252", None)
    score_file(Scorer(churn_bundle, "cpu", reading=cp1252), open_source(source, reading=cp1252), cli)
    rows = list(csv.DictReader(_telco_head(tmp_path / "in.csv", 60).open()))
    for row in rows:  # whole amounts: a European `1.890` (one thousand eight hundred and ninety) reads as 1.89
        row["TotalCharges"] = str(round(float(row["TotalCharges"]))) if row["TotalCharges"].strip() else ""
    plain = ",".join(rows[0]) + "\n" + "".join(",".join(row.values()) + "\n" for row in rows)

    def european(row: dict[str, str]) -> str:
        total = row["TotalCharges"]
        grouped = f"{int(total):,}".replace(",", ".") if total else ""
        return ";".join(
            {**row, "TotalCharges": grouped, "MonthlyCharges": row["MonthlyCharges"].replace(".", ",")}.values()
        )

    european_text = ";".join(rows[0]) + "\n" + "".join(european(row) + "\n" for row in rows)
    with running_server(store) as server:
        url = server.url + "/models/churn/score"
        for headers, query in [({"content-type": "text/csv; charset=cp1252"}, ""), ({}, "?encoding=cp1252")]:
            answer = httpx.post(
                url + query, content=source.read_bytes(), headers=headers or {"content-type": "text/csv"}
            )
            assert answer.status_code == 200 and "not valid UTF-8" not in answer.text
            assert answer.content == cli.read_bytes()
        text_csv = {"content-type": "text/csv"}
        # ?encoding= is read as named; a charset, which clients often set by default, gives way to a UTF-8 start
        utf8 = source.read_bytes().decode("cp1252").encode("utf-8")
        labelled = httpx.post(url, content=utf8, headers={"content-type": "text/csv; charset=cp1252"})
        assert labelled.status_code == 200 and labelled.content == cli.read_bytes()
        named = httpx.post(url + "?encoding=cp1252", content=utf8, headers=text_csv)
        assert named.status_code == 200 and "\u00c3\u00bc".encode() in named.content
        expected = httpx.post(url, content=plain.encode(), headers=text_csv).content
        read_as_points = httpx.post(url, content=european_text.encode(), headers=text_csv)
        assert read_as_points.status_code == 200 and read_as_points.content != expected
        answer = httpx.post(url + "?sep=%3B&decimal=%2C", content=european_text.encode(), headers=text_csv)
        assert answer.status_code == 200 and answer.content == expected
        for query, headers, status, said in [
            ("?decimal=x", text_csv, 422, "?decimal is . or , not 'x'"),
            ("?sep=ab", text_csv, 422, "?sep takes one character"),
            ("?encoding=nope", text_csv, 422, "?encoding: 'nope' is not a text encoding"),
            ("?encoding=base64", text_csv, 422, "?encoding: 'base64' is not a text encoding"),  # a codec, not text
            ("", {"content-type": "text/csv; charset=nope"}, 415, "charset 'nope' is not an encoding"),
            ("", {"content-type": "text/csv; charset=rot13"}, 415, "charset 'rot13' is not an encoding"),
        ]:
            refused = httpx.post(url + query, content=plain.encode(), headers=headers)
            assert refused.status_code == status and said in refused.json()["error"], refused.text


def test_an_upload_counts_its_rows_by_version_as_by_model(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """An audit: an upload's rows moved tabserve_rows_scored_total but not
    tabserve_version_rows_scored_total, so the per-version series did not add up to the model's."""
    store = copy_store(churn_bundle, tmp_path / "models")
    small = _telco_head(tmp_path / "small.csv", 40)

    def series(server_url: str) -> dict[str, float]:
        lines = httpx.get(server_url + "/metrics").text.splitlines()
        return {
            k: float(v)
            for k, v in (
                line.rsplit(" ", 1) for line in lines if line.startswith("tabserve_") and "rows_scored" in line
            )
        }

    with running_server(store) as server:
        answer = httpx.post(
            server.url + "/models/churn/score", content=small.read_bytes(), headers={"content-type": "text/csv"}
        )
        assert answer.status_code == 200
        found = series(server.url)
        assert found['tabserve_rows_scored_total{model="churn"}'] == 40, found
        assert found['tabserve_version_rows_scored_total{model="churn",version="1"}'] == 40, found
