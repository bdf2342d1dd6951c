"""Fuse a trained ensemble into one compact graph for export: same outputs, ~50 ONNX nodes.

The trained EnsembleModel runs each member separately, with one Gather per categorical feature and a
BatchNorm per layer: hundreds of tiny ONNX nodes whose per-node overhead dominates inference.
Exported instead, exactly equivalent up to float rounding:
- BatchNorm (eval) is folded into the Linear before it;
- an embedding followed by the first Linear is linear, so each level's contribution to the first
  hidden layer is precomputed: one table row per (feature, level), for all members at once;
- the linear ("wide") path's per-level weights join that table as extra columns;
- each feature's multi-hot columns sum to one, so its level-0 (missing/unseen) column is implied
  by the others: that row of the table moves into the bias and out of the other rows;
- the centred numerics (their division by std folded into the weights) join the levels' multi-hot
  matrix, so each member's first layer is one MatMul over the same input;
- the members run side by side, one small matrix per member and layer (ONNX Runtime fuses each
  with its bias and activation), their output layers as one block-diagonal matrix.
The export parity check compares this graph against the unfused PyTorch EnsembleModel.
"""

from __future__ import annotations

import torch
from torch import nn

from training.model import EnsembleModel, Normalize, TabularMLP, scaled

# NOTE: up to this many (feature, level) rows the table is applied as a multi-hot MatMul (fast,
# small); beyond it (free-text-like vocabularies) as Gather + ReduceSum (memory ∝ features).
ONEHOT_MAX_LEVELS = 2048

Layer = tuple[torch.Tensor, torch.Tensor]


def fold_layers(seq: nn.Sequential) -> tuple[list[Layer], type[nn.Module] | None]:
    """Linear(+BatchNorm) pairs → (W [in, out], b [out]) with BatchNorm folded in; the activation."""
    layers: list[Layer] = []
    act: type[nn.Module] | None = None
    for module in seq:
        if isinstance(module, nn.Linear):
            layers.append((module.weight.detach().T.clone(), module.bias.detach().clone()))
        elif isinstance(module, nn.BatchNorm1d):
            w, b = layers[-1]
            scale = module.weight.detach() / torch.sqrt(module.running_var + module.eps)
            layers[-1] = (w * scale, (b - module.running_mean) * scale + module.bias.detach())
        elif not isinstance(module, nn.Dropout):
            act = type(module)
    return layers, act


def _first_layer(member: TabularMLP, w1: torch.Tensor, n_dense: int, cards: list[int]) -> torch.Tensor:
    """[n_dense + sum(cards), h1]: the rows of W1 for the numerics and their pieces, then each
    level's embedding pushed through W1 (0 for a column the member's screen left out)."""
    w1 = w1 * member.deep_keep.reshape(-1, 1)
    rows, src = [w1[:n_dense]], n_dense
    for emb in member.embeddings:
        d = emb.embedding_dim
        rows.append(emb.weight.detach() @ w1[src : src + d])
        src += d
    return torch.cat(rows)


def _wide_rows(member: TabularMLP, n_num: int, n_out: int) -> torch.Tensor:
    """[n_num + pieces + sum(cards), n_out]: the linear path's weights over the same rows (none
    over the pieces: the linear path reads the numerics alone)."""
    num = member.wide_num.weight.detach().T if member.wide_num is not None else torch.zeros(n_num, n_out)
    num = num * member.deep_keep[:n_num].reshape(-1, 1)  # 0 for a column the member's screen left out
    pieces = torch.zeros(member.pieces.width, n_out)
    cats = [emb.weight.detach() * keep for emb, keep in zip(member.wide_cat, member.cat_keep, strict=True)]
    return torch.cat([num, pieces, *cats])


class FusedEnsemble(nn.Module):
    """The ensemble as a few dense matrices; inputs and outputs exactly as EnsembleModel's."""

    def __init__(self, scorer: EnsembleModel) -> None:
        super().__init__()
        members: list[TabularMLP] = list(scorer.members)  # type: ignore[arg-type]
        self.normalize: Normalize = scorer.normalize
        self.task, self.n_members = scorer.task, len(members)
        self.register_buffer("target_mean", scorer.target_mean.clone())
        self.register_buffer("target_std", scorer.target_std.clone())
        self.register_buffer("platt", scorer.platt.clone())
        self.calibrated = scorer.calibrated
        cards = [e.num_embeddings for e in members[0].embeddings]
        self.n_num, self.n_cat = int(self.normalize.mean_.numel()), len(cards)
        self.pieces = members[0].pieces.rescaled(self.normalize.std_)  # read from the centred numerics
        self.n_dense = self.n_num + self.pieces.width  # the first layer's numeric columns
        folded = [fold_layers(m.deep) for m in members]
        act = folded[0][1]
        self.act = act() if act is not None else nn.Identity()
        layers = [[f[0][i] for f in folded] for i in range(len(folded[0][0]))]
        self.n_out = layers[-1][0][0].shape[1]
        self.width = layers[0][0][0].shape[1]  # of each member's first layer
        self.hidden = self.n_members * self.width
        self.linear_skip = members[0].linear_skip
        out_bias = torch.cat([b for _, b in layers[-1]]) if len(layers) > 1 else None
        self._build_input(members, layers[0], cards, out_bias)
        # NOTE: a hidden-to-hidden layer as one matrix per member, not one block-diagonal matrix:
        # with several members most of a block-diagonal matrix is zeros that ONNX Runtime
        # multiplies anyway. The small output layer stays block-diagonal (one node).
        self.blocks = nn.ParameterList(_frozen(w) for layer in layers[1:-1] for w, _ in layer)
        self.block_biases = nn.ParameterList(_frozen(b) for layer in layers[1:-1] for _, b in layer)
        self.out_weight = _frozen(torch.block_diag(*[w for w, _ in layers[-1]])) if len(layers) > 1 else None
        if out_bias is not None and not self.linear_skip:
            self.register_buffer("out_bias", out_bias)

    def _build_input(
        self, members: list[TabularMLP], first: list[Layer], cards: list[int], out_bias: torch.Tensor | None
    ) -> None:
        """One matrix over [numerics, levels] → [first hidden layer of every member | wide logits],
        and the per-member pieces of it the graph uses when it can."""
        cols = [_first_layer(m, w, self.n_dense, cards) for m, (w, _) in zip(members, first, strict=True)]
        bias = [b for _, b in first]
        if self.linear_skip:
            cols += [_wide_rows(m, self.n_num, self.n_out) for m in members]
            # NOTE: the output layers' bias joins the wide logits' (both are added to the logits)
            wide = [m.wide_bias.detach() for m in members]
            if out_bias is not None:
                wide = [b + ob for b, ob in zip(wide, out_bias.split(self.n_out), strict=True)]
            bias += wide
        table, bias_all = torch.cat(cols, dim=1), torch.cat(bias)
        levels = table[self.n_dense :]
        offsets = torch.tensor([sum(cards[:j]) for j in range(len(cards))], dtype=torch.int64)
        self.register_buffer("offsets", offsets)
        self.multi_hot = sum(cards) <= ONEHOT_MAX_LEVELS
        feature_of = torch.repeat_interleave(torch.arange(len(cards)), torch.tensor(cards, dtype=torch.int64))
        level_of = torch.cat([torch.arange(c) for c in cards]) if cards else torch.zeros(0, dtype=torch.int64)
        if self.multi_hot and sum(cards) > len(cards):
            # NOTE: a feature's multi-hot columns sum to one, so its level-0 column is implied: its
            # row goes into the bias and is taken off the feature's other rows: one column fewer
            # per feature in the widest MatMul.
            # An index outside the vocabulary (which only an outside ONNX consumer could send)
            # matches no column, so it now scores exactly as 0, missing or unseen.
            base = levels[offsets]
            bias_all = bias_all + base.sum(dim=0)
            keep = level_of != 0
            levels, feature_of, level_of = (levels - base[feature_of])[keep], feature_of[keep], level_of[keep]
        self.register_buffer("w_num", table[: self.n_num].contiguous())
        self.register_buffer("w_pieces", table[self.n_num : self.n_dense].contiguous())
        self.register_buffer("w_levels", levels.contiguous())
        self.register_buffer("bias", bias_all)
        # NOTE: spreading each feature's index over its levels' columns is a 0/1 MatMul, which ORT
        # runs far faster than a Gather along axis 1; indices are small integers, exact in float32.
        spread = torch.zeros(len(cards), len(level_of))
        spread[feature_of, torch.arange(len(level_of))] = 1.0
        self.register_buffer("spread", spread)
        self.register_buffer("level_of", level_of.float())
        self.register_buffer("average", torch.full((self.n_members, 1), 1.0 / self.n_members))
        self.one_input = bool(self.n_num and self.n_cat and self.multi_hot)
        # NOTE: with hidden layers, each member's first layer as a MatMul of its own (ORT fuses it
        # with its bias and activation) instead of one wide MatMul split afterwards: no wide
        # result is sliced, split, biased and activated in separate passes.
        self.per_member = self.one_input and out_bias is not None
        if self.one_input:
            w_input = torch.cat([self.w_dense, self.w_levels])
            if self.per_member:
                self.first = nn.ParameterList(_frozen(w) for w in w_input[:, : self.hidden].split(self.width, dim=1))
                self.first_bias = nn.ParameterList(_frozen(b) for b in bias_all[: self.hidden].split(self.width))
                self.register_buffer("w_skip", w_input[:, self.hidden :].contiguous())
                self.register_buffer("b_skip", bias_all[self.hidden :].contiguous())
            else:
                self.register_buffer("w_input", w_input.contiguous())

    @property
    def w_dense(self) -> torch.Tensor:
        """The first layer's rows for `_dense`'s columns (the division by std folded in)."""
        return torch.cat([self.w_num / self.normalize.std_.reshape(-1, 1), self.w_pieces])

    def forward(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        if self.per_member:
            x = torch.cat([self._dense(num), self._multi_hot(cat)], dim=1)
            hs = [x @ w + b for w, b in zip(self.first, self.first_bias, strict=True)]
            skip = x @ self.w_skip + self.b_skip if self.linear_skip else None
        else:
            z = self._first_layer(num, cat)
            first = z[:, : self.hidden]
            hs = [first] if self.out_weight is None else list(first.split(self.width, dim=1))
            skip = z[:, self.hidden :] if self.linear_skip else None
        # NOTE: with no hidden layers the first layer gives the logits
        h = hs[0] if self.out_weight is None else self._deep(hs)
        if skip is not None:
            h = h + skip
        return self._output(h)

    def _deep(self, hs: list[torch.Tensor]) -> torch.Tensor:
        """Each member's first-layer output through its hidden layers, then every member's output
        layer as one block-diagonal MatMul: [N, members × n_out] logits (the wide ones not added)."""
        m = self.n_members
        for i in range(len(self.blocks) // m):
            layer = zip(hs, self.blocks[i * m : (i + 1) * m], self.block_biases[i * m : (i + 1) * m], strict=True)
            hs = [self.act(h) @ w + b for h, w, b in layer]
        logits = torch.cat([self.act(h) for h in hs], dim=1) @ self.out_weight
        # NOTE: with the wide path, the output layers' bias is in the wide logits' already
        return logits if self.linear_skip else logits + self.out_bias

    def _first_layer(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        """[N, hidden + wide logits]: every member's first layer (before its activation) and the
        wide logits, as one matrix."""
        z = self.bias
        if self.one_input:
            # NOTE: centred numerics and the multi-hot levels side by side through one MatMul, the
            # division by std folded into the numeric rows, rather than a separate small MatMul,
            # its Add and a Div
            return z + torch.cat([self._dense(num), self._multi_hot(cat)], dim=1) @ self.w_input
        # NOTE: an input with no columns still enters the graph (as a zero-width sum), so every
        # bundle has both `num` and `cat` inputs, as the contract says.
        z = z + (self._dense(num) @ self.w_dense if self.n_num else num.sum(dim=1, keepdim=True))
        return z + (self._levels(cat) if self.n_cat else cat.sum(dim=1, keepdim=True).to(z.dtype))

    def _levels(self, cat: torch.Tensor) -> torch.Tensor:
        if self.multi_hot:
            return self._multi_hot(cat) @ self.w_levels
        return self.w_levels[cat + self.offsets].sum(dim=1)

    def _multi_hot(self, cat: torch.Tensor) -> torch.Tensor:
        """Column c is 1 where its feature's index equals its level."""
        return ((cat.to(torch.float32) @ self.spread) == self.level_of).to(torch.float32)

    def _dense(self, num: torch.Tensor) -> torch.Tensor:
        """The centred numerics, then their pieces (the first layer's numeric columns)."""
        centred = self._centred(num)
        return torch.cat([centred, self.pieces(centred)], dim=1) if self.pieces.width else centred

    def _centred(self, num: torch.Tensor) -> torch.Tensor:
        """Median-imputed numerics and missing indicators minus their means (`normalize` without the
        division)."""
        return self.normalize.extended(num) - self.normalize.mean_

    def _output(self, logits: torch.Tensor) -> torch.Tensor:
        """[N, members × n_out] logits → probabilities or values, as EnsembleModel's (means as MatMuls)."""
        if self.task == "binary":
            z = logits @ self.average
            p = torch.sigmoid(scaled(z, self.platt) if self.calibrated else z)
            return torch.cat([1 - p, p], dim=1)
        if self.task == "multiclass":
            z = logits.reshape(-1, self.n_members, self.n_out)
            return torch.softmax(scaled(z, self.platt) if self.calibrated else z, dim=2).mean(dim=1)
        return (logits @ self.average) * self.target_std + self.target_mean


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.contiguous(), requires_grad=False)
