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


def test_a_period_of_a_few_rows_reads_too_few_rows_and_does_not_order_the_fields(tmp_path: Path) -> None:
    """A 3-row day's PSIs are noise (about 3 with nothing moved): read "too few rows", drawn grey, and
    the field that moved on a full day comes first, not the one the small day's noise put highest."""
    periods = ["2026-12-01 00:00", "2026-12-02 00:00", "2026-12-03 00:00"]
    psi = {"tenure": [0.02, 2.9, 0.05], "Contract": [0.02, 0.4, 0.31], "score": [0.01, 1.5, 0.04]}
    report = Report("churn", 1, periods, [5000, 3, 4800], psi, {}, [1.0], [1.0], [])
    report.noise = {n: [9 / 5000, 9 / 3, 9 / 4800] for n in psi}
    assert report.to_json()["readings"]["tenure"] == ["stable", "too few rows", "stable"]
    assert report.to_json()["readings"]["Contract"] == ["stable", "too few rows", "act"]
    assert sorted(psi, key=lambda n: -report.moved(n)) == ["Contract", "tenure", "score"]
    write_html(report, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "too few rows" in page and page.index("<!-- Contract -->") < page.index("<!-- tenure -->")


def test_hours_are_labelled_with_their_time_and_days_by_their_date(tmp_path: Path) -> None:
    """`--by hour` drew every hour of a day under the same label (the date alone)."""
    hours = ["2026-12-01 23:00", "2026-12-02 00:00", "2026-12-02 01:00"]
    psi = {"tenure": [0.02, 0.03, 0.01], "score": [0.01, 0.02, 0.01]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Tight layout not applied": the slanted times had no room
        write_html(Report("churn", 1, hours, [900, 900, 900], psi, {}, [1.0], [1.0], []), tmp_path / "hours.html")
    page = (tmp_path / "hours.html").read_text()
    assert all(f"<!-- {hour} -->" in page for hour in hours)
    days = ["2026-12-01 00:00", "2026-12-02 00:00"]
    two = {n: v[:2] for n, v in psi.items()}
    write_html(Report("churn", 1, days, [900, 900], two, {}, [1.0], [1.0], []), tmp_path / "days.html")
    page = (tmp_path / "days.html").read_text()
    assert "<!-- 2026-12-01 -->" in page and "<!-- 2026-12-02 00:00 -->" not in page
