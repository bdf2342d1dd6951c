"""The training loop: shuffled mini-batches, AdamW, LR on plateau, early stopping on validation."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from monitoring.accuracy import row_log_loss
from service.features import Preprocess
from training.config import TrainConfig
from training.data import screened
from training.evaluate import fit_linear, linear_model, monitor_metric, one_hot_design, penalties
from training.model import TabularMLP, to_output

# larger files take larger batches, so that an epoch stays ≤ this many steps: a 500 k-row file
# would otherwise spend minutes per epoch on 256-row steps (telco's 4.5 k training rows: 18 steps)
MAX_STEPS_PER_EPOCH = 256
# and a member stops after this many steps (telco never reaches it: 200 epochs are 3.6 k steps); a
# file of repeated rows (validation rows that copy training rows) would otherwise never stop early
MAX_STEPS = 8_000
# and sees at most this many rows in all (a 320 k-row member: 16 epochs, half its step cap; measured
# on 500 k rows: BENCHMARKS.md); never fewer than MIN_EPOCHS epochs
MAX_ROW_PASSES = 5_000_000
MIN_EPOCHS = 16
# a classifier whose validation loss is below this share of the class shares' loss has learnt the
# target (a leaked column, a rule): more epochs only push probabilities already at 0 or 1 further
LEARNT = 1e-3

EpochCallback = Callable[[int, int, float, float, float], None]  # member, epoch, train loss, val loss, metric


@dataclass
class Tensors:
    """One split as model inputs: normalized numerics, category indices, targets."""

    x: torch.Tensor
    cat: torch.Tensor
    y: torch.Tensor

    def rows(self, idx: torch.Tensor) -> Tensors:
        """A subset of rows."""
        return Tensors(self.x[idx], self.cat[idx], self.y[idx])

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class History:
    """Per-epoch curves of one member and where its best (restored) weights came from."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_metric: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)  # the learning rate of each epoch (a refit replays them)
    best_epoch: int = 0
    learnt: bool = False  # stopped as its validation loss fell below LEARNT of the class shares' loss
    start: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # the weights before training


def loss_function(pre: Preprocess, cfg: TrainConfig, y: torch.Tensor) -> nn.Module:
    """BCE-with-logits, cross-entropy or MSE by task; 'balanced' weights classes inversely."""
    if pre.task == "regression":
        return nn.MSELoss()
    counts = torch.bincount(y, minlength=len(pre.labels)).double().clamp(min=1)
    if pre.task == "binary":
        pos_weight = counts[0] / counts[1] if cfg.class_weight == "balanced" else torch.tensor(1.0)
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight.float())
    weight = (counts.sum() / (len(counts) * counts)).float() if cfg.class_weight == "balanced" else None
    return nn.CrossEntropyLoss(weight=weight)


def _loss(loss_fn: nn.Module, logits: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    if task == "binary":
        return loss_fn(logits[:, 0], y.float())  # type: ignore[no-any-return]
    if task == "regression":
        return loss_fn(logits[:, 0], y)  # type: ignore[no-any-return]
    return loss_fn(logits, y)  # type: ignore[no-any-return]


def fit_member(
    pre: Preprocess,
    cfg: TrainConfig,
    train: Tensors,
    val: Tensors,
    seed: int,
    on_epoch: Callable[[int, float, float, float], None] | None = None,
) -> tuple[TabularMLP, History]:
    """Train one network; stop when validation has not improved for `patience` epochs (`on_epoch`:
    epoch, train loss, val loss, metric)."""
    model, opt, gen, batch_size = _new_member(pre, cfg, train, seed)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(2, cfg.patience // 3))
    loss_fn = loss_function(pre, cfg, train.y)
    # NOTE: validation is judged on the unweighted loss: class weights are a training device only
    val_loss_fn = loss_function(pre, replace(cfg, class_weight="none"), train.y)
    hist, best_loss, best_state = History(), float("inf"), copy.deepcopy(model.state_dict())
    learnt = LEARNT * _prior_loss(pre, val_loss_fn, train.y, val.y)
    hist.start = best_state  # warm-started: the linear path alone, a candidate of its own
    steps_cap = max(1, MAX_STEPS // math.ceil(len(train) / batch_size))
    epochs = min(cfg.epochs, steps_cap, max(MIN_EPOCHS, MAX_ROW_PASSES // len(train)))
    for epoch in range(epochs):
        hist.lrs.append(float(opt.param_groups[0]["lr"]))
        train_loss = _train_epoch(model, opt, loss_fn, train, batch_size, gen, pre.task)
        val_loss, val_metric = evaluate_member(model, val, pre, val_loss_fn)
        sched.step(val_loss)
        hist.train_loss.append(train_loss)
        hist.val_loss.append(val_loss)
        hist.val_metric.append(val_metric)
        if on_epoch:
            on_epoch(epoch, train_loss, val_loss, val_metric)
        if val_loss < best_loss - 1e-6:
            best_loss, hist.best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - hist.best_epoch >= cfg.patience:
            break
        if best_loss < learnt:
            hist.learnt = True
            break
    model.load_state_dict(best_state)
    return model.eval(), hist


def _prior_loss(pre: Preprocess, loss_fn: nn.Module, y_train: torch.Tensor, y_val: torch.Tensor) -> float:
    """The validation loss of predicting the training rows' class shares for every row (0 for regression)."""
    if pre.task == "regression" or len(y_val) == 0:
        return 0.0
    shares = torch.bincount(y_train, minlength=len(pre.labels)).double().clamp(min=1) / len(y_train)
    logits = shares.log() if pre.task == "multiclass" else (shares[1:] / shares[0]).log()
    return float(_loss(loss_fn, logits.float().expand(len(y_val), -1), y_val, pre.task))


def fit_fold(
    pre: Preprocess,
    cfg: TrainConfig,
    data: Tensors,
    fold: int,
    rows: tuple[np.ndarray, np.ndarray],
    on_epoch: EpochCallback | None = None,
) -> tuple[TabularMLP, History]:
    """Member `fold` of a k-fold ensemble: trained on the fold's training rows, early-stopped on its
    validation rows, seeded by the run's seed and the fold."""
    tr, va = (torch.from_numpy(r) for r in rows)
    by_fold = None if on_epoch is None else lambda *figures: on_epoch(fold, *figures)
    return fit_member(pre, cfg, data.rows(tr), data.rows(va), seed=cfg.seed * 1000 + fold, on_epoch=by_fold)


def refit_member(pre: Preprocess, cfg: TrainConfig, rows: Tensors, lrs: list[float], seed: int) -> TabularMLP:
    """Train one network on `rows` for as many epochs as an evaluated member took to its best, with
    that member's learning rates: the configuration early stopping chose, on every row."""
    model, opt, gen, batch_size = _new_member(pre, cfg, rows, seed)
    loss_fn = loss_function(pre, cfg, rows.y)
    for lr in lrs:
        for group in opt.param_groups:
            group["lr"] = lr
        _train_epoch(model, opt, loss_fn, rows, batch_size, gen, pre.task)
    return model.eval()


def _new_member(
    pre: Preprocess, cfg: TrainConfig, train: Tensors, seed: int
) -> tuple[TabularMLP, torch.optim.Optimizer, torch.Generator, int]:
    """A member as training starts it (an evaluated one and its refit alike): seeded, warm-started
    on its training rows, its optimizer and its batch size (larger files take larger batches)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = TabularMLP(pre, cfg)
    start = train
    if cfg.screen == "on":
        model.screen(pre, screened_columns(pre, train))
        # the linear start reads what the member reads: a left-out column constant (0, level 0)
        start = Tensors(train.x * model.deep_keep[: train.x.shape[1]], train.cat * model.cat_keep.long(), train.y)
    if cfg.linear_skip and cfg.linear_init:
        _warm_start(model, pre, cfg, start)
    # fused: one kernel for every parameter (telco: the optimizer step was a third of training)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    return model, opt, gen, max(cfg.batch_size, math.ceil(len(train) / MAX_STEPS_PER_EPOCH))


def screened_columns(pre: Preprocess, rows: Tensors) -> np.ndarray:
    """Which columns (numeric, then categorical) tell the target apart on `rows` (training/data.py)."""
    x, n_numeric = rows.x.numpy(), len(pre.numeric)
    missing = np.zeros((len(rows), n_numeric), dtype=bool)
    for k, j in enumerate(pre.indicated):
        missing[:, j] = x[:, n_numeric + k] > 0  # a centred indicator: 1 - share where missing, -share elsewhere
    return screened(x[:, :n_numeric], missing, rows.cat.numpy(), rows.y.numpy(), pre.task)


def _warm_start(model: TabularMLP, pre: Preprocess, cfg: TrainConfig, train: Tensors) -> None:
    """Fit the linear reference on this member's training rows and start the network from it."""
    cards = [f.cardinality for f in pre.categorical]
    design = one_hot_design(train.x.numpy(), train.cat.numpy(), cards)
    linear = linear_model(pre.task, cfg.linear_penalty if cfg.linear_penalty != "auto" else "l2:1")
    fit_linear(linear, design, train.y.numpy())
    coef = np.atleast_2d(linear.coef_)
    # a screened member reads its left-out columns as 0, where the fit saw them constant (0, level 0): their
    # share moves to the bias (an L1 fit, penalising its intercept, put the base rate on a level-0 column)
    kept = np.concatenate([model.deep_keep[: train.x.shape[1]].numpy(), np.repeat(model.cat_keep.numpy(), cards)])
    gone = kept == 0
    intercept = np.atleast_1d(linear.intercept_) + coef[:, gone] @ design[0, gone]
    model.warm_start(torch.tensor(coef, dtype=torch.float32), torch.tensor(intercept, dtype=torch.float32))


def choose_linear_penalty(pre: Preprocess, train: Tensors, val: Tensors) -> tuple[str, dict[str, float]]:
    """`linear_penalty = "auto"`: each penalty of the grid fitted on one fold's training rows, judged by
    its validation loss (log loss; regression: mean squared error); the best and each one's loss."""
    cards = [f.cardinality for f in pre.categorical]
    x, xv = (one_hot_design(t.x.numpy(), t.cat.numpy(), cards) for t in (train, val))
    losses = {}
    for penalty in penalties(pre.task):
        model = linear_model(pre.task, penalty)
        fit_linear(model, x, train.y.numpy())
        if pre.task == "regression":
            losses[penalty] = float(np.mean((model.predict(xv) - val.y.numpy()) ** 2))
        else:
            proba = np.zeros((len(val), len(pre.labels)))
            proba[:, model.classes_] = model.predict_proba(xv)  # a class missing from the fold stays 0
            losses[penalty] = float(row_log_loss(pre.task, val.y.numpy(), proba).mean())
    return min(losses, key=losses.__getitem__), losses


def _train_epoch(
    model: TabularMLP,
    opt: torch.optim.Optimizer,
    loss_fn: nn.Module,
    data: Tensors,
    batch_size: int,
    gen: torch.Generator,
    task: str,
) -> float:
    model.train()
    order = torch.randperm(len(data), generator=gen)
    total, seen = 0.0, 0
    for start in range(0, len(data), batch_size):
        idx = order[start : start + batch_size]
        if len(idx) < 2:
            continue  # NOTE: BatchNorm cannot normalize a batch of one row
        batch = data.rows(idx)
        opt.zero_grad(set_to_none=True)
        loss = _loss(loss_fn, model(batch.x, batch.cat), batch.y, task)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


@torch.no_grad()
def evaluate_member(model: TabularMLP, data: Tensors, pre: Preprocess, loss_fn: nn.Module) -> tuple[float, float]:
    """Validation loss and the task's monitor metric."""
    model.eval()
    logits = model(data.x, data.cat)
    val_loss = float(_loss(loss_fn, logits, data.y, pre.task))
    out = to_output(logits, pre.task).numpy()
    return val_loss, monitor_metric(pre.task, data.y.numpy(), out)
