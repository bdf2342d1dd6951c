"""Outcomes as sent, and the join across days: a CSV's ids and labels stay text; an outcome that
arrives days after its prediction still labels it in the export."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from monitoring.feedback import records_of
from monitoring.report import LogReader


def test_csv_outcomes_stay_as_sent() -> None:
    body = b"customerID,Churn\n007,True\n1e3,No\n,Yes\n"
    assert records_of(body, "text/csv") == [
        {"customerID": "007", "Churn": "True"},
        {"customerID": "1e3", "Churn": "No"},
        {"customerID": "", "Churn": "Yes"},  # empty: refused as a missing id when checked
    ]


def test_an_outcome_days_later_labels_its_prediction(tmp_path: Path) -> None:
    def at(day: str) -> pa.Array:
        return pa.array([f"2024-01-{day}T10:00:00"]).cast(pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))

    predicted = tmp_path / "churn" / "date=2024-01-01"
    predicted.mkdir(parents=True)
    pq.write_table(
        pa.table(
            {"_at": at("01"), "customerID": ["a"], "tenure": pa.array([3.0], pa.float32()), "_probability": [0.7]}
        ),
        predicted / "p.parquet",
    )
    outcomes = tmp_path / "churn" / "feedback" / "date=2024-01-09"
    outcomes.mkdir(parents=True)
    pq.write_table(
        pa.table({"customerID": ["a"], "_outcome": ["Yes"], "_target": ["Churn"], "_at": at("09")}),
        outcomes / "f.parquet",
    )
    out = tmp_path / "train.parquet"
    assert LogReader(tmp_path, "churn").export(out, labelled=True) == 1
    assert pq.read_table(out).to_pylist() == [{"customerID": "a", "tenure": 3.0, "Churn": "Yes"}]
