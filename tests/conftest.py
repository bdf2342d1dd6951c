"""Shared fixtures: real data sets, small real trainings, real bundles in tmp directories."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

# each pytest-xdist worker starts a Ray of its own: never one joining another's (ray.init's default
# joins the latest local cluster, which the other worker may shut down under it)
os.environ.setdefault("RAY_ADDRESS", "local")

ROOT = Path(__file__).resolve().parents[1]
TELCO = ROOT / "data" / "telco_churn.csv"
GERMAN = ROOT / "data" / "german_credit.csv"

# NOTE: few epochs and two members keep each real training to a second or two; no screened candidate
# (german would train one in every test: tests/training/test_screen.py covers it)
QUICK = dict(epochs=4, ensemble=2, patience=2, report_plots=False, screen="off")


def quick_config(data: Path, target: str, models_dir: Path, **overrides: Any):
    """A real TrainConfig for a fast run on a real file."""
    from training.config import build_config

    return build_config(data=str(data), target=target, models_dir=str(models_dir), **{**QUICK, **overrides})


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    """A small CSV built by a test (factory, not a copied literal file)."""
    import csv

    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def churn_bundle(tmp_path_factory: pytest.TempPathFactory):
    """A real churn bundle (trained on the bundled telco file) in its own model store."""
    from training.pipeline import train

    store = tmp_path_factory.mktemp("store")
    result = train(quick_config(TELCO, "Churn", store, name="churn"), say=lambda _: None)
    assert result.bundle is not None
    return result.bundle
