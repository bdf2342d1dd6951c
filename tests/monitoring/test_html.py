"""`tabserve monitor --html` on a file whose column names are long (german's run to 56 characters)."""

from __future__ import annotations

import warnings
from pathlib import Path

from monitoring.html import write_html
from monitoring.report import Report


def test_long_feature_names_fit_the_heat_map_without_a_warning(tmp_path: Path) -> None:
    names = ["number_of_people_being_liable_to_provide_maintenance_for", "age_in_years", "score"]
    report = Report("credit", 1, ["2024-01-01 00:00"], [10], {n: [0.01] for n in names}, {}, [1.0], [1.0], [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "Tight layout not applied" reached the user's console
        write_html(report, tmp_path / "report.html")
    assert "number_of_people_being_liable_to_provide_maintenance_for" in (tmp_path / "report.html").read_text()
