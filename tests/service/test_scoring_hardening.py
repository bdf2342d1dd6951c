"""Scoring under hostile input: over-long records and headers, gzip bombs, too many uploads, an
unread answer, a full disk, crafted arguments to the C lookup. Rows out == rows in, clear errors."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.conftest import TELCO
from tests.service.conftest import Server

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
