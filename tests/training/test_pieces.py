"""Piecewise-linear pieces of the numerics (and a date's weekday and time of year) for the deep path:
fitted on the training rows, inside the published graph, explained as their column."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from service import bundle
from service.features import DateParse, NumericFeature, Preprocess
from service.runtime import CPU, create_session
from tests.conftest import GERMAN, TELCO, quick_config
from training.config import TrainConfig
from training.data import DATE_PIECES, MAX_PIECES, fit_features, infer_schema, piece_edges
from training.model import Normalize, Pieces
from training.pipeline import fit_rows_of, prepare_data, train


def test_each_numeric_is_cut_at_its_training_quantiles_inside_the_published_graph(tmp_path: Path) -> None:
    cfg = quick_config(GERMAN, "creditability", tmp_path, name="german")
    result = train(cfg, say=lambda _: None)
    assert result.bundle is not None and result.model is not None
    pre = Preprocess.load(result.bundle.path / bundle.PREPROCESS_FILE)
    prep = prepare_data(cfg, say=lambda _: None)
    fit = prep.enc.num[fit_rows_of(prep.split, cfg)]
    cut = [j for j, f in enumerate(pre.numeric) if f.bins]
    assert cut  # german: duration, amount and age have many values
    for j in cut:  # the edges are the quantiles of the rows preprocessing was fitted on, never the test rows
        edges = np.unique(np.quantile(fit[:, j].astype(np.float64), np.linspace(0, 1, cfg.numeric_bins + 1)))
        assert np.allclose(pre.numeric[j].bins, edges, rtol=1e-6)
    # at edge i the first i pieces are full and the others empty; halfway, piece i is half full
    pieces, norm = Pieces(pre), Normalize(pre)
    start = 0
    for j, f in enumerate(pre.numeric):
        n = max(len(f.bins) - 1, 0)
        if not n:
            continue
        edges = torch.tensor(f.bins, dtype=torch.float32)
        raw = torch.zeros(n + 1, len(pre.numeric))
        raw[:, j] = edges
        got = pieces(norm(raw))[:, start : start + n]
        assert torch.allclose(got, torch.tril(torch.ones(n + 1, n), diagonal=-1), atol=1e-4)
        raw[:-1, j] = (edges[:-1] + edges[1:]) / 2
        half = pieces(norm(raw))[:-1, start : start + n]
        assert torch.allclose(half, torch.tril(torch.ones(n, n), diagonal=-1) + torch.eye(n) / 2, atol=1e-4)
        start += n
    assert start == pieces.width
    # the published graph matches the trained model, far outside the training range too
    num, cat = prep.enc.num[:200].copy(), prep.enc.cat[:200]
    num[:50, cut] *= 1000
    num[50:100, cut] = -num[50:100, cut]
    session = create_session(result.bundle.path / bundle.MODEL_FILE, CPU)
    with torch.no_grad():
        want = result.model(torch.from_numpy(num), torch.from_numpy(cat)).numpy()
    assert np.abs(session.run(None, {"num": num, "cat": cat})[0] - want).max() < 1e-5


def _date_feature(reference: str, ages: np.ndarray) -> Preprocess:
    feat = NumericFeature(
        "day",
        float(ages.mean()),
        float(ages.std()),
        float(np.median(ages)),
        float(ages.min()),
        float(ages.max()),
        date=DateParse(reference),
        cycles=("weekday", "year"),
    )
    return Preprocess(task="binary", target="y", labels=[0, 1], features=[feat])


def test_a_date_reads_as_its_weekday_and_month() -> None:
    days = [dt.date(1995, 1, 1) + dt.timedelta(days=i) for i in range(0, 40 * 365, 3)]
    pre = _date_feature("2034-12-31T00:00:00", np.array([0.0, 14600.0]))
    parse = pre.numeric[0].date
    assert parse is not None
    ages = torch.tensor([[parse(d.isoformat())] for d in days], dtype=torch.float32)
    pieces = Pieces(pre)(Normalize(pre)(ages)).numpy()
    assert pieces.shape == (len(days), 7 + 12)
    # a weekday's pieces: one hat per day, so a date is its weekday one-hot
    weekday = pieces[:, :7]
    assert np.array_equal(weekday.argmax(axis=1), [d.weekday() for d in days])
    assert np.allclose(weekday, np.eye(7)[weekday.argmax(axis=1)], atol=1e-3)
    # the time of year: twelve hats, one per twelfth of the year; away from a month's ends (a twelfth
    # against a month, the calendar's leap days against a mean year) the highest is the date's month
    year = pieces[:, 7:]
    assert np.allclose(year.sum(axis=1), 1.0, atol=1e-3)
    inside = np.array([4 <= d.day <= 26 for d in days])
    assert np.array_equal(year.argmax(axis=1)[inside] + 1, np.array([d.month for d in days])[inside])


def test_a_time_of_day_moves_the_calendar_smoothly_around_the_week_and_the_year() -> None:
    """Timestamps a minute apart over two weeks across a new year: the weekday's hats and the year's
    always add up to 1 and move by a minute's share, Sunday to Monday, at every hour and where the
    year wraps (2020-01-01 03:00 exactly, as the mean year falls): no jump for rounding to decide."""
    start = dt.datetime(2019, 12, 25, 0, 0)
    times = [start + dt.timedelta(minutes=m) for m in range(0, 14 * 24 * 60)]
    pre = _date_feature("2021-06-30T00:00:00", np.array([0.0, 2000.0]))
    parse = pre.numeric[0].date
    assert parse is not None
    ages = torch.tensor([[parse(t.isoformat())] for t in times], dtype=torch.float32)
    pieces = Pieces(pre)(Normalize(pre)(ages)).numpy()
    weekday, year = pieces[:, :7], pieces[:, 7:]
    assert np.allclose(weekday.sum(axis=1), 1.0, atol=1e-3) and np.allclose(year.sum(axis=1), 1.0, atol=1e-3)
    assert np.abs(np.diff(weekday, axis=0)).max() < 3 / (24 * 60)  # a minute of a day, with float32's slack
    assert np.abs(np.diff(year, axis=0)).max() < 1e-3  # a minute of a twelfth of a year is 2e-5
    noon = [i for i, t in enumerate(times) if t.hour == 12 and t.minute == 0]
    assert np.allclose(weekday[noon].max(axis=1), 0.5, atol=1e-3)  # halfway between its day and the next


def test_a_date_column_trains_with_its_cycles_and_explains_them_as_the_date(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    df = pd.read_csv(TELCO)
    start = pd.Timestamp("2022-01-01")
    df["signup"] = [(start + pd.Timedelta(days=int(d))).date().isoformat() for d in rng.integers(0, 900, len(df))]
    path = tmp_path / "telco_dates.csv"
    df.to_csv(path, index=False)
    result = train(quick_config(path, "Churn", tmp_path, name="dated"), say=lambda _: None)
    assert result.bundle is not None
    pre = Preprocess.load(result.bundle.path / bundle.PREPROCESS_FILE)
    signup = next(f for f in pre.numeric if f.name == "signup")
    assert signup.date is not None and signup.cycles == ("weekday", "year")
    doc = json.loads((result.bundle.path / bundle.METRICS_FILE).read_text())
    # the export checked that effects sum to the score; one effect per column, the date's included
    effects = doc["explanations"]["mean_abs_effect"]
    assert set(effects) == {f.name for f in pre.features} and effects["signup"] > 0


def test_a_date_that_tells_the_target_apart_gets_finer_pieces(tmp_path: Path) -> None:
    """A signup date (tenure months back, which predicts churn) is cut at DATE_PIECES × as many
    quantiles; a date drawn at random keeps --numeric-bins (finer pieces of noise overfit)."""
    rng = np.random.default_rng(2)
    df = pd.read_csv(TELCO)
    end = pd.Timestamp("2024-06-30")
    df["signup"] = [
        (end - pd.Timedelta(days=30 * int(t) + int(d))).date().isoformat()
        for t, d in zip(df["tenure"], rng.integers(0, 30, len(df)), strict=True)
    ]
    df["noise_date"] = [(end - pd.Timedelta(days=int(d))).date().isoformat() for d in rng.integers(0, 2000, len(df))]
    y = (df["Churn"] == "Yes").to_numpy().astype(np.int64)
    cfg = TrainConfig(data=tmp_path / "dated.csv", target="Churn")
    feats = {f.name: f for f in fit_features(df, infer_schema(df, cfg), cfg, y) if isinstance(f, NumericFeature)}
    assert feats["signup"].date is not None and feats["noise_date"].date is not None
    assert len(feats["signup"].bins) - 1 == cfg.numeric_bins * DATE_PIECES
    assert len(feats["noise_date"].bins) - 1 == cfg.numeric_bins
    assert len(feats["MonthlyCharges"].bins) - 1 == cfg.numeric_bins  # not a date: as before


def test_a_finer_date_that_no_longer_fits_under_the_cap_keeps_the_plain_pieces() -> None:
    """Six numerics (96 pieces) and a date that asks for 64: over the cap, the columns that tell the
    target apart most go first; a weak date still gets its 16 where 64 no longer fit, a strong one 64."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 4000)
    strong = [y * 2.0 + rng.normal(size=len(y)) for _ in range(6)]
    for signal, want in [(0.3, 16), (20.0, 64)]:
        date = y * signal + rng.normal(size=len(y))
        edges = piece_edges([*strong, date], 16, y, [False] * 6 + [True])
        pieces = [len(e) - 1 for e in edges]
        assert pieces[-1] == want and sum(pieces) <= MAX_PIECES, pieces


def test_on_a_wide_file_the_columns_that_tell_the_target_apart_keep_their_pieces(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    telco = pd.read_csv(TELCO)
    noise = pd.DataFrame(rng.normal(size=(len(telco), 50)), columns=[f"noise_{i}" for i in range(50)])
    df = pd.concat([telco, noise], axis=1)
    y = (df["Churn"] == "Yes").to_numpy().astype(np.int64)
    real = {"tenure", "MonthlyCharges", "TotalCharges"}
    for bins, target in [(16, y), (16, None), (0, y)]:
        cfg = TrainConfig(data=tmp_path / "wide.csv", target="Churn", numeric_bins=bins)
        feats = fit_features(df, infer_schema(df, cfg), cfg, target)
        pre = Preprocess(task="binary", target="Churn", labels=["No", "Yes"], features=feats)
        width = Pieces(pre).width
        assert width == sum(max(len(f.bins) - 1, 0) for f in pre.numeric) <= MAX_PIECES
        cut = {f.name for f in pre.numeric if f.bins}
        if not bins:
            assert width == 0
        elif target is not None:  # 16 pieces for each of the real columns first, then noise columns
            assert real <= cut and width == MAX_PIECES and len(cut) == MAX_PIECES // 16
        else:  # no target to rank them by: two pieces for every column but the 0/1 one
            assert cut == {f.name for f in pre.numeric} - {"SeniorCitizen"} and width == 2 * len(cut)


@pytest.mark.parametrize("bins", [0, 16])
def test_bins_round_trip_through_preprocess_json(bins: int, tmp_path: Path) -> None:
    result = train(quick_config(TELCO, "Churn", tmp_path, numeric_bins=bins, refit=False), say=lambda _: None)
    assert result.bundle is not None
    doc = json.loads((result.bundle.path / bundle.PREPROCESS_FILE).read_text())
    assert any("bins" in f for f in doc["features"]) == bool(bins)
    assert Preprocess.from_json(doc).to_json() == doc
