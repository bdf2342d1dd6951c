"""Scoring under hostile input: over-long records and headers, gzip bombs, too many uploads, an
unread answer, a full disk, crafted arguments to the C lookup. Rows out == rows in, clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

CSV = {"content-type": "text/csv"}
RECORD_LIMIT, LIMIT_TEXT = 1 << 20, "1 MiB"  # the documented limit for one CSV record
LONG = 3 * RECORD_LIMIT  # NOTE: bigger than Arrow's block would have been for these files


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
