"""Scoring under hostile input: over-long records and headers, gzip bombs, too many uploads, an
unread answer, a full disk, crafted arguments to the C lookup. Rows out == rows in, clear errors."""

from __future__ import annotations

import contextlib
import csv
import gzip
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service import bundle
from service.scoring.local import Scorer, score_file
from tests.conftest import TELCO
from tests.service.conftest import Server
from tests.service.test_scoring import _read

CSV = {"content-type": "text/csv"}
RECORD_LIMIT, LIMIT_TEXT = 1 << 20, "1 MiB"  # the documented limit for one CSV record
LONG = 3 * RECORD_LIMIT  # NOTE: bigger than Arrow's block would have been for these files


def _telco(n: int, eol: bytes = b"\n") -> tuple[bytes, list[bytes]]:
    """The telco header and its first n data rows (cycled past the file's end), each ending in eol."""
    lines = TELCO.read_bytes().splitlines()
    body = [lines[1 + i % (len(lines) - 1)] + eol for i in range(n)]
    return lines[0] + eol, body


def _field(row: bytes, index: int, value: bytes) -> bytes:
    """A row with one field replaced (the row's line break kept)."""
    eol = row[len(row.rstrip(b"\r\n")) :]
    fields = row.rstrip(b"\r\n").split(b",")
    fields[index] = value
    return b",".join(fields) + eol


def _hostile_rows(eol: bytes) -> tuple[bytes, list[bytes], dict[int, str]]:
    """3,000 telco rows, five of them bad, and the error each bad row (1-based) must get."""
    header, rows = _telco(3000, eol)
    rows[16] = _field(rows[16], 1, b"x" * LONG)  # one unquoted field over the limit
    quoted = b'"' + (b"many\nlines," * (RECORD_LIMIT // 10)) + b'"'  # a quoted field with line breaks
    rows[1500] = _field(rows[1500], 17, quoted)
    rows[2000] = b",".join([b"short", b"y" * 200_000, b"row"]) + eol  # over the csv module's field limit
    rows[2500] = _field(rows[2500], 17, b'"' + b"z" * (RECORD_LIMIT - 300) + b'"')  # long, under the limit
    rows[2999] = b"w" * LONG  # the last row: over the limit, no line break
    return (
        header,
        rows,
        {
            17: f"row 17: the record is {len(rows[16].rstrip()):,} bytes, over the {LIMIT_TEXT} limit for one record",
            1501: f"row 1501: the record is {len(rows[1500].rstrip()):,} bytes, over the {LIMIT_TEXT} limit",
            2001: "row 2001: expected 21 fields, got 3",
            3000: f"row 3000: the record is {LONG:,} bytes, over the {LIMIT_TEXT} limit for one record",
        },
    )


def _check_scored(scored: list[dict[str, str]], rows: list[bytes], errors: dict[int, str]) -> None:
    assert len(scored) == len(rows)
    failed = {i + 1: r["error"] for i, r in enumerate(scored) if r["error"]}
    assert sorted(failed) == sorted(errors)
    for row, message in errors.items():
        assert failed[row].startswith(message), (failed[row][:200], message)
    ids = [r.split(b",", 1)[0].decode() for r in rows]
    assert all(scored[i]["customerID"] == ids[i] for i in range(len(rows)) if i + 1 not in errors)
    assert all(r["label"] in ("Yes", "No") for i, r in enumerate(scored) if i + 1 not in errors)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_a_record_over_the_limit_is_written_in_place_with_its_reason(
    churn_bundle: bundle.BundleRef, tmp_path: Path, eol: bytes
) -> None:
    header, rows, errors = _hostile_rows(eol)
    source = tmp_path / "in.csv"
    source.write_bytes(header + b"".join(rows))
    for chunk in (50, 16_384):  # NOTE: many batches per Arrow block, and one
        out = tmp_path / f"out{chunk}.csv"
        summary = score_file(Scorer(churn_bundle, "cpu"), source, out, chunk_rows=chunk, keep=["customerID"])
        assert summary.rows_in == len(rows) and summary.rows_failed == len(errors)
        _check_scored(_read(out), rows, errors)


def test_a_quote_inside_an_unquoted_field_is_a_plain_character(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """Arrow opens a quoted field only at a field's start: a lone `"` mid-field must not make the
    next megabytes look like one record over the limit (that would drop rows)."""
    header, rows = _telco(20_000)
    rows[5] = _field(rows[5], 17, b'Credit card 5" wide')
    rows[6] = _field(rows[6], 17, b'"Bank, ""transfer"""')
    source = tmp_path / "in.csv"
    source.write_bytes(header + b"".join(rows))
    out = tmp_path / "out.csv"
    summary = score_file(Scorer(churn_bundle, "cpu"), source, out, keep=["customerID", "PaymentMethod"])
    assert (summary.rows_in, summary.rows_failed) == (len(rows), 0)
    scored = _read(out)
    assert scored[5]["PaymentMethod"] == 'Credit card 5" wide' and scored[6]["PaymentMethod"] == 'Bank, "transfer"'


def test_quoted_fields_across_blocks_score_as_unquoted(churn_bundle: bundle.BundleRef, tmp_path: Path) -> None:
    """Every field quoted (as many exports write them), some with line breaks and doubled quotes: the
    same rows and scores as the plain file, wherever a block boundary falls."""
    header, rows = _telco(40_000)
    plain = tmp_path / "plain.csv"
    plain.write_bytes(header + b"".join(rows))
    quoted, ids = tmp_path / "quoted.csv", []
    with quoted.open("w", newline="") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
        writer.writerow(header.decode().rstrip().split(","))
        for i, row in enumerate(rows):
            fields = row.decode().rstrip().split(",")
            fields[0] += '\n"quoted"' if i % 997 == 5 else ""
            ids.append(fields[0])
            writer.writerow(fields)
    scorer = Scorer(churn_bundle, "cpu")
    score_file(scorer, plain, tmp_path / "plain_out.csv", chunk_rows=1000)
    summary = score_file(scorer, quoted, tmp_path / "quoted_out.csv", chunk_rows=1000)
    assert (summary.rows_in, summary.rows_failed) == (len(rows), 0)
    expected, scored = _read(tmp_path / "plain_out.csv"), _read(tmp_path / "quoted_out.csv")
    assert [r["customerID"] for r in scored] == ids
    assert [(r["label"], r["probability"]) for r in scored] == [(r["label"], r["probability"]) for r in expected]


def test_http_score_writes_an_over_long_record_in_place(churn_server: Server, tmp_path: Path) -> None:
    header, rows, errors = _hostile_rows(b"\n")
    url = churn_server.url + "/models/churn/score?keep=customerID"
    answer = httpx.post(url, content=header + b"".join(rows), headers=CSV, timeout=120)
    assert answer.status_code == 200
    (tmp_path / "answer.csv").write_bytes(answer.content)
    _check_scored(_read(tmp_path / "answer.csv"), rows, errors)


def test_a_header_over_the_limit_or_without_a_line_break_is_a_clear_422(churn_server: Server) -> None:
    url = churn_server.url + "/models/churn/score"
    header, rows = _telco(10)
    wide = b"a" * 200_000 + b"," + header  # NOTE: one header field over the csv module's 128 KiB
    endless = b"c" * (5 * RECORD_LIMIT)  # no line break at all
    for body, needle in [
        (wide + b"".join(rows), "the header line cannot be read"),
        (b"b" * (2 * RECORD_LIMIT) + b"," + header + b"".join(rows), f"over the {LIMIT_TEXT} limit for one record"),
        (endless, f"over the {LIMIT_TEXT} limit for one record"),
        (gzip.compress(endless), f"over the {LIMIT_TEXT} limit for one record"),
    ]:
        encoding = {"content-encoding": "gzip"} if body[:2] == b"\x1f\x8b" else {}
        refused = httpx.post(url, content=body, headers={**CSV, **encoding}, timeout=60)
        assert refused.status_code == 422, refused.text[:300]
        assert needle in refused.json()["error"]
    assert "Traceback" not in churn_server.output()


def test_invocations_refuse_a_huge_csv_field_and_non_text_columns(churn_server: Server) -> None:
    header, rows = _telco(3)
    body = header.replace(b",Churn", b"") + b"".join(r.rsplit(b",", 1)[0] + b"\n" for r in rows)
    lines = body.splitlines(keepends=True)
    lines[2] = _field(lines[2], 1, b"q" * 150_000)  # NOTE: under the 200 kB body limit, over the csv module's
    answer = httpx.post(churn_server.url + "/invocations", content=b"".join(lines), headers=CSV)
    assert answer.status_code == 400
    assert answer.json()["error_code"] == "BAD_REQUEST" and "CSV row 1" in answer.json()["message"]
    split = {"dataframe_split": {"columns": ["customerID", 7], "data": [["a", 1]]}}
    answer = httpx.post(churn_server.url + "/invocations", json=split)
    assert answer.status_code == 400 and "column 1" in answer.json()["message"]


@contextlib.contextmanager
def tiny_tmpfs(mount: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs at `mount` (needs root and mount(8)); the test is skipped where none can be mounted."""
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill: {made.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    with tiny_tmpfs(tmp_path / "full") as mount:
        yield mount


def test_a_full_disk_stops_the_reading_thread_before_the_error_returns(
    churn_bundle: bundle.BundleRef, tmp_path: Path, full_disk: Path
) -> None:
    """An interpreter that exits while the read-ahead thread is inside Arrow aborts (SIGABRT), so
    the thread must be gone by the time the error reaches the caller."""
    header, rows = _telco(100_000)
    source = tmp_path / "in.csv"
    source.write_bytes(header + b"".join(rows))
    for _ in range(3):
        with pytest.raises(OSError, match="No space left on device"):
            score_file(Scorer(churn_bundle, "cpu"), source, full_disk / "out.csv", chunk_rows=4096)
        assert not [t for t in threading.enumerate() if t.name == "tabserve-read"]
        assert list(full_disk.iterdir()) == []


def test_level_codes_refuse_offsets_that_would_wrap() -> None:
    """Crafted offset/length must not pass the bounds check by overflowing (a segfault before)."""
    code = (
        "import sys, numpy as np\n"
        "from service.scoring._levels import level_codes\n"
        "offsets, data = np.array([0, 3], np.int32).tobytes(), b'abc'\n"
        "for offset, length in [(sys.maxsize, 1), (2**62, 2**62), (1, sys.maxsize), (sys.maxsize, sys.maxsize),"
        " (2**62, -2**62 + 1), (1, 1)]:\n"
        "    try:\n"
        "        level_codes(offsets, data, offset, length, (b'abc',))\n"
        "    except (ValueError, OverflowError, MemoryError) as exc:\n"
        "        print('refused', type(exc).__name__)\n"
        "    else:\n"
        "        print('accepted', offset, length)\n"
    )
    pytest.importorskip("service.scoring._levels", reason="the C accelerator is not built")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr}"
    assert run.stdout.splitlines() == ["refused ValueError"] * 6
