"""`tabserve train --tune 60s`: a seeded search over the few settings that matter, within a time budget.

Each trial trains the k-fold ensemble with sampled settings and is judged as the candidates are, on
the out-of-fold loss of the development rows (never the test rows). optuna's TPE sampler proposes
settings from the trials so far; a trial whose running loss after a fold is worse than the median of
earlier trials at that fold is stopped there (median pruning), so weak settings cost a fold or two.
The default network enters the study as trial 0 from the fit already made, so every proposal and
every pruning decision is measured against it. The best finished trial becomes a candidate beside
the default network and the linear path; `choose` still decides what ships.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from training.config import TrainConfig
from training.train import History, Tensors, fit_fold

Say = Callable[[str], None]

# the search space: what moved the out-of-fold loss in measurement (BENCHMARKS.md, Model quality)
HIDDEN = ("32,16", "64,32", "128,64", "256,128", "128", "128,64,32")


# name → (low, high, log) for a float, or the choices of a categorical: the one statement of the space
SPACE: dict[str, tuple[Any, ...]] = {
    "hidden": HIDDEN,
    "dropout": (0.0, 0.5, False),
    "lr": (3e-4, 1e-2, True),
    "weight_decay": (1e-5, 0.3, True),
    "max_embedding_dim": (2, 4, 8, 16),
}
FLOATS = ("dropout", "lr", "weight_decay")


def sample(trial: Any) -> dict[str, Any]:
    """One proposal: layer sizes, dropout, learning rate, weight decay, embedding width."""
    params = {
        name: trial.suggest_float(name, *SPACE[name][:2], log=SPACE[name][2])
        if name in FLOATS
        else trial.suggest_categorical(name, SPACE[name])
        for name in SPACE
    }
    return {**params, "hidden": [int(h) for h in params["hidden"].split(",")]}


def as_params(cfg: TrainConfig) -> dict[str, Any]:
    """A configuration in the search space's terms (the default network as trial 0), clipped into it."""
    hidden = ",".join(str(h) for h in cfg.hidden)
    params = {name: min(max(getattr(cfg, name), SPACE[name][0]), SPACE[name][1]) for name in FLOATS}
    return {
        "hidden": hidden if hidden in HIDDEN else HIDDEN[0],
        **params,
        "max_embedding_dim": cfg.max_embedding_dim if cfg.max_embedding_dim in SPACE["max_embedding_dim"] else 4,
    }


class _OutOfTime(Exception):
    """The search's time is up in the middle of a trial."""


DEADLINE = "stopped_at_deadline"  # the user attribute of a trial the time limit cut off


@dataclass
class Trial:
    """A finished trial: its configuration, members (one per fold), out-of-fold outputs and the
    learning rates a refit replays."""

    number: int
    cfg: TrainConfig
    loss: float
    members: list[Any]
    oof: np.ndarray
    schedules: list[list[float]]
    histories: list[History]


def search(
    cfg: TrainConfig,
    folds: list[tuple[np.ndarray, np.ndarray]],
    data: Tensors,
    pre: Any,
    loss_of: Callable[[np.ndarray, np.ndarray], float],
    member_output: Callable[[Any, np.ndarray], np.ndarray],
    default: tuple[float, list[float]],
    deadline: float,
    say: Say = print,
) -> tuple[Trial | None, dict[str, Any]]:
    """Trials until `deadline` (time.monotonic()) or `cfg.tune_trials`; returns the best finished
    trial (None: no proposal finished) and a summary for metrics.json.

    `loss_of(rows, outputs)` is the candidates' criterion on those development rows; `member_output(
    member, rows)` a member's outputs; `default` the default network's out-of-fold loss and its running
    loss after each fold."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=4)
    study = optuna.create_study(direction="minimize", sampler=sampler, pruner=optuna.pruners.MedianPruner(3, 1))
    distributions = _distributions(optuna)
    loss, running = default
    study.add_trial(
        optuna.trial.create_trial(
            params=as_params(cfg),
            distributions=distributions,
            value=loss,
            intermediate_values=dict(enumerate(running)),
        )
    )
    finished: dict[int, Trial] = {}
    started = time.monotonic()

    def objective(trial: optuna.Trial) -> float:
        trial_cfg = replace(cfg, **sample(trial))
        members, outputs, schedules, rows, histories = [], [], [], [], []

        def on_epoch(*_: Any) -> None:
            if time.monotonic() > deadline:
                raise _OutOfTime

        try:
            for i, (tr, va) in enumerate(folds):
                member, hist = fit_fold(pre, trial_cfg, data, i, (tr, va), on_epoch)
                members.append(member)
                outputs.append(member_output(member, va))
                schedules.append(hist.lrs[: hist.best_epoch + 1])
                histories.append(hist)
                rows.append(va)
                trial.report(loss_of(np.concatenate(rows), np.concatenate(outputs)), i)
                if trial.should_prune():
                    say(f"  trial {trial.number}: {_describe(trial.params)} — pruned after fold {i + 1}")
                    raise optuna.TrialPruned
        except _OutOfTime:
            # optuna has no state for it: pruned in the study, told apart from a pruned trial by this mark
            trial.set_user_attr(DEADLINE, True)
            say(
                f"  trial {trial.number}: {_describe(trial.params)} — stopped at the deadline after {len(rows)} fold(s)"
            )
            raise optuna.TrialPruned from None
        oof = np.concatenate(outputs)
        value = loss_of(np.concatenate(rows), oof)
        finished[trial.number] = Trial(trial.number, trial_cfg, value, members, oof, schedules, histories)
        best = min(value, study.best_value)
        say(f"  trial {trial.number}: {_describe(trial.params)} — loss {value:.4f} (best {best:.4f})")
        return value

    remaining = deadline - time.monotonic()
    if remaining > 0:
        study.optimize(objective, n_trials=cfg.tune_trials or None, timeout=remaining)
    best = min(finished.values(), key=lambda t: t.loss) if finished else None
    states = [t.state.name.lower() for t in study.trials[1:]]
    stopped = sum(bool(t.user_attrs.get(DEADLINE)) for t in study.trials[1:])
    summary = {
        "seconds": round(time.monotonic() - started, 1),
        "trials": len(states),
        "finished": states.count("complete"),
        "pruned": states.count("pruned") - stopped,
        "stopped_at_deadline": stopped,
        "default_loss": loss,
        "best": None if best is None else {"trial": best.number, "loss": best.loss, **_params_of(best.cfg)},
        "sampler": f"optuna TPE (seed {cfg.seed}); from the 4th trial, pruned from fold 2 on when worse than the median",
    }
    return best, summary


def _distributions(optuna: Any) -> dict[str, Any]:
    d = optuna.distributions
    return {
        name: d.FloatDistribution(*SPACE[name][:2], log=SPACE[name][2])
        if name in FLOATS
        else d.CategoricalDistribution(SPACE[name])
        for name in SPACE
    }


def _params_of(cfg: TrainConfig) -> dict[str, Any]:
    return {
        "hidden": cfg.hidden,
        "dropout": cfg.dropout,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "max_embedding_dim": cfg.max_embedding_dim,
    }


def _describe(params: dict[str, Any]) -> str:
    return (
        f"hidden {params['hidden']}, dropout {params['dropout']:.2f}, lr {params['lr']:.1e}, "
        f"weight decay {params['weight_decay']:.1e}, embeddings ≤ {params['max_embedding_dim']}"
    )
