"""More business files as they really come, checked as tests/test_business_files.py checks its own: a
file of their own, so that the two test workers (pytest-xdist, a file each) share the trainings."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.make_business_files import Variant
from tests.test_business_files import check_variant, files, store  # noqa: F401 (module fixtures)


@pytest.mark.parametrize(
    "name",
    [
        "semicolon_point",
        "percent_negative",
        "mixed_case",
        "lookalike_target",
        "xlsx",
        "jsonl",
        "parquet",
        "codes",
        "leaked",
    ],
)
def test_each_file_trains_and_scores_as_its_clean_file(files: dict[str, Variant], store: Path, name: str) -> None:  # noqa: F811
    check_variant(files, store, name)
