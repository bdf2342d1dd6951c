"""Outcomes through the front doors as users send them: the route of a real service with a log, and
`tabserve feedback` on real files (found by a feedback audit)."""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from monitoring.feedback import UNCLOSED
from monitoring.log import LogLocation
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
        location, deadline = LogLocation.of(store.parent / "log"), time.monotonic() + 20
        while not location.segments("churn") and not location.files("churn"):  # on disk for the CLI
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
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
    assert ragged.status_code == 400 and "record 1: expected 2 fields, got 3" in ragged.json()["error"]


def test_a_body_not_utf8_with_a_ragged_row_is_the_not_utf8_400(served: Server) -> None:
    """The review: the ragged-row reader ran before any UTF-8 check. Many cp1252 rows, a ragged one and a
    byte cp1252 has no character for were a 500 (scoring's transcoder raised); fewer were a "ragged" 400."""
    first = ids(1)[0]
    for many in (5_000, 1):
        rows = f"{first},No,caf\xe9\n" * many
        body = f"customerID,Churn,note\n{rows}{first},No,a,b\n".encode("cp1252") + f"{first},No,\x81\n".encode(
            "latin-1"
        )
        answer = post_csv(served, body)
        assert answer.status_code == 400, answer.text
        assert "not UTF-8 (line 2 holds the byte 0xe9)" in answer.json()["error"], answer.text


def test_header_names_are_stripped_and_one_named_twice_after_stripping_is_refused(served: Server) -> None:
    """`customerID ,Churn` refused every row as "the id column is missing"; scoring strips names."""
    first = ids(1)[0]
    spaced = post_csv(served, f" customerID ,Churn \n{first},No\n".encode())
    assert spaced.status_code == 200 and spaced.json()["stored"] == 1, spaced.text
    twice = post_csv(served, f"customerID,Churn,Churn \n{first},No,Yes\n".encode())
    assert twice.status_code == 400 and "named more than once in the CSV header: Churn" in twice.json()["error"]


def feedback_cli(server: Server, path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`tabserve feedback` on a file, against the service's store and log."""
    log = str(server.store.parent / "log")
    args = ["feedback", "--model", "churn", "--models-dir", str(server.store), "--input", str(path), "--log", log]
    return subprocess.run(
        [sys.executable, "-m", "tabserve.cli", *args, *flags], capture_output=True, text=True, check=False
    )


def test_the_cli_names_the_file_when_the_whole_file_is_wrong_and_reads_gzip(served: Server, tmp_path: Path) -> None:
    """An empty, header-only or binary file and a missing log each said "(1 record(s) refused)"; a
    cp1252 file said only a codec's message; `.csv.gz` was read as CSV (garbage); `.JSON` as CSV."""
    first = ids(1)[0]
    good = f"customerID,Churn\n{first},No\n"
    files = {
        "empty.csv": b"",
        "header.csv": b"customerID,Churn\n",
        "cp1252.csv": f"customerID,Churn,R\xe9sum\xe9\n{first},No,x\n".encode("cp1252"),
        "ragged.csv": (good + f"{first},No,x\n").encode(),
        "outcomes.csv.gz": gzip.compress(good.encode()),
        "OUTCOMES.JSON": b'{"records": [{"customerID": "%s", "Churn": "No"}]}' % first.encode(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    said = {name: feedback_cli(served, tmp_path / name) for name in files}
    for name in ("empty.csv", "header.csv", "cp1252.csv", "ragged.csv"):
        assert said[name].returncode == 2 and "record(s) refused" not in said[name].stderr, (name, said[name].stderr)
        assert name in said[name].stderr, said[name].stderr
    assert "is not UTF-8 (line 1 holds the byte 0xe9): pass --encoding" in said["cp1252.csv"].stderr
    assert "row 2: expected 2 fields, got 3 (1 row(s) not read)" in said["ragged.csv"].stderr
    for name in ("outcomes.csv.gz", "OUTCOMES.JSON"):
        assert said[name].returncode == 0 and "1 outcome(s) stored" in said[name].stdout, said[name].stderr
    read = feedback_cli(served, tmp_path / "cp1252.csv", "--encoding", "cp1252")
    assert read.returncode == 0 and "1 outcome(s) stored" in read.stdout, read.stderr
    no_log = subprocess.run(
        [sys.executable, "-m", "tabserve.cli", "feedback", "--model", "churn", "--models-dir", str(served.store),
         "--input", str(tmp_path / "outcomes.csv.gz"), "--log", str(tmp_path / "nolog")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert no_log.returncode == 2 and "no prediction log for churn" in no_log.stderr
    assert "record(s) refused" not in no_log.stderr


def test_the_cli_names_the_other_row_of_a_conflict_by_its_file_row(served: Server, tmp_path: Path) -> None:
    """The CLI said `row 3 …: id X has another outcome in record 0`: the other is the file's row 1."""
    first, second = ids(2)
    (tmp_path / "two.csv").write_text(f"customerID,Churn\n{first},Yes\n{second},No\n{first},No\n")
    said = feedback_cli(served, tmp_path / "two.csv")
    assert said.returncode == 2, said.stderr
    assert f"row 3, field 'customerID': id {first} has another outcome in row 1 of this submission" in said.stderr


def test_one_id_sent_twice_with_one_outcome_is_stored_and_counted_once(served: Server, tmp_path: Path) -> None:
    """`yes` and `Yes` for one id in one call answered `stored: 2` and wrote two rows, while the live
    window counted one: what is stored and what is counted now agree, and the repeat is named."""
    last = ids(SCORED)[-1]
    before = httpx.get(served.url + "/models/churn/monitor").json()["accuracy"]["versions"].get("1", {}).get("rows", 0)
    sent = {"records": [{"customerID": last, "Churn": "Yes"}, {"customerID": last, "Churn": "yes"}]}
    answer = httpx.post(served.url + "/models/churn/feedback", json=sent).json()
    assert (answer["stored"], answer["duplicates"], answer["refused"]) == (1, [1], []), answer
    stored = ds.dataset(served.store.parent / "log" / "churn" / "feedback", format="parquet").to_table()
    assert pc.sum(pc.equal(stored["customerID"], last)).as_py() == 1
    after = httpx.get(served.url + "/models/churn/monitor").json()["accuracy"]["versions"]["1"]["rows"]
    assert after == before + 1
    (tmp_path / "twice.csv").write_text(f"customerID,Churn\n{last},No\n{last},no\n")
    said = feedback_cli(served, tmp_path / "twice.csv")
    assert said.returncode == 0 and "1 outcome(s) stored (1 repeated an earlier row's id" in said.stdout, said.stdout
    stored = ds.dataset(served.store.parent / "log" / "churn" / "feedback", format="parquet").to_table()
    assert pc.sum(pc.equal(stored["customerID"], last)).as_py() == 2  # one per call


def test_an_unreadable_file_in_the_log_is_named_and_nothing_is_stored(served: Server, tmp_path: Path) -> None:
    """One `.parquet` that is not Parquet in the log made every feedback call a 500 with a traceback."""
    first = ids(1)[0]
    bad = served.store.parent / "log" / "churn" / "date=2099-12-04" / "x.parquet"
    bad.parent.mkdir()
    bad.write_bytes(b"x\n")
    (tmp_path / "one.csv").write_text(f"customerID,Churn\n{first},No\n")
    try:
        answer = post_csv(served, f"customerID,Churn\n{first},No\n".encode())
        said = feedback_cli(served, tmp_path / "one.csv")
    finally:
        bad.unlink()
        bad.parent.rmdir()
    assert answer.status_code == 500 and "Traceback" not in answer.text, answer.text
    assert f"the prediction log holds {bad}, which is not readable Parquet" in answer.json()["error"]
    assert said.returncode == 2 and str(bad) in said.stderr and "nothing was stored" in said.stderr, said.stderr
    assert post_csv(served, f"customerID,Churn\n{first},No\n".encode()).status_code == 200


def test_an_unreadable_feedback_file_fails_no_call_and_is_set_aside(served: Server) -> None:
    """A feedback file cut short made compaction raise after the call's outcome was stored: a 500 with
    a traceback, the client sent it again (stored twice), and every later call that day failed too. It is
    set aside (`.cut.parquet.unreadable`), out of every reader's listing, never removed."""
    import pyarrow.parquet as pq

    from monitoring.feedback import COMPACT_FILES
    from monitoring.log import day_of

    first = ids(1)[0]
    day = served.store.parent / "log" / "churn" / "feedback" / f"date={day_of(time.time())}"
    day.mkdir(parents=True, exist_ok=True)

    def sent(customer: str) -> int:
        files = [f for f in day.glob("*.parquet") if f.name != "cut.parquet"]
        stored = pa.concat_tables(
            [pq.read_table(f, columns=["customerID"]) for f in files]
            or [pa.table({"customerID": pa.array([], pa.string())})]
        )
        return int(pc.sum(pc.equal(stored["customerID"], customer)).as_py() or 0)

    before = sent(first)
    at = pa.array([time.time_ns() // 1000], pa.timestamp("us", tz="UTC"))
    one = pa.table({"customerID": ["z-old"], "_outcome": ["No"], "_target": ["Churn"], "_at": at})
    for i in range(COMPACT_FILES):  # the next call's own file makes more than COMPACT_FILES: a merge
        pq.write_table(one, day / f"old-{i:03d}.parquet")
    whole = (day / "old-000.parquet").read_bytes()
    bad = day / "cut.parquet"
    bad.write_bytes(whole[: len(whole) // 2])  # a disk that filled mid-write
    try:
        answers = [post_csv(served, f"customerID,Churn\n{first},Yes\n".encode()) for _ in range(2)]
        assert [a.status_code for a in answers] == [200, 200], answers[0].text
        assert [a.json()["stored"] for a in answers] == [1, 1]
        aside = day / ".cut.parquet.unreadable"
        assert not bad.exists() and aside.read_bytes() == whole[: len(whole) // 2]  # set aside, as it was
        assert f"{bad} is not readable Parquet" in served.output() and str(aside) in served.output()
        readable = [pq.read_table(f) for f in sorted(day.glob("*.parquet"))]
        assert len(readable) < COMPACT_FILES  # the readable ones were merged all the same
        assert sent(first) == before + 2 and sent("z-old") == COMPACT_FILES  # once per call, never more
    finally:
        (day / ".cut.parquet.unreadable").unlink(missing_ok=True)


def test_a_merge_that_fails_for_another_reason_fails_no_call(served: Server) -> None:
    """The review: the catch-all around the merge was untested. With every file's faults set aside, what
    reaches it is the disk's (a full disk on the merged file's write; here the lock file cannot be opened):
    the call's outcome is stored, the call answers 200 once, the failure is logged, the next call merges."""
    import pyarrow.parquet as pq

    from monitoring.feedback import COMPACT_FILES
    from monitoring.log import day_of

    first = ids(1)[0]
    day = served.store.parent / "log" / "churn" / "feedback" / f"date={day_of(time.time())}"
    day.mkdir(parents=True, exist_ok=True)
    at = pa.array([time.time_ns() // 1000], pa.timestamp("us", tz="UTC"))
    for i in range(COMPACT_FILES):
        pq.write_table(
            pa.table({"customerID": ["z"], "_outcome": ["No"], "_target": ["Churn"], "_at": at}), day / f"z-{i}.parquet"
        )
    lock = day / ".compact.lock"
    lock.unlink(missing_ok=True)
    lock.mkdir()  # open(…, "a") raises IsADirectoryError, as a write to a full disk raises OSError
    try:
        answer = post_csv(served, f"customerID,Churn\n{first},Yes\n".encode())
        assert answer.status_code == 200 and answer.json()["stored"] == 1, answer.text
        assert f"merging the feedback files of {day} failed (the outcomes are stored)" in served.output()
        assert len(list(day.glob("*.parquet"))) > COMPACT_FILES  # not merged, nothing lost
    finally:
        lock.rmdir()
    assert post_csv(served, f"customerID,Churn\n{first},Yes\n".encode()).status_code == 200
    assert len(list(day.glob("*.parquet"))) < COMPACT_FILES


def test_an_encoding_that_is_no_text_encoding_is_refused_as_score_refuses_it(served: Server, tmp_path: Path) -> None:
    """`--encoding` was checked by catching LookupError around the whole command, which also caught any
    KeyError or IndexError as "no such encoding"; `base64` (a codec, not a text encoding) was said not to exist."""
    (tmp_path / "one.csv").write_text(f"customerID,Churn\n{ids(1)[0]},No\n")
    for name in ("nope", "base64"):
        said = feedback_cli(served, tmp_path / "one.csv", "--encoding", name)
        assert said.returncode == 2 and f"--encoding: '{name}' is not a text encoding Python knows" in said.stderr


def test_a_repeat_of_a_refused_record_is_refused_with_it_not_stored_once(served: Server, tmp_path: Path) -> None:
    """Two records for an id never scored, with `partial`, answered `stored 0, duplicates [1], refused [0]`,
    and the CLI said the repeat was "stored once": it is refused with its first copy's message."""
    sent = {"records": [{"customerID": "never-scored", "Churn": "Yes"}, {"customerID": "never-scored", "Churn": "yes"}]}
    answer = httpx.post(served.url + "/models/churn/feedback", params={"partial": "true"}, json=sent).json()
    assert (answer["stored"], answer["duplicates"]) == (0, []), answer
    assert [d["record"] for d in answer["refused"]] == [0, 1]
    assert answer["refused"][0]["message"] == answer["refused"][1]["message"]
    assert "is not in the prediction log of churn" in answer["refused"][1]["message"]
    (tmp_path / "twice.csv").write_text("customerID,Churn\nnever-scored,No\nnever-scored,no\n")
    said = feedback_cli(served, tmp_path / "twice.csv", "--partial")
    assert said.returncode == 0 and "0 outcome(s) stored, 2 refused" in said.stdout, said.stdout
    assert "repeated" not in said.stdout and said.stdout.count("is not in the prediction log") == 2


def test_a_ragged_row_is_numbered_as_score_numbers_it_and_named_by_record(served: Server, tmp_path: Path) -> None:
    """A ragged row was named by pyarrow's `Row #`, counting the header but not blank lines or a quoted
    line break: the bad row on line 5 was "line 3", while `tabserve score` names it row 2."""
    first, second = ids(2)
    body = f'customerID,Churn,note\n{first},No,"two\nlines"\n\n{second},No,x,extra\n'.encode()
    answer = post_csv(served, body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["details"] == [{"record": 1, "field": None, "message": "expected 3 fields, got 4"}]
    (tmp_path / "ragged.csv").write_bytes(body)
    said = feedback_cli(served, tmp_path / "ragged.csv")
    assert said.returncode == 2 and "ragged.csv: row 2: expected 3 fields, got 4" in said.stderr, said.stderr
    from service.scoring.files import ROW, UNPARSED, numbered, open_source

    source = open_source(tmp_path / "ragged.csv")  # the reader `tabserve score` reads the file with
    rows = pa.Table.from_batches(list(numbered(source, source.columns))).to_pylist()
    assert [(r[ROW], r[UNPARSED]) for r in rows] == [(1, None), (2, "expected 3 fields, got 4")]


def test_a_quote_never_closed_is_refused_naming_its_row(served: Server, tmp_path: Path) -> None:
    """The review: the rows after a quote never closed were read into its row: `stored 1, refused 0`, the
    two outcomes after it neither stored nor refused (`tabserve score` says `unclosed_quote`)."""
    first, second, third, fourth = ids(4)
    body = f'customerID,Churn,note\n{first},No,ok\n\n{second},Yes,"x\n{third},No,y\n{fourth},Yes,z\n'.encode()
    answer = post_csv(served, body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["details"] == [{"record": 1, "field": None, "message": UNCLOSED}]
    (tmp_path / "unclosed.csv").write_bytes(body)
    said = feedback_cli(served, tmp_path / "unclosed.csv", "--partial")
    assert said.returncode == 2 and f"unclosed.csv: row 2: {UNCLOSED}" in said.stderr, said.stderr
    closed = body.replace(b'"x\n', b'"x"\n')
    assert post_csv(served, closed).json()["stored"] == 4


def test_a_quoted_record_over_scorings_limit_is_stored_and_an_unclosed_row_named_once(
    served: Server, tmp_path: Path
) -> None:
    """The review: the quote re-read refused a body pyarrow had read, for a quoted record over scoring's 1 MiB
    limit for one record (stored before); and a row both ragged and with a quote never closed had two
    details, the ragged one first. The limit is scoring's alone; the unclosed quote is that row's one detail."""
    first, second, third = ids(3)
    long = "x" * (1 << 20)
    body = f'customerID,Churn,note\n{first},No,"{long}"\n{second},Yes,ok\n'.encode()
    answer = post_csv(served, body)
    assert answer.status_code == 200 and answer.json()["stored"] == 2, answer.text
    body = f'customerID,Churn,note\n{first},No,ok\n{second},Yes,extra,"x\n{third},No,y\n'.encode()
    answer = post_csv(served, body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["details"] == [{"record": 1, "field": None, "message": UNCLOSED}]
    (tmp_path / "both.csv").write_bytes(body)
    said = feedback_cli(served, tmp_path / "both.csv")
    assert said.returncode == 2 and f"both.csv: row 2: {UNCLOSED} (1 row(s) not read)" in said.stderr, said.stderr


def test_the_cli_chooses_a_csvs_encoding_as_score_does(served: Server, tmp_path: Path) -> None:
    """`--encoding` defaulted to utf-8, so a cp1252 export `tabserve score` reads (its encoding detected)
    was refused; now it is read, the guess said with the words it reads, as scoring chooses it."""
    rows = "".join(f"{customer},No,caf\xe9 cr\xe8me\n" for customer in ids(4))
    (tmp_path / "cp1252.csv").write_bytes(f"customerID,Churn,note\n{rows}".encode("cp1252"))
    said = feedback_cli(served, tmp_path / "cp1252.csv")
    assert said.returncode == 0 and "4 outcome(s) stored" in said.stdout, said.stderr
    assert "its encoding was guessed: cp1252, reading 'café'" in said.stderr, said.stderr
    (tmp_path / "utf16.csv").write_bytes(f"customerID,Churn\n{ids(1)[0]},No\n".encode("utf-16"))
    said = feedback_cli(served, tmp_path / "utf16.csv")  # Excel's "Unicode Text": its byte-order mark says so
    assert said.returncode == 0 and "1 outcome(s) stored" in said.stdout and "guessed" not in said.stderr, said.stderr
