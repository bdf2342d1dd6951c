"""One training run, top to bottom: CSV → schema → split → fit → evaluate → export → publish."""

from __future__ import annotations

import contextlib
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from monitoring.accuracy import EPS, calibration_outcomes, ece_floor
from service import bundle, release
from service.drift import reference_distribution, score_of
from service.features import NOTHING_KNOWN, Encoded, EncodingError, Preprocess
from training import data as D
from training import export, gate, report
from training.config import TrainConfig, parse_seconds
from training.evaluate import (
    KEY_METRIC,
    Baseline,
    GradientBoosting,
    calibration_slope,
    choose_threshold,
    log_odds,
    task_metrics,
)
from training.explain import write_explainer
from training.model import EnsembleModel, Normalize, TabularMLP, identity, scaled
from training.train import (
    EpochCallback,
    History,
    Tensors,
    choose_linear_penalty,
    fit_fold,
    refit_member,
    screened_columns,
)

Say = Callable[[str], None]


@dataclass
class TrainingData:
    """The data after schema inference and target encoding, with its split and preprocessing."""

    df: pd.DataFrame
    schema: D.Schema
    target: D.Target
    split: D.Split
    pre: Preprocess
    enc: Encoded
    sha256: str  # of the file, computed once (a 130 MB file takes ~0.3 s)
    # where the test rows came from when not from this run's seed: "champion v3", "given" (None: the seed)
    test_rows_from: str | None = None

    @cached_property
    def tensors(self) -> Tensors:
        """Every row as the network reads it (normalized numerics; regression: the scaled target),
        built once for all the candidates and the refit."""
        pre, y = self.pre, self.target.y
        x = Normalize(pre)(torch.from_numpy(self.enc.num))
        if pre.task == "regression":
            yt = torch.from_numpy(((y - pre.target_mean) / pre.target_std).astype(np.float32))
        else:
            yt = torch.from_numpy(y)
        return Tensors(x, torch.from_numpy(self.enc.cat), yt)


@dataclass
class TrainResult:
    """What a run produced: metrics for the model and the baseline, the published bundle, and the
    gate's comparison with the champion and the release decision taken on it."""

    pre: Preprocess
    metrics: dict[str, Any]
    histories: list[History] = field(default_factory=list)
    model: EnsembleModel | None = None  # what is (or would be) published
    bundle: bundle.BundleRef | None = None
    comparison: gate.Comparison | None = None
    decision: str = ""  # one line: why the new version is champion or challenger
    release: release.Release | None = None
    # the development rows' targets and the chosen candidate's out-of-fold outputs, before calibration
    # (what the calibration was fitted on; bench/calibration.py compares maps on them)
    out_of_fold: tuple[np.ndarray, np.ndarray] | None = None


def prepare_data(cfg: TrainConfig, test_rows: np.ndarray | None = None, say: Say = print) -> TrainingData:
    """Read, infer, split and fit preprocessing on the non-test rows (the training rows only)."""
    df, reading = D.read_data(cfg)
    sha256 = D.file_sha256(cfg.data)
    df, target = D.encode_target(df, cfg)
    # one class's cut-off, or which class is positive: no meaning here, and ignored it did not do as told
    told = [f for f, given in (("--threshold-rule", cfg.threshold_rule != "f1"), ("--positive", cfg.positive)) if given]
    if target.task != "binary" and told:
        raise D.DataError(f"{told[0]} is for a two-class target; {cfg.target!r} is read as {target.task}")
    if target.dropped_missing:
        written = f" (blank or written {', '.join(map(repr, target.missing_as))}; a class really so named: rename it)"
        say(f"dropped {target.dropped_missing} rows with a missing target{written if target.missing_as else ''}")
    if target.header_rows:  # stacked exports
        shown = ", ".join(map(str, target.header_rows[:5])) + (", …" if len(target.header_rows) > 5 else "")
        say(
            f"left out {len(target.header_rows)} row(s) repeating the header (row {shown}): exports stacked in one file"
        )
    schema = D.infer_schema(df, cfg, reading, target)
    for line in D.column_lines(schema):  # every column's type and why; how the file was read
        say(line)
    groups = D.group_keys(df, cfg)
    test_rows_from = None if test_rows is None else "given"
    if test_rows is None and (inherited := champion_test_rows(cfg, target, sha256, groups)) is not None:
        test_rows, champion = inherited
        test_rows_from = f"{cfg.name} v{champion}"
        say(
            f"split as the champion was (the same file): {test_rows_from}'s test rows, not seed {cfg.seed}'s; "
            "the gate compares both on rows neither trained on"
        )
    split = D.split_rows(target, cfg, test_rows, groups)
    fit_rows = fit_rows_of(split, cfg)
    pre = D.build_preprocess(df.iloc[fit_rows], target.y[fit_rows], schema, target, cfg)
    enc = _encoded(pre, df, target.file_rows)
    return TrainingData(df, schema, target, split, pre, enc, sha256, test_rows_from)


ENCODE_BLOCK = 65_536  # rows encoded at a time: a 500 k-row frame at once held ~600 MB of temporaries


def _encoded(pre: Preprocess, df: pd.DataFrame, file_rows: np.ndarray | None) -> Encoded:
    """Every row as model inputs, block by block; the first bad value stops the run, named by its row
    in the file, counted from 1 as `tabserve score` counts them (`file_rows`: rows kept, if not all)."""
    n = len(df)
    enc = Encoded(np.empty((n, len(pre.numeric)), np.float32), np.empty((n, len(pre.categorical)), np.int64))
    for start in range(0, n, ENCODE_BLOCK):
        block = df.iloc[start : start + ENCODE_BLOCK]
        part = pre.encode_columns(D.columns_of(block), len(block))
        # a row of blanks is refused when scored (its score is no one's); in training it is a row like others
        errors = [e for e in part.errors.values() if e.reason != NOTHING_KNOWN]
        if errors:
            error = min(errors, key=lambda e: e.row)
            row = start + error.row if file_rows is None else int(file_rows[start + error.row])
            raise D.DataError(EncodingError.at(f"row {row + 1}", error.field, error.reason))
        enc.num[start : start + len(block)], enc.cat[start : start + len(block)] = part.num, part.cat
        enc.warnings.update({start + row: found for row, found in part.warnings.items()})
    return enc


def champion_test_rows(
    cfg: TrainConfig, target: D.Target, sha256: str, groups: np.ndarray | None = None
) -> tuple[np.ndarray, int] | None:
    """The champion's own test rows, and its version, when it was trained on this very file, so that the
    gate compares the two on rows neither trained on (another seed would otherwise test the champion on
    rows it learned from); None otherwise."""
    root = bundle.models_dir(cfg.models_dir)
    if not bundle.versions(root, cfg.name):
        return None
    try:
        champion = release.current(root, cfg.name).champion
        champion_dir = root / cfg.name / str(champion)
        doc = bundle.BundleRef(cfg.name, champion, champion_dir).metrics
    except (release.ReleaseError, OSError, ValueError):
        return None  # the gate says why it cannot compare
    data, config = doc.get("data", {}), doc.get("config", {})
    # split by other groups (or by row before): its test rows would share groups with this run's training
    same = data.get("sha256") == sha256 and config.get("target") == cfg.target
    same = same and config.get("group_column") == cfg.group_column
    if not same or data.get("rows") != target.file_row_count or "seed" not in config:
        return None
    theirs = _saved_test_rows(champion_dir, len(target.y))
    if theirs is None:  # an older bundle: its split rebuilt from its seed (right unless it inherited rows)
        split_as = replace(cfg, seed=config["seed"], test_fraction=config.get("test_fraction", cfg.test_fraction))
        theirs = D.split_rows(target, split_as).test
    if np.array_equal(theirs, D.split_rows(target, cfg, groups=groups).test):
        return None  # this run splits as the champion did anyway
    return theirs, champion


def _saved_test_rows(champion_dir: Path, rows: int) -> np.ndarray | None:
    """The rows the champion was tested on, as it saved them: its seed alone does not tell them when
    it was itself split as an earlier champion was."""
    try:
        saved = np.load(champion_dir / bundle.EVALUATION_FILE)["rows"]
    except (OSError, ValueError, KeyError):
        return None
    return saved if saved.size and saved.max() < rows else None


def fit_rows_of(split: D.Split, cfg: TrainConfig) -> np.ndarray:
    """The rows preprocessing is fitted on (and explanations are referenced to): never the test rows."""
    return split.dev if cfg.ensemble > 1 else split.folds[0][0]


@dataclass
class Candidate:
    """One model the run could publish: its evaluation members (one per fold), their out-of-fold
    outputs, and the learning rate of each epoch a refit of each member replays."""

    name: str
    members: list[TabularMLP]
    oof: np.ndarray
    schedules: list[list[float]]
    cfg: TrainConfig | None = None  # its settings where they are not the run's (a search's find)
    histories: list[History] | None = None  # its members' curves where they are not the network's

    def scorer(self, pre: Preprocess) -> EnsembleModel:
        return EnsembleModel(pre, self.members).eval()


def deterministic() -> None:
    """torch.use_deterministic_algorithms(True) without its import of torch._inductor, which we never
    use: 1.5–2.5 s of every `tabserve train` on this machine. The public call where this torch lacks
    the flag's setter."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:
        torch.use_deterministic_algorithms(True)
    else:
        setter(True, warn_only=False)


def fit_ensemble(
    prep: TrainingData, cfg: TrainConfig, on_epoch: EpochCallback | None = None
) -> tuple[list[Candidate], list[History], np.ndarray]:
    """One member per fold; returns the candidates (the network; the linear path alone, where the
    members start from it), the curves and the out-of-fold rows."""
    deterministic()
    data = prep.tensors
    network, linear, histories = [], [], []
    for i, (tr, va) in enumerate(prep.split.folds):
        model, hist = fit_fold(prep.pre, cfg, data, i, (tr, va), on_epoch)
        network.append(model)
        histories.append(hist)
        if cfg.linear_skip and cfg.linear_init and hist.start is not None:
            start = TabularMLP(prep.pre, cfg)
            start.load_state_dict(hist.start)
            linear.append(start.eval())
    candidates = [Candidate("network", network, _oof(prep, network), [h.lrs[: h.best_epoch + 1] for h in histories])]
    if linear:
        candidates.append(Candidate(report.LINEAR_CANDIDATE, linear, _oof(prep, linear), [[] for _ in linear]))
    return candidates, histories, prep.split.val_rows


# `screen = "auto"`: a wide file whose screen leaves out this share of the columns or more (many useless
# ones) also trains a network on the rest; its members are screened on their own training rows
SCREEN_SHARE = 0.5


def screened_candidate(
    prep: TrainingData, cfg: TrainConfig, say: Say, on_epoch: EpochCallback | None = None
) -> list[Candidate]:
    """The network on the screened columns, as a candidate beside the others (none where `screen` is
    not auto or the screen keeps more than half the columns). Its members report their epochs to
    `on_epoch` as members ensemble, ensemble + 1, … (the live bars tell them from the network's)."""
    if cfg.screen != "auto":
        return []
    kept = screened_columns(prep.pre, prep.tensors.rows(torch.from_numpy(prep.split.dev)))
    if kept.all() or np.mean(~kept) < SCREEN_SHARE:
        return []
    if kept.any():
        say(f"training a network on the {kept.sum()} of {len(kept)} columns that tell the target apart, as a candidate")
    else:  # a noise target: a member that reads no column learns the base rate, a fair candidate
        say(
            f"none of the {len(kept)} columns tells the target apart on the development rows: a screened network as a candidate"
        )
    screened = replace(cfg, screen="on")
    shifted = None if on_epoch is None else lambda m, *figures: on_epoch(cfg.ensemble + m, *figures)
    found, histories, _ = fit_ensemble(prep, screened, shifted)
    network = found[0]
    return [
        Candidate("network, screened columns", network.members, network.oof, network.schedules, screened, histories)
    ]


def _oof(prep: TrainingData, members: list[TabularMLP]) -> np.ndarray:
    """Each member's outputs on its own fold's validation rows, in fold order."""
    folds = prep.split.folds
    return np.concatenate(
        [_scorer_output(EnsembleModel(prep.pre, [m]), prep.enc, va) for m, (_, va) in zip(members, folds, strict=True)]
    )


# a refit on every row is what small files need (each member learns from 53 % of them otherwise);
# on large ones it gains little and doubles the training time (500 k rows: minutes)
REFIT_ROWS = 100_000


def refits(prep: TrainingData, cfg: TrainConfig) -> bool:
    return cfg.refit and len(prep.target.y) <= REFIT_ROWS


AUTO_PENALTY_ROWS = 50_000  # beyond this many rows a penalty's strength barely matters: l2:1, no search


def resolve_linear_penalty(prep: TrainingData, cfg: TrainConfig) -> tuple[TrainConfig, dict[str, float]]:
    """`linear_penalty = "auto"` made concrete for every member (and a refit) alike: chosen on the
    first fold; the run's configuration and each penalty's loss (empty when nothing was chosen)."""
    if cfg.linear_penalty != "auto" or not (cfg.linear_skip and cfg.linear_init):
        return cfg, {}
    if len(prep.split.dev) > AUTO_PENALTY_ROWS:
        return replace(cfg, linear_penalty="l2:1"), {}
    data = prep.tensors
    tr, va = prep.split.folds[0]
    chosen, losses = choose_linear_penalty(prep.pre, data.rows(torch.from_numpy(tr)), data.rows(torch.from_numpy(va)))
    return replace(cfg, linear_penalty=chosen), losses


def tune_candidate(
    prep: TrainingData, cfg: TrainConfig, network: Candidate, deadline: float, say: Say
) -> tuple[Candidate | None, dict[str, Any]]:
    """`--tune`: the search's best finished trial as a candidate (training/tune.py), searched until
    `deadline` (a time.perf_counter() value)."""
    from training import tune

    pre, y, folds = prep.pre, prep.target.y, prep.split.folds
    loss = "rmse" if pre.task == "regression" else "log_loss"

    def loss_of(rows: np.ndarray, out: np.ndarray) -> float:
        return float(task_metrics(pre, y[rows], out)[loss])

    def member_output(member: TabularMLP, rows: np.ndarray) -> np.ndarray:
        return _scorer_output(EnsembleModel(pre, [member]), prep.enc, rows)

    ends = np.cumsum([len(va) for _, va in folds])
    rows = prep.split.val_rows
    running = [loss_of(rows[:end], network.oof[:end]) for end in ends]
    left = deadline - time.perf_counter()
    if left > 0:
        say(f"searching for {math.ceil(left)} s more (optuna TPE, pruning after each fold)")
    else:  # the time counts from the start of the run: the fits before the search can use it all
        spent = parse_seconds(cfg.tune) - left
        say(
            f"--tune {cfg.tune} was spent before the search could start (the fits before it took {spent:.0f} s): "
            "no trial ran; give it more time, such as 5m"
        )
    best, summary = tune.search(
        cfg,
        folds,
        prep.tensors,
        pre,
        loss_of,
        member_output,
        (running[-1], running),
        time.monotonic() + (deadline - time.perf_counter()),
        say,
    )
    if best is None:
        return None, summary
    name = f"network, searched (trial {best.number})"
    return Candidate(name, best.members, best.oof, best.schedules, best.cfg, best.histories), summary


def choose(pre: Preprocess, candidates: list[Candidate], y: np.ndarray) -> tuple[Candidate, list[dict[str, Any]]]:
    """The candidate with the best out-of-fold loss (log loss; regression: RMSE) — never the test
    rows — and the leaderboard."""
    loss = "rmse" if pre.task == "regression" else "log_loss"
    board = [{"candidate": c.name, **task_metrics(pre, y, c.oof)} for c in candidates]
    best = min(range(len(candidates)), key=lambda i: board[i][loss])
    for i, row in enumerate(board):
        row["chosen"] = i == best
    return candidates[best], board


def refit_ensemble(prep: TrainingData, cfg: TrainConfig, chosen: Candidate, platt: torch.Tensor) -> EnsembleModel:
    """Each member again on every row (test rows too), replaying the epochs and learning rates its
    evaluated counterpart took to its best (none: the linear path alone): what is published."""
    data = prep.tensors
    members = [
        refit_member(prep.pre, cfg, data, schedule, seed=cfg.seed * 1000 + 500 + i)
        for i, schedule in enumerate(chosen.schedules)
    ]
    refitted = EnsembleModel(prep.pre, members).eval()
    if prep.pre.task == "binary" and not torch.equal(platt, identity(1)):
        rows = prep.split.val_rows
        refitted.platt = matched_platt(platt, chosen.oof[:, 1], _scorer_output(refitted, prep.enc, rows)[:, 1])
    else:
        refitted.platt = platt.clone()  # the calibration the evaluation fit's out-of-fold outputs gave
    return refitted


MATCHED = "the refit's mean logit first matched to the out-of-fold logits' mean and spread on the same rows"


def matched_platt(platt: torch.Tensor, oof: np.ndarray, refit: np.ndarray) -> torch.Tensor:
    """The refit's Platt scaling: its mean logit moved and stretched to the out-of-fold logits' mean
    and spread on the same rows, then the evaluation fit's a·z + b, as one a·z + b. The refit takes
    more steps on more rows and one mean of several members: its logits spread otherwise than those
    the map was fitted on (attrition: over-confident, its mean p .18 for a rate of .16; BENCHMARKS.md)."""
    z_oof, z_refit = log_odds(oof), log_odds(refit)
    spread = float(z_refit.std())
    if spread < 1e-6:  # a refit that outputs one value (a noise target): nothing to stretch
        return platt.clone()
    scale = float(z_oof.std()) / spread
    a, b = platt.tolist()
    return torch.tensor([a * scale, a * (float(z_oof.mean()) - scale * float(z_refit.mean())) + b])


def fit_platt(y: np.ndarray, p: np.ndarray) -> torch.Tensor:
    """Platt scaling's (a, b) for positive-class probabilities: a logistic regression on their log-odds."""
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=1e4).fit(log_odds(p).reshape(-1, 1), y)  # next to no penalty: two parameters, many rows
    return torch.tensor([float(fit.coef_[0, 0]), float(fit.intercept_[0])])


def fit_calibration(task: str, y: np.ndarray, oof: np.ndarray) -> torch.Tensor:
    """(a, b…) for logits a·z + b (binary: the members' mean; multiclass: each member's), fitted on
    out-of-fold outputs, each from the one member that did not train on its row: Platt scaling
    (binary), a temperature and a bias per class (multiclass; log-probabilities are the logits up to
    a shift softmax ignores)."""
    if task == "binary":
        return fit_platt(y, oof[:, 1])
    z = torch.from_numpy(np.log(np.clip(oof, EPS, 1.0))).to(torch.float64)
    target = torch.from_numpy(np.asarray(y, dtype=np.int64))
    params = torch.zeros(1 + z.shape[1], dtype=torch.float64, requires_grad=True)  # log a, then b
    opt = torch.optim.LBFGS([params], max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = torch.nn.functional.cross_entropy(params[0].exp() * z + params[1:], target)
        value.backward()
        return value

    opt.step(loss)
    a, b = params.detach()[0].exp(), params.detach()[1:]
    return torch.cat([a.reshape(1), b - b.mean()]).to(torch.float32)  # a shift of every b changes nothing


def _recalibrated(task: str, out: np.ndarray, platt: torch.Tensor) -> np.ndarray:
    """One member's outputs (out-of-fold rows) as that member calibrated would give them."""
    p = torch.from_numpy(np.clip(out, EPS, 1 - EPS)).to(torch.float64)
    if task == "binary":
        q = torch.sigmoid(scaled(torch.log(p[:, 1:]) - torch.log1p(-p[:, 1:]), platt.to(torch.float64)))
        return torch.cat([1 - q, q], dim=1).numpy()
    return torch.softmax(scaled(torch.log(p), platt.to(torch.float64)), dim=1).numpy()


def _scorer_output(scorer: EnsembleModel, enc: Encoded, rows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = scorer.eval()(torch.from_numpy(enc.num[rows]), torch.from_numpy(enc.cat[rows]))
    return np.asarray(out.numpy())


def train(
    cfg: TrainConfig,
    *,
    test_rows: np.ndarray | None = None,
    publish: bool = True,
    on_epoch: EpochCallback | None = None,
    say: Say = print,
    on_ready: Callable[[Preprocess], None] | None = None,
) -> TrainResult:
    """The whole run; publishes the bundle only when the ONNX export matches PyTorch."""
    started = time.perf_counter()
    torch.set_num_threads(cfg.threads)  # more threads than the work needs spin against other tenants
    prep = prepare_data(cfg, test_rows, say)
    if on_ready is not None:  # report: the task is known (the live bars name their figure by it)
        on_ready(prep.pre)
    pre, y, split = prep.pre, prep.target.y, prep.split
    cfg, penalties = resolve_linear_penalty(prep, cfg)
    candidates, histories, val_rows = fit_ensemble(prep, cfg, on_epoch)
    candidates += screened_candidate(prep, cfg, say, on_epoch)
    tuning = None
    if parse_seconds(cfg.tune) > 0:
        found, tuning = tune_candidate(prep, cfg, candidates[0], deadline=started + parse_seconds(cfg.tune), say=say)
        candidates += [found] if found else []
    chosen, leaderboard = choose(pre, candidates, y[val_rows])
    cfg = chosen.cfg or cfg  # what the published members are built with (metrics.json's config)
    histories = chosen.histories or histories
    scorer, val_out = chosen.scorer(pre), chosen.oof
    test_out = raw_test = _scorer_output(scorer, prep.enc, split.test)  # the evaluation fit's: it never saw these rows
    if pre.task != "regression" and cfg.calibrate:
        scorer.platt = fit_calibration(pre.task, y[val_rows], val_out)
        val_out, test_out = _recalibrated(pre.task, val_out, scorer.platt), _scorer_output(scorer, prep.enc, split.test)
    if pre.task == "binary":
        pre.threshold = choose_threshold(y[val_rows], val_out[:, 1], cfg.threshold_rule)
    (base, base_out), (gbm, gbm_out) = _baseline(prep, cfg), _gbm(prep, cfg)  # report: their test outputs too
    metrics: dict[str, Any] = {
        "task": pre.task,
        "key_metric": KEY_METRIC[pre.task],
        "test": task_metrics(pre, y[split.test], test_out),
        "validation": task_metrics(pre, y[val_rows], val_out),
        "baseline": "linear regression" if pre.task == "regression" else "logistic regression",
        "baseline_test": base,
        "gbm": GradientBoosting.name,
        "gbm_test": gbm,
        # report: epochs counted from 1, as the console and the card count them (the epochs a refit replays)
        "members": [
            {"best_epoch": h.best_epoch + 1, "epochs": len(h.val_loss), **({"learnt": True} if h.learnt else {})}
            for h in histories
        ],
        "leaderboard": leaderboard,  # out-of-fold figures of each candidate; the chosen one is published
    }
    if prep.schema.warnings:  # e.g. a column that predicts the target almost perfectly (likely leakage)
        metrics["warnings"] = list(prep.schema.warnings)
    if tuning:
        metrics["tuning"] = tuning
    if penalties:  # the first fold's validation loss of each penalty the linear path could start from
        metrics["linear_penalty"] = {"chosen": cfg.linear_penalty, "fold_loss": penalties}
    if pre.task == "binary":  # what live monitoring compares the served population's outcomes with
        metrics["positive_rate"] = float(np.mean(y[split.dev] == 1))
    if scorer.calibrated:  # on the test rows: the same members, before and after calibration
        a, *b = scorer.platt.tolist()
        method = "Platt scaling" if pre.task == "binary" else "temperature and a bias per class"
        logits = "the members' mean logit" if pre.task == "binary" else "each member's logits"
        metrics["calibration"] = {
            "method": f"{method} of {logits} (a·z + b), fitted on the out-of-fold outputs",
            "a": a,
            "b": b[0] if pre.task == "binary" else b,
            "test_before": _calibration_figures(pre, y[split.test], raw_test),
            "test_after": _calibration_figures(pre, y[split.test], test_out),
        }
    metrics["test_caution"] = report.split_caution(pre, y[split.test])  # a test split too small to tell
    if not metrics["test_caution"]:  # enough test rows to tell: has the model learnt anything at all?
        metrics["signal_caution"] = report.no_signal(pre, y[split.dev], y[split.test], test_out)
    metrics["fits"] = _fits(prep, cfg, chosen)
    held = "out-of-fold rows" if cfg.ensemble > 1 else "validation rows"  # one member: no folds
    say(f"chosen on {held}: {chosen.name} (" + ", ".join(_board_text(r) for r in leaderboard) + ")")
    if refits(prep, cfg):
        say(f"refitting {len(histories)} member(s) on all {len(y):,} rows for the published model")
        scorer = refit_ensemble(prep, cfg, chosen, scorer.platt)
        if "calibration" in metrics and pre.task == "binary":  # the refit's own a·z + b (matched_platt)
            a, b = scorer.platt.tolist()
            metrics["calibration"]["published"] = {"a": a, "b": b, "why": MATCHED}
        # the published members trained on the test rows too: their values are not out of range
        prep.pre = pre = D.widen_ranges(pre, prep.enc.num)
    if cfg.screen == "on":  # model risk: which columns the published members read at all
        metrics["screen"] = _screen_summary(pre, scorer)
    result = TrainResult(pre, metrics, histories, scorer, out_of_fold=(y[val_rows], chosen.oof))
    if publish:
        doc = _describe(prep, cfg, metrics, started)
        fit = fit_rows_of(split, cfg)
        reference = reference_distribution(pre, prep.enc.num[fit], prep.enc.cat[fit], score_of(pre, val_out))
        root = bundle.models_dir(cfg.models_dir)
        evidence = report.Evidence(  # report: what the model card's figures are drawn from
            y[split.test],
            test_out,
            {metrics["baseline"]: base_out, metrics["gbm"]: gbm_out},
            prep.df.iloc[split.test],
            histories,
            y[split.dev],
        )
        write = _bundle_writer(prep, cfg, scorer, evidence, test_out, doc, reference)
        result.bundle = bundle.publish(root, cfg.name, write)
        result.comparison = doc.get("comparison")
        result.release, result.decision = _decide(root, cfg, result.bundle.version, result.comparison)
    metrics["train_seconds"] = time.perf_counter() - started
    return result


def _calibration_figures(pre: Preprocess, y: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """ECE, what a calibrated model's would be on these rows, Brier and log loss of outputs; binary:
    Cox's calibration slope and intercept too."""
    metrics = task_metrics(pre, y, out)
    figures = {"ece": metrics["ece"], "ece_floor": ece_floor(calibration_outcomes(pre.task, y, out)[1])}
    figures |= {k: metrics[k] for k in ("brier", "log_loss")}
    if pre.task == "binary":
        figures |= calibration_slope(y, out[:, 1])
    return figures


def _screen_summary(pre: Preprocess, scorer: EnsembleModel) -> dict[str, Any]:
    """The columns the published members read (any of them) and those every one left out."""
    names = [f.name for f in pre.numeric] + [f.name for f in pre.categorical]
    read = np.zeros(len(names), dtype=bool)
    for m in scorer.members:
        assert isinstance(m, TabularMLP)
        read |= np.concatenate([m.deep_keep[: len(pre.numeric)].numpy(), m.cat_keep.numpy()]) > 0
    return {
        "level": D.SCREEN_LEVEL,
        "read": [n for n, r in zip(names, read, strict=True) if r],
        "left_out": [n for n, r in zip(names, read, strict=True) if not r],
    }


def _board_text(row: dict[str, Any]) -> str:
    figures = [f"{k} {row[k]:.4f}" for k in ("log_loss", "roc_auc", "rmse") if k in row]
    return f"{row['candidate']}: " + " ".join(figures)


def _fits(prep: TrainingData, cfg: TrainConfig, chosen: Candidate) -> dict[str, str]:
    """Which model each figure comes from, in words (metrics.json, the model card)."""
    split, n = prep.split, len(chosen.members)
    linear = chosen.name == report.LINEAR_CANDIDATE  # fitted in one go: no epochs, no early stopping
    how = "fitted on" if linear else "trained on"
    evaluation = (
        f"{chosen.name}: {n} member(s), each {how} {len(split.folds[0][0]):,} of the {len(split.dev):,} "
        f"development rows{'' if linear else ' and early-stopped on the rest'}; test and validation figures are theirs "
        f"({len(split.test):,} test rows none of them saw)"
    )
    epochs = ", ".join(str(len(s)) for s in chosen.schedules)
    published = (
        f"the same {n} member(s) refitted on all {len(prep.target.y):,} rows"
        + ("" if linear else f" for the epochs each took to its best ({epochs})")
        if refits(prep, cfg)
        else "the evaluation fit itself (refit off)"
        if not cfg.refit
        else f"the evaluation fit itself (no refit above {REFIT_ROWS:,} rows: each member already learnt from "
        f"{len(split.folds[0][0]) / len(prep.target.y):.0%} of them)"
    )
    return {"evaluation": evaluation, "published": published, "refit": refits(prep, cfg)}


def _decide(
    root: Path, cfg: TrainConfig, version: int, comparison: gate.Comparison | None
) -> tuple[release.Release, str]:
    """Propose the published version, and promote it when the gate says so (docs/releases.md)."""
    if comparison is None:  # nothing to compare with: the new version is champion
        why = "first version" if version == 1 else "no other published version"
        return release.decide(root, cfg.name, "challenger", version, why=why), why
    before = release.read(root, cfg.name)
    proposed = f"trained on {Path(cfg.data).name} (seed {cfg.seed}); compared with v{comparison.champion}"
    state = release.decide(root, cfg.name, "challenger", version, why=f"{proposed}: {comparison.reason}")
    if comparison.promote:
        # two runs finishing together were both judged against the old champion: the later one's
        # promotion would replace the earlier without a comparison (`--promote always` means always)
        over = comparison.champion if cfg.promote != "always" else None
        try:
            state = release.decide(root, cfg.name, "promote", version, why=comparison.reason, over=over)
        except release.ReleaseError as exc:
            return state, f"{comparison.reason}; not promoted: {exc} (compare again, or promote it by hand)"
    if before is not None and before.canary and before.challenger != version:  # one challenger at a time
        share = f"{before.canary * 100:g} %"
        return state, f"{comparison.reason}; v{before.challenger}'s {share} canary ended, v{version} replaces it"
    return state, comparison.reason


def _compare(prep: TrainingData, cfg: TrainConfig, test_out: np.ndarray) -> gate.Comparison | None:
    """This run's evaluation fit against the champion on this run's test rows; None for a name's first version."""
    root = bundle.models_dir(cfg.models_dir)
    published = bundle.versions(root, cfg.name)
    if not published:
        return None
    champion = release.current(root, cfg.name).champion  # a broken release.json stops the run before publishing
    if champion not in published:
        why = f"champion v{champion} is not published (retired?)"
        return gate.refused(champion, why, cfg.promote, cfg.min_gain)
    test = prep.split.test
    rows, y = prep.df.iloc[test], prep.target.y[test]
    champion_dir = root / cfg.name / str(champion)
    return gate.compare(
        champion_dir,
        champion,
        prep.pre,
        test_out,
        rows,
        y,
        champion_out=champion_evaluation(champion_dir, prep.sha256, test),
        mode=cfg.promote,
        min_gain=cfg.min_gain,
        tolerance=cfg.gate_tolerance,
    )


def champion_evaluation(champion_dir: Path, sha256: str, test: np.ndarray) -> np.ndarray | None:
    """The champion's evaluation-fit outputs on these test rows when it was trained on this very file
    with this split (its published bundle was refitted on them, so scoring it would flatter it)."""
    try:
        same_file = bundle.BundleRef("", 0, champion_dir).metrics.get("data", {}).get("sha256") == sha256
        saved = np.load(champion_dir / bundle.EVALUATION_FILE)
        rows, out = saved["rows"], saved["out"]
    except (OSError, ValueError, KeyError):
        return None  # an older bundle (no refit): its own model.onnx never saw the rows
    return out if same_file and np.array_equal(rows, test) else None


def _baseline(prep: TrainingData, cfg: TrainConfig) -> tuple[dict[str, float], np.ndarray]:
    """Fit the linear baseline on the development rows and score the test rows: metrics, outputs."""
    pre, y, split = prep.pre, prep.target.y, prep.split
    dev_enc, test_enc = _rows(prep.enc, split.dev), _rows(prep.enc, split.test)
    model = Baseline(pre).fit(dev_enc, y[split.dev])
    base_pre = replace(pre)
    if pre.task == "binary":
        base_pre.threshold = _held_threshold(prep, cfg, lambda: Baseline(pre))
    out = model.predict(test_enc)
    return task_metrics(base_pre, y[split.test], out), out


def _held_threshold(prep: TrainingData, cfg: TrainConfig, make: Callable[[], Any]) -> float:
    """A baseline's decision threshold chosen, as the network's is, on rows it was not fitted on: the
    first fold's validation rows, from a fit on the rest (on its own rows, LightGBM's scores part the
    classes and the f1 cut fell in their gap: german's test F1 .474, .537 at a held cut)."""
    y, (train_rows, val_rows) = prep.target.y, prep.split.folds[0]
    with contextlib.suppress(ValueError):
        return float(cfg.threshold_rule)  # a number: no fit needed
    held = make().fit(_rows(prep.enc, train_rows), y[train_rows]).predict(_rows(prep.enc, val_rows))
    return choose_threshold(y[val_rows], held[:, 1], cfg.threshold_rule)


def _gbm(prep: TrainingData, cfg: TrainConfig) -> tuple[dict[str, float], np.ndarray]:
    """Gradient boosting with its defaults, fitted on the development rows, on the test rows (its
    decision threshold chosen as the linear baseline's is): metrics, outputs."""
    pre, y, split = prep.pre, prep.target.y, prep.split
    dev_enc, test_enc = _rows(prep.enc, split.dev), _rows(prep.enc, split.test)
    model = GradientBoosting(pre, cfg.threads).fit(dev_enc, y[split.dev])
    gbm_pre = replace(pre)
    if pre.task == "binary":
        gbm_pre.threshold = _held_threshold(prep, cfg, lambda: GradientBoosting(pre, cfg.threads))
    out = model.predict(test_enc)
    return task_metrics(gbm_pre, y[split.test], out), out


def _rows(enc: Encoded, rows: np.ndarray) -> Encoded:
    return Encoded(enc.num[rows], enc.cat[rows])


def _version_of(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:  # LightGBM is optional: its baseline is left out without it
        return None


def _describe(prep: TrainingData, cfg: TrainConfig, metrics: dict[str, Any], started: float) -> dict[str, Any]:
    import onnx
    import onnxruntime

    metrics["train_seconds"] = time.perf_counter() - started
    return {
        "preprocess": prep.pre.to_json(),
        "metrics": metrics,
        "config": asdict(cfg),
        "data": {
            "file": Path(cfg.data).name,
            "sha256": prep.sha256,
            "rows": prep.target.file_row_count,
            "dropped_missing_target": prep.target.dropped_missing,
            "train_rows": len(prep.split.dev),
            "test_rows": len(prep.split.test),
            # a validator re-running the seed gets other test rows where they were the champion's
            "test_rows_from": prep.test_rows_from or f"seed {cfg.seed}",
            "dropped_columns": prep.schema.dropped,
            # report: a real training row, the example record of /docs and GET /models/{name}
            "example": report.example_row(prep.pre, prep.df, prep.enc, fit_rows_of(prep.split, cfg)),
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
            # the baselines, the calibration fit and the threshold depend on these too
            "scikit-learn": _version_of("scikit-learn"),
            "lightgbm": _version_of("lightgbm"),
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _bundle_writer(
    prep: TrainingData,
    cfg: TrainConfig,
    scorer: EnsembleModel,
    evidence: report.Evidence,
    test_out: np.ndarray,
    doc: dict[str, Any],
    reference: dict[str, Any],
) -> Callable[[Path], None]:
    test = prep.split.test

    def write(out: Path) -> None:
        onnx_path = out / bundle.MODEL_FILE
        fused = export.export_onnx(scorer, prep.pre, onnx_path)
        tol = export.PARITY_TOL * (prep.pre.target_std if prep.pre.task == "regression" else 1.0)
        doc["metrics"]["onnx_parity_max_abs_diff"] = export.check_parity(
            scorer, onnx_path, prep.enc.num[test], prep.enc.cat[test], tol
        )
        prep.pre.save(out / bundle.PREPROCESS_FILE)
        np.savez(out / bundle.EVALUATION_FILE, rows=test, out=test_out)
        comparison = _compare(prep, cfg, test_out)
        if comparison is not None:
            doc["comparison"] = comparison
            doc["metrics"]["comparison"] = comparison.to_json()
        (out / bundle.DRIFT_FILE).write_text(json.dumps(reference) + "\n")
        fit_rows = fit_rows_of(prep.split, cfg)
        doc["metrics"]["explanations"] = write_explainer(fused, prep.pre, prep.enc, fit_rows, test, out)
        metrics_doc = {**doc["metrics"], **{k: doc[k] for k in ("config", "data", "versions", "created")}}
        (out / bundle.METRICS_FILE).write_text(json.dumps(metrics_doc, indent=2, default=str) + "\n")
        plots = report.write_plots(out, prep.pre, evidence, doc["metrics"]) if cfg.report_plots else []
        if cfg.report_plots and comparison is not None and comparison.outputs is not None and prep.pre.task == "binary":
            plots.append(report.comparison_plot(out, comparison.champion, *comparison.outputs))
        report.write_model_card(out, cfg.name, doc["created"], doc, plots, evidence)

    return write
