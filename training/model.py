"""The network: imputation + standardization in the graph, embeddings, deep MLP beside a linear path."""

from __future__ import annotations

import copy
import datetime as dt
import itertools

import numpy as np
import torch
from torch import nn

from service.features import Preprocess
from training.config import TrainConfig

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


UNIFORM_STD = 12**-0.5  # a quantile of the training rows is about uniform on [0, 1]: mean 1/2, std 1/√12


def n_inputs(pre: Preprocess) -> int:
    """The network's numeric inputs: each numeric column, then a missing indicator for each column
    that has one."""
    return len(pre.numeric) + len(pre.indicated)


class Normalize(nn.Module):
    """Raw `num` (NaN = missing) → median-imputed, standardized values, from preprocess stats, then
    the missing indicators (1 where missing, centred on the training share); a heavy-tailed column
    (knots in preprocess.json) becomes its training quantile first."""

    def __init__(self, pre: Preprocess) -> None:
        super().__init__()
        feats = pre.numeric
        robust = [bool(f.knots) for f in feats]
        flagged = pre.indicated
        self.register_buffer("median_", torch.tensor([f.median_ for f in feats], dtype=torch.float32))
        # an indicator is centred but not scaled: a rare blank would otherwise enter as a huge value
        mean = [0.5 if r else f.mean_ for f, r in zip(feats, robust, strict=True)] + [
            feats[j].missing_ for j in flagged
        ]
        std = [UNIFORM_STD if r else f.std_ for f, r in zip(feats, robust, strict=True)] + [1.0] * len(flagged)
        self.flagged = flagged
        pick = torch.zeros(len(feats), len(flagged))
        pick[flagged, range(len(flagged))] = 1.0  # a 0/1 MatMul picks the flagged columns: no Gather
        self.register_buffer("pick_", pick)
        self.register_buffer("mean_", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std_", torch.tensor(std, dtype=torch.float32))
        self.robust = any(robust)
        if self.robust:
            # piece i of a column runs from knot i to knot i+1 and adds up to 1/pieces; unused pieces
            # (a column with fewer distinct knots) and plain columns have weight 0
            pieces = max(len(f.knots) for f in feats) - 1
            lo, inv, weight = (
                torch.zeros(len(feats), pieces),
                torch.zeros(len(feats), pieces),
                torch.zeros(len(feats), pieces),
            )
            for j, f in enumerate(feats):
                k = torch.tensor(f.knots, dtype=torch.float64)
                n = len(k) - 1
                if n > 0:
                    lo[j, :n], inv[j, :n], weight[j, :n] = k[:-1], 1 / (k[1:] - k[:-1]), 1 / n
            self.register_buffer("lo_", lo)
            self.register_buffer("inv_width_", inv)
            self.register_buffer("piece_weight_", weight)
            self.register_buffer("robust_", torch.tensor(robust))

    def forward(self, num: torch.Tensor) -> torch.Tensor:
        return (self.extended(num) - self.mean_) / self.std_

    def extended(self, num: torch.Tensor) -> torch.Tensor:
        """Median-imputed (and transformed) numerics, then the missing indicators, not yet centred."""
        filled = self.transformed(torch.where(torch.isnan(num), self.median_, num))
        if not self.flagged:
            return filled
        return torch.cat([filled, torch.isnan(num).to(filled.dtype) @ self.pick_], dim=1)

    def transformed(self, filled: torch.Tensor) -> torch.Tensor:
        """Heavy-tailed columns as their training quantile (linear between knots), the rest as they are."""
        if not self.robust:
            return filled
        pieces = ((filled.unsqueeze(2) - self.lo_) * self.inv_width_).clamp(0.0, 1.0)
        return torch.where(self.robust_, (pieces * self.piece_weight_).sum(dim=2), filled)


EPOCH = dt.datetime(1970, 1, 1)  # a Thursday: weekday 3, Monday being 0
YEAR = 365.2425  # the Gregorian calendar's mean year, in days
# a calendar cycle: its period in days, the day of the cycle the epoch falls on, the hats' edges
# (the weekday: +0.5 so a whole day sits at its hat's middle, never where float32 rounding could tip it;
# the year: twelve equal parts, about a month each)
CYCLES: dict[str, tuple[float, float, tuple[float, ...]]] = {
    "weekday": (7.0, 3.5, tuple(float(d) for d in range(8))),
    "year": (YEAR, 0.0, tuple(YEAR * m / 12 for m in range(13))),
}
# each cycle is read as hats, one per part, 1 at its middle and 0 at its neighbours' around the circle:
# a date is its weekday one-hot, a time of day lies between two days, and nothing jumps where a cycle
# wraps (as pieces that filled up, Sunday noon's rows sat on a cliff float32 rounding decided, and the
# year's wrap fell on 2020-01-01 03:00 exactly: an hourly file's row there scored by rounding)


class Pieces(nn.Module):
    """Piecewise-linear encodings of the standardized numerics for the deep path (Gorishniy et al.
    2022, "PLE"): piece i of a column is 0 below edge i, 1 above edge i+1, linear between, so a
    first layer over the pieces can bend the column's effect at each training quantile. A date's
    weekday and time of year are hats (CYCLES), of its day number modulo the cycle's period."""

    def __init__(self, pre: Preprocess) -> None:
        super().__init__()
        norm = Normalize(pre)
        # column, scale, shift, period, lo, hi; a cycle's (period > 0) is a hat: lo its middle, hi its half-width
        rows: list[tuple[int, float, float, float, float, float]] = []
        for j, f in enumerate(pre.numeric):
            if f.bins:
                edges = _standardized(norm, j, np.asarray(f.bins, dtype=np.float64))
                rows += [(j, 1.0, 0.0, 0.0, lo, hi) for lo, hi in itertools.pairwise(edges) if hi > lo]
            if f.cycles and f.date is not None and not f.knots:
                # day number = reference - age = reference - (mean + std·x), taken modulo the period
                reference = (dt.datetime.fromisoformat(f.date.reference) - EPOCH).total_seconds() / 86400
                for name in f.cycles:
                    period, phase, edges = CYCLES[name]
                    shift = (reference - f.mean_ + phase) % period
                    # each hat's middle moved to the period's, where no wrap can reach it
                    rows += [
                        (j, -f.std_, (shift - (lo + hi) / 2 + period / 2) % period, period, period / 2, hi - lo)
                        for lo, hi in itertools.pairwise(edges)
                    ]
        self.width, self.source = len(rows), [r[0] for r in rows]
        mix = torch.zeros(n_inputs(pre), len(rows))  # no pieces of a missing indicator
        for p, (j, scale, *_) in enumerate(rows):
            mix[j, p] = scale  # a column's value into each of its pieces: a 0/scale MatMul, no Gather
        columns = list(zip(*rows, strict=True)) if rows else [()] * 6
        self.register_buffer("mix", mix)
        self.register_buffer("shift", torch.tensor(columns[2], dtype=torch.float32))
        period = torch.tensor(columns[3], dtype=torch.float64)
        self.cyclic = bool((period > 0).any())
        self.register_buffer("period", period.float())
        self.register_buffer("inv_period", torch.where(period > 0, 1 / period.clamp(min=1e-12), 0.0).float())
        lo, hi = torch.tensor(columns[4], dtype=torch.float64), torch.tensor(columns[5], dtype=torch.float64)
        hat = period > 0
        self.register_buffer("lo", lo.float())
        self.register_buffer("inv_width", torch.where(hat, 1 / hi.clamp(min=1e-12), 1 / (hi - lo)).float())
        self.register_buffer("hat", hat)
        self.folded = False  # (u - lo) · inv_width already inside mix and shift (`rescaled`)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x @ self.mix + self.shift
        if self.folded:
            return u.clamp(0.0, 1.0)
        if self.cyclic:  # a plain piece has period 0 and inv_period 0: u - floor(0)·0 is u
            u = u - torch.floor(u * self.inv_period) * self.period
        v = (u - self.lo) * self.inv_width
        if self.cyclic:
            v = torch.where(self.hat, 1.0 - v.abs(), v)
        return v.clamp(0.0, 1.0)

    def rescaled(self, std: torch.Tensor) -> Pieces:
        """The same pieces read from centred numerics (x · std): the fused graph skips the division."""
        moved = copy.deepcopy(self)
        moved.mix = self.mix / std.reshape(-1, 1)
        if not self.cyclic:
            # NOTE: (u - lo) · inv_width folded into the MatMul and its bias: the graph keeps one Gemm
            # and a Clip, not a Sub and a Mul over every piece of every row
            moved.mix = moved.mix * self.inv_width
            moved.shift = (self.shift - self.lo) * self.inv_width
            moved.folded = True
        return moved


def _standardized(norm: Normalize, j: int, raw: np.ndarray) -> list[float]:
    """Raw values of numeric column j as the network sees them (Normalize's transform)."""
    with torch.no_grad():
        column = torch.zeros((len(raw), norm.median_.numel()), dtype=torch.float32)  # no NaN: indicators 0
        column[:, j] = torch.from_numpy(raw.astype(np.float32))
        return [float(v) for v in norm(column)[:, j]]


def n_logits(task: str, n_classes: int) -> int:
    """One logit for binary (sigmoid) and regression, one per class for multiclass (softmax)."""
    return n_classes if task == "multiclass" else 1


def embedding_dim(cardinality: int, cap: int) -> int:
    """fastai's rule of thumb (1.6·n^0.56), capped: small vocabularies get small embeddings."""
    return max(1, min(cap, round(1.6 * cardinality**0.56)))


class TabularMLP(nn.Module):
    """Logits from normalized numerics and category indices: deep MLP + optional linear path."""

    def __init__(self, pre: Preprocess, cfg: TrainConfig) -> None:
        super().__init__()
        cards = [f.cardinality for f in pre.categorical]
        n_num, n_out = n_inputs(pre), n_logits(pre.task, len(pre.labels))
        self.embeddings = nn.ModuleList(nn.Embedding(c, embedding_dim(c, cfg.max_embedding_dim)) for c in cards)
        self.pieces = Pieces(pre)
        width = n_num + self.pieces.width + sum(e.embedding_dim for e in self.embeddings)
        self.deep = _mlp(width, cfg, n_out)
        # `screen`: 1 for each deep input (the first n_num: the numerics, read by the linear path too)
        # and each categorical column that the member reads, 0 for the columns its screen left out
        self.register_buffer("deep_keep", torch.ones(width))
        self.register_buffer("cat_keep", torch.ones(len(cards)))
        self.linear_skip = cfg.linear_skip
        if cfg.linear_skip:
            # NOTE: the wide path is logistic regression on one-hot categories (an n_out-wide
            # embedding is exactly a one-hot weight matrix) and the numerics.
            self.wide_num = nn.Linear(n_num, n_out, bias=False) if n_num else None
            self.wide_cat = nn.ModuleList(nn.Embedding(c, n_out) for c in cards)
            self.wide_bias = nn.Parameter(torch.zeros(n_out))
            for emb in self.wide_cat:
                nn.init.zeros_(emb.weight)

    def forward(self, x: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        parts = [x] + ([self.pieces(x)] if self.pieces.width else [])
        parts += [emb(cat[:, i]) for i, emb in enumerate(self.embeddings)]
        out: torch.Tensor = self.deep(torch.cat(parts, dim=1) * self.deep_keep)
        if self.linear_skip:
            out = out + self.wide_bias
            if self.wide_num is not None:
                out = out + self.wide_num(x * self.deep_keep[: x.shape[1]])
            for i, emb in enumerate(self.wide_cat):
                out = out + emb(cat[:, i]) * self.cat_keep[i]
        return out

    def screen(self, pre: Preprocess, keep: np.ndarray) -> None:
        """Only the columns `keep` (numeric, then categorical) feed the member, both paths: the inputs
        of the others (values, missing indicators, pieces, embeddings, levels) are multiplied by 0."""
        n_numeric = len(pre.numeric)
        numeric = [bool(keep[j]) for j in range(n_numeric)]
        mask = numeric + [numeric[j] for j in pre.indicated] + [numeric[j] for j in self.pieces.source]
        for i, emb in enumerate(self.embeddings):
            mask += [bool(keep[n_numeric + i])] * emb.embedding_dim
        self.deep_keep = torch.tensor(mask, dtype=torch.float32)
        self.cat_keep = torch.tensor(keep[n_numeric:], dtype=torch.float32)

    @torch.no_grad()
    def warm_start(self, coef: torch.Tensor, intercept: torch.Tensor) -> None:
        """Set the linear path to a fitted linear model and silence the deep path's output.

        Training then starts exactly at the linear model and the deep path only has to learn
        what it misses; early stopping keeps the linear solution if the network adds nothing.
        `coef` is [n_out, n_num + sum(cardinalities)] over the one-hot design.
        """
        n_num = self.wide_num.in_features if self.wide_num is not None else 0
        if self.wide_num is not None:
            self.wide_num.weight.copy_(coef[:, :n_num])
        start = n_num
        for emb in self.wide_cat:
            emb.weight.copy_(coef[:, start : start + emb.num_embeddings].T)
            start += emb.num_embeddings
        self.wide_bias.copy_(intercept)
        head = self.deep[-1]
        assert isinstance(head, nn.Linear)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)


def _mlp(width: int, cfg: TrainConfig, n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in cfg.hidden:
        layers.append(nn.Linear(width, size))
        if cfg.batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(_ACTIVATIONS[cfg.activation]())
        if cfg.dropout:
            layers.append(nn.Dropout(cfg.dropout))
        width = size
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class EnsembleModel(nn.Module):
    """The exported graph: raw `num`/`cat` → the members combined: binary, the sigmoid of their mean
    logit; multiclass, their softmax probabilities averaged; regression, their mean value."""

    def __init__(self, pre: Preprocess, members: list[TabularMLP]) -> None:
        super().__init__()
        self.normalize = Normalize(pre)
        self.members = nn.ModuleList(members)
        self.task = pre.task
        self.register_buffer("target_mean", torch.tensor(pre.target_mean, dtype=torch.float32))
        self.register_buffer("target_std", torch.tensor(pre.target_std, dtype=torch.float32))
        # calibration of the logits, a·z + b (b per class), fitted after training; identity: none
        self.register_buffer("platt", identity(0 if pre.task == "regression" else n_logits(pre.task, len(pre.labels))))

    def forward(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        x = self.normalize(num)
        logits = [m(x, cat) for m in self.members]
        if self.task == "binary":  # the members' log-odds averaged, then calibrated (BENCHMARKS.md: ECE)
            z = torch.stack(logits).mean(dim=0)
            return to_output(scaled(z, self.platt) if self.calibrated else z, self.task)
        if self.calibrated:
            logits = [scaled(z, self.platt) for z in logits]
        out = torch.stack([to_output(z, self.task) for z in logits]).mean(dim=0)
        if self.task == "regression":
            out = out * self.target_std + self.target_mean
        return out

    @property
    def calibrated(self) -> bool:
        return self.task != "regression" and bool(not torch.equal(self.platt, identity(len(self.platt) - 1)))


def identity(n_out: int) -> torch.Tensor:
    """No calibration: a = 1, b = 0 for each of `n_out` logits."""
    return torch.tensor([1.0] + [0.0] * n_out)


def scaled(logits: torch.Tensor, platt: torch.Tensor) -> torch.Tensor:
    """Calibrated logits a·z + b (Platt scaling of the members' mean logit for binary; temperature with
    a bias per class of each member's logits for multiclass). Logits, not a log of averaged
    probabilities: a multiply and an add, which ONNX Runtime computes the same for a row whatever
    the batch (a log of the average did not)."""
    return platt[0] * logits + platt[1:]


def to_output(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Logits → class probabilities (binary: [1 - p, p]) or standardized regression values."""
    if task == "binary":
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    if task == "multiclass":
        return torch.softmax(logits, dim=1)
    return logits
