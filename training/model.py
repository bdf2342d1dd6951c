"""The network: imputation + standardization in the graph, embeddings, deep MLP beside a linear path."""

from __future__ import annotations

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


class Normalize(nn.Module):
    """Raw `num` (NaN = missing) → median-imputed, standardized values, from preprocess stats; a
    heavy-tailed column (knots in preprocess.json) becomes its training quantile first."""

    def __init__(self, pre: Preprocess) -> None:
        super().__init__()
        feats = pre.numeric
        robust = [bool(f.knots) for f in feats]
        self.register_buffer("median_", torch.tensor([f.median_ for f in feats], dtype=torch.float32))
        mean = [0.5 if r else f.mean_ for f, r in zip(feats, robust, strict=True)]
        std = [UNIFORM_STD if r else f.std_ for f, r in zip(feats, robust, strict=True)]
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
        return (self.transformed(torch.where(torch.isnan(num), self.median_, num)) - self.mean_) / self.std_

    def transformed(self, filled: torch.Tensor) -> torch.Tensor:
        """Heavy-tailed columns as their training quantile (linear between knots), the rest as they are."""
        if not self.robust:
            return filled
        pieces = ((filled.unsqueeze(2) - self.lo_) * self.inv_width_).clamp(0.0, 1.0)
        return torch.where(self.robust_, (pieces * self.piece_weight_).sum(dim=2), filled)


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
        n_num, n_out = len(pre.numeric), n_logits(pre.task, len(pre.labels))
        self.embeddings = nn.ModuleList(nn.Embedding(c, embedding_dim(c, cfg.max_embedding_dim)) for c in cards)
        width = n_num + sum(e.embedding_dim for e in self.embeddings)
        self.deep = _mlp(width, cfg, n_out)
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
        parts = [x] + [emb(cat[:, i]) for i, emb in enumerate(self.embeddings)]
        out: torch.Tensor = self.deep(torch.cat(parts, dim=1))
        if self.linear_skip:
            out = out + self.wide_bias
            if self.wide_num is not None:
                out = out + self.wide_num(x)
            for i, emb in enumerate(self.wide_cat):
                out = out + emb(cat[:, i])
        return out

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
    """The exported graph: raw `num`/`cat` → averaged member outputs (probabilities or values)."""

    def __init__(self, pre: Preprocess, members: list[TabularMLP]) -> None:
        super().__init__()
        self.normalize = Normalize(pre)
        self.members = nn.ModuleList(members)
        self.task = pre.task
        self.register_buffer("target_mean", torch.tensor(pre.target_mean, dtype=torch.float32))
        self.register_buffer("target_std", torch.tensor(pre.target_std, dtype=torch.float32))
        # calibration of each member's logits, a·z + b (b per class), fitted after training; identity: none
        self.register_buffer("platt", identity(0 if pre.task == "regression" else n_logits(pre.task, len(pre.labels))))

    def forward(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        x = self.normalize(num)
        logits = [m(x, cat) for m in self.members]
        if self.calibrated:
            logits = [scaled(z, self.platt) for z in logits]
        out = torch.stack([to_output(z, self.task) for z in logits]).mean(dim=0)
        if self.task == "regression":
            out = out * self.target_std + self.target_mean
        return out

    @property
    def calibrated(self) -> bool:
        return self.task != "regression" and bool(not torch.equal(self.platt, identity(len(self.platt) - 1)))


EPS = 1e-7  # probabilities clipped before their log-odds are taken (float32: 1 - 1e-7 is still < 1)


def identity(n_out: int) -> torch.Tensor:
    """No calibration: a = 1, b = 0 for each of `n_out` logits."""
    return torch.tensor([1.0] + [0.0] * n_out)


def scaled(logits: torch.Tensor, platt: torch.Tensor) -> torch.Tensor:
    """Calibrated member logits a·z + b (Platt scaling for binary; temperature with a bias per class
    for multiclass). On each member's logits, not on the average: a multiply and an add, which ONNX
    Runtime computes the same for a row whatever the batch (a log of the average did not)."""
    return platt[0] * logits + platt[1:]


def to_output(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Logits → class probabilities (binary: [1 - p, p]) or standardized regression values."""
    if task == "binary":
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    if task == "multiclass":
        return torch.softmax(logits, dim=1)
    return logits
