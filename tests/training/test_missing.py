"""A numeric column's blanks as a signal: a column missing often enough in the training rows gets a
missing indicator the network reads (inside the published graph, explained as its column)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from service import bundle
from service.features import Preprocess
from service.runtime import CPU, create_session
from tests.conftest import GERMAN, quick_config
from training.evaluate import design_matrix
from training.pipeline import fit_rows_of, prepare_data, train

AMOUNT, AGE = "credit_amount", "age_in_years"


def _german_with_blanks(path: Path) -> Path:
    """german, its credit amount blank for half the bad loans and a tenth of the good ones (a blank
    that tells), its age blank in two rows (too few to learn from)."""
    df = pd.read_csv(GERMAN)
    rng = np.random.default_rng(0)
    bad = (df["creditability"] == "bad").to_numpy()
    df[AMOUNT] = df[AMOUNT].astype("float64").mask(rng.random(len(df)) < np.where(bad, 0.5, 0.1))
    df[AGE] = df[AGE].astype("float64").mask(df.index.isin([3, 700]))
    df.to_csv(path, index=False)
    return path


def test_a_blank_that_tells_is_read_by_the_published_model(tmp_path: Path) -> None:
    cfg = quick_config(_german_with_blanks(tmp_path / "german_blanks.csv"), "creditability", tmp_path, epochs=30)
    result = train(cfg, say=lambda _: None)
    assert result.bundle is not None and result.model is not None
    pre = Preprocess.load(result.bundle.path / bundle.PREPROCESS_FILE)
    prep = prepare_data(cfg, say=lambda _: None)
    names = [f.name for f in pre.numeric]
    amount, age = names.index(AMOUNT), names.index(AGE)
    fit = prep.enc.num[fit_rows_of(prep.split, cfg)]
    # the share is that of the rows preprocessing was fitted on; two blanks earn no indicator
    assert pre.numeric[amount].missing_ == np.isnan(fit[:, amount]).mean() > 0.1
    assert pre.numeric[age].missing_ == 0.0 and 0 < np.isnan(fit[:, age]).sum() < cfg.min_category_count
    card = (result.bundle.path / bundle.CARD_FILE).read_text()
    line = next(x for x in card.splitlines() if x.startswith("- missing indicators"))
    assert f"{AMOUNT} ({pre.numeric[amount].missing_:.1%} blank)" in line and AGE not in line

    # one record scored with its amount blank and at the value a blank is imputed with: the
    # published graph tells them apart, and the blank raises the chance of a bad loan
    num, cat = prep.enc.num[:64].copy(), prep.enc.cat[:64]
    num[:, age] = np.where(np.isnan(num[:, age]), 35.0, num[:, age])
    blank, median = num.copy(), num.copy()
    blank[:, amount], median[:, amount] = np.nan, pre.numeric[amount].median_
    session = create_session(result.bundle.path / bundle.MODEL_FILE, CPU)
    bad = pre.labels.index("bad")
    p_blank = session.run(None, {"num": blank, "cat": cat})[0][:, bad]
    p_median = session.run(None, {"num": median, "cat": cat})[0][:, bad]
    assert (p_blank > p_median + 0.02).all()
    with torch.no_grad():  # the fused graph matches the trained model on blanks
        want = result.model(torch.from_numpy(blank), torch.from_numpy(cat)).numpy()[:, bad]
    assert np.abs(p_blank - want).max() < 1e-5

    # explained: the blank's effect is the amount's, and the effects still add up to the score
    explain = create_session(result.bundle.path / bundle.EXPLAIN_FILE, CPU)
    effects, score, baseline, _ = explain.run(None, {"num": blank, "cat": cat})
    assert np.abs(effects.sum(axis=1) - (score - baseline)).max() < 1e-4
    moved, _, _, _ = explain.run(None, {"num": median, "cat": cat})
    j = [f.name for f in pre.features].index(AMOUNT)
    assert (effects[:, j] > moved[:, j]).all()  # the blank pushes towards bad through its own column

    # logistic regression, the reference, reads the same indicator
    width = len(pre.numeric) + 1 + sum(f.cardinality for f in pre.categorical)
    assert design_matrix(pre, prep.enc).shape[1] == width
