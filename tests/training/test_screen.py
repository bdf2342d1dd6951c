"""The screen (`--screen`): a network that reads only the columns that tell the target apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from service import bundle
from service.runtime import CPU, create_session
from tests.conftest import GERMAN, TELCO, quick_config
from training.data import columns_of
from training.pipeline import prepare_data, train
from training.train import screened_columns

STRONG = ["status_of_existing_checking_account", "duration_in_month", "credit_history", "savings_account_and_bonds"]


def _widened(path: Path, tmp_path: Path, noise: int = 60) -> Path:
    """The file with `noise` seeded noise columns beside its own, half numeric, half categorical."""
    df = pd.read_csv(path)
    rng = np.random.default_rng(0)
    for j in range(noise):
        df[f"noise_{j}"] = rng.normal(size=len(df)).round(3) if j % 2 else rng.choice(list("abcde"), len(df))
    out = tmp_path / f"{path.stem}_wide.csv"
    df.to_csv(out, index=False)
    return out


def _kept(cfg) -> dict[str, bool]:  # type: ignore[no-untyped-def]
    prep = prepare_data(cfg, say=lambda _: None)
    kept = screened_columns(prep.pre, prep.tensors.rows(torch.from_numpy(prep.split.dev)))
    names = [f.name for f in prep.pre.numeric] + [f.name for f in prep.pre.categorical]
    return dict(zip(names, kept.tolist(), strict=True))


def test_the_screen_keeps_the_columns_that_tell_the_target_apart_and_leaves_out_noise(tmp_path: Path) -> None:
    kept = _kept(quick_config(_widened(GERMAN, tmp_path), "creditability", tmp_path))
    assert all(kept[c] for c in STRONG)
    noise = [c for c in kept if c.startswith("noise_")]
    assert len(noise) == 60 and sum(kept[c] for c in noise) <= 3  # at the 1 % level: ~0.6 expected
    # regression (the F test): what a telco customer pays depends on the internet service, not on noise
    kept = _kept(quick_config(_widened(TELCO, tmp_path), "MonthlyCharges", tmp_path))
    assert kept["InternetService"] and kept["StreamingTV"]
    assert sum(kept[c] for c in kept if c.startswith("noise_")) <= 3


def test_the_screen_keeps_a_0_1_column_that_tells_the_target_apart(tmp_path: Path) -> None:
    # SeniorCitizen is 0 or 1 (41 % of seniors churn, 24 % of the others): cut at its deciles it was one
    # group, and always left out
    assert _kept(quick_config(TELCO, "Churn", tmp_path))["SeniorCitizen"]


def test_a_screened_member_ignores_the_left_out_columns_in_the_published_graph(tmp_path: Path) -> None:
    cfg = quick_config(_widened(GERMAN, tmp_path), "creditability", tmp_path, name="wide", screen="on")
    result = train(cfg, say=lambda _: None)
    assert result.bundle is not None and result.model is not None
    pre = result.pre
    member = result.model.members[0]
    left_out = [i for i, keep in enumerate(member.cat_keep.tolist()) if not keep]
    assert len(left_out) >= 27  # of the 30 noise categoricals
    prep = prepare_data(cfg, say=lambda _: None)
    num, cat = prep.enc.num[:300].copy(), prep.enc.cat[:300].copy()
    session = create_session(result.bundle.path / bundle.MODEL_FILE, CPU)
    before = session.run(None, {"num": num, "cat": cat})[0]
    # every member left these out: other levels change nothing in the published graph
    ignored = [i for i in left_out if all(not m.cat_keep[i] for m in result.model.members)]
    assert ignored
    changed = cat.copy()
    changed[:, ignored] = (changed[:, ignored] % 5) + 1
    assert np.abs(session.run(None, {"num": num, "cat": changed})[0] - before).max() < 1e-6
    # a column every member reads does change the output
    status = [f.name for f in pre.categorical].index("status_of_existing_checking_account")
    changed = cat.copy()
    changed[:, status] = changed[:, status] % (pre.categorical[status].cardinality - 1) + 1  # another level
    assert np.abs(session.run(None, {"num": num, "cat": changed})[0] - before).max() > 1e-3
    # metrics.json and the card name the columns no published member reads
    left_out = result.metrics["screen"]["left_out"]
    assert sum(c.startswith("noise_") for c in left_out) >= 50 and not set(STRONG) & set(left_out)
    card = (result.bundle.path / "model_card.md").read_text()
    line = next(x for x in card.splitlines() if x.startswith("- **columns read**"))
    assert f"{len(result.metrics['screen']['read'])} of 80" in line and "`noise_1`" in line


def test_auto_adds_the_screened_network_as_a_candidate_only_among_many_useless_columns(tmp_path: Path) -> None:
    wide = train(
        quick_config(_widened(GERMAN, tmp_path), "creditability", tmp_path, refit=False, screen="auto"),
        publish=False,
        say=lambda _: None,
    )
    names = [row["candidate"] for row in wide.metrics["leaderboard"]]
    assert "network, screened columns" in names
    telco = train(quick_config(TELCO, "Churn", tmp_path, refit=False, screen="auto"), publish=False, say=lambda _: None)
    assert [row["candidate"] for row in telco.metrics["leaderboard"]] == ["network", "linear path alone"]


def test_a_target_no_column_tells_apart_has_a_screened_network_that_answers_the_base_rate(tmp_path: Path) -> None:
    """A coin-flip target: the screen keeps no column, and the console says so (not "a network on the
    0 of 6 columns"); a member screened to no column gives every record one probability, the base rate."""
    rng = np.random.default_rng(3)
    df = pd.DataFrame({f"x{j}": rng.normal(size=400).round(3) for j in range(3)})
    for j in range(3):
        df[f"c{j}"] = rng.choice(list("abcd"), 400)
    df["y"] = rng.choice(["yes", "no"], 400)
    path = tmp_path / "coin.csv"
    df.to_csv(path, index=False)
    lines: list[str] = []
    result = train(quick_config(path, "y", tmp_path, refit=False, screen="auto"), publish=False, say=lines.append)
    said = "none of the 6 columns tells the target apart on the development rows: a screened network as a candidate"
    assert said in lines and not any("0 of 6" in line for line in lines)
    assert "network, screened columns" in [row["candidate"] for row in result.metrics["leaderboard"]]
    # `--screen on`: each member screens its own training rows, and here none keeps a column
    alone = train(quick_config(path, "y", tmp_path, refit=False, screen="on"), publish=False, say=lambda _: None)
    assert alone.model is not None and alone.metrics["screen"]["read"] == []
    enc = alone.pre.encode_columns(columns_of(df.head(50)), 50)
    with torch.no_grad():
        probs = alone.model(torch.from_numpy(enc.num), torch.from_numpy(enc.cat)).numpy()
    assert np.ptp(probs, axis=0).max() < 1e-6
    assert abs(probs[0, alone.pre.labels.index("yes")] - np.mean(df["y"] == "yes")) < 0.05


def test_a_screened_member_starts_exactly_at_its_fitted_linear_model(tmp_path: Path) -> None:
    """The start was fitted with left-out levels at 0, a real always-1 column, which the member reads as 0:
    with an L1 fit (liblinear penalises the intercept) the base rate was on that column and lost."""
    from training.evaluate import fit_linear, linear_model, one_hot_design
    from training.model import to_output
    from training.train import _new_member

    df = pd.read_csv(GERMAN)
    df["creditability"] = df["creditability"].sample(frac=1, random_state=0).to_numpy()  # no column tells it
    df.to_csv(tmp_path / "shuffled.csv", index=False)
    cfg = quick_config(tmp_path / "shuffled.csv", "creditability", tmp_path, screen="on", linear_penalty="l1:0.03")
    prep = prepare_data(cfg, say=lambda _: None)
    train_rows = prep.tensors.rows(torch.from_numpy(prep.split.folds[0][0]))
    model, *_ = _new_member(prep.pre, cfg, train_rows, seed=0)
    assert not model.cat_keep.any()  # every categorical left out
    cards = [f.cardinality for f in prep.pre.categorical]
    x, cat = train_rows.x * model.deep_keep[: train_rows.x.shape[1]], train_rows.cat * model.cat_keep.long()
    design = one_hot_design(x.numpy(), cat.numpy(), cards)
    linear = linear_model("binary", "l1:0.03")
    fit_linear(linear, design, train_rows.y.numpy())
    with torch.no_grad():
        start = to_output(model.eval()(train_rows.x, train_rows.cat), "binary").numpy()
    assert np.abs(start - linear.predict_proba(design)).max() < 1e-5
