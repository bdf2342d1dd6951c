"""Per-feature effects of the fused ensemble, exported as `explain.onnx` beside `model.onnx`.

Method: DeepLIFT's rescale rule (Shrikumar et al. 2017) against one reference, the training
population's mean input (numerics at their training mean, each categorical at its level
frequencies). Through the layers, each activation's multiplier is Δoutput / Δinput between the
record and the reference, so the effects telescope: they sum exactly to the explained score minus
its value at the reference. Where the members' logits become the score: binary and regression, a
mean of logits (the log-odds, the value), so a member logit's multiplier is its weight in the mean;
multiclass (the log of averaged probabilities), the score's gradient integrated along the straight
path between the two sets of logits (4-point Gauss-Legendre), scaled to sum exactly. A categorical
feature's effect is the sum over its levels' columns: one effect per feature, never per level.
docs/explain.md has the reasoning and the comparison with `shap`.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from service.features import Encoded, Preprocess
from training.data import restated_roots
from training.export import ExportError
from training.fuse import FusedEnsemble

OPSET = 17
NODES = 4  # Gauss-Legendre points on [0, 1]: the score is smooth along the path
PATH = torch.float32  # the path integral's precision
TINY = 1e-6  # effects this small in all (a record at the reference) take no share of the residual
SMALL = 1e-5  # |Δz| below which an activation's multiplier is its slope (finite difference)
STEP = 1e-3
TINY_PRE = 1e-30  # a ReLU input at the reference of exactly 0, taken as this far below
OUTPUTS = ["effects", "score", "baseline", "target"]  # target: the class whose score is explained


class Explainer(nn.Module):
    """`num`, `cat` → effects [N, features] (in `pre.features` order), the score they explain [N]
    and the score at the reference [N]: effects.sum(1) == score - baseline."""

    def __init__(self, fused: FusedEnsemble, pre: Preprocess, level_freq: list[np.ndarray]) -> None:
        super().__init__()
        self.fused, self.task = fused, fused.task
        self.m, self.n_out = fused.n_members, fused.n_out
        self.deep_layers = fused.out_weight is not None
        w_in = torch.cat([fused.w_dense, fused.w_levels])
        self.register_buffer("w_in", w_in)
        feature_of = fused.spread.argmax(dim=0) if fused.spread.numel() else torch.zeros(0, dtype=torch.int64)
        level_of = fused.level_of.long()
        ref_levels = torch.tensor(
            [float(level_freq[j][lv]) for j, lv in zip(feature_of.tolist(), level_of.tolist(), strict=True)],
            dtype=torch.float32,
        )
        # the reference input: numerics at their means (centred: 0), their pieces there, the level shares
        with torch.no_grad():
            ref_pieces = fused.pieces(torch.zeros(1, fused.n_num))[0]
        self.register_buffer("reference", torch.cat([torch.zeros(fused.n_num), ref_pieces, ref_levels]))
        index = {f.name: i for i, f in enumerate(pre.features)}
        # a column that restates another (training/data.py restated_columns): its effect is that one's
        roots = restated_roots(pre.columns)
        numeric = [index[roots.get(f.name, f.name)] for f in pre.numeric]
        numeric += [numeric[j] for j in pre.indicated]  # a missing indicator's effect is its column's
        columns = numeric + [numeric[j] for j in fused.pieces.source]  # a piece's effect is its column's
        columns += [index[pre.categorical[j].name] for j in feature_of.tolist()]
        group = torch.zeros(len(columns), len(pre.features))
        group[torch.arange(len(columns)), torch.tensor(columns, dtype=torch.int64)] = 1.0
        self.register_buffer("group", group)
        self.n_blocks = len(fused.blocks) // self.m if self.deep_layers else 0
        for i in range(self.n_blocks):  # each hidden layer: one matrix per member, and its transpose
            for j in range(self.m):
                w = fused.blocks[i * self.m + j].detach()
                self.register_buffer(f"w_{i}_{j}", w.clone())
                self.register_buffer(f"wt_{i}_{j}", w.T.contiguous())
                self.register_buffer(f"b_{i}_{j}", fused.block_biases[i * self.m + j].detach().clone())
        if self.deep_layers:
            assert fused.out_weight is not None
            self.register_buffer("wt_out", fused.out_weight.detach().T.contiguous())
        self.register_buffer("wt_first", w_in[:, : fused.hidden].T.contiguous())
        self.register_buffer("wt_skip", w_in[:, fused.hidden :].T.contiguous())
        nodes, weights = np.polynomial.legendre.leggauss(NODES)
        self.register_buffer("nodes", torch.tensor((nodes + 1) / 2, dtype=PATH).reshape(-1, 1, 1))
        self.register_buffer("weights", torch.tensor(weights / 2, dtype=PATH).reshape(-1, 1, 1))
        with torch.no_grad():
            ref_logits, ref_pre = self._forward(self.reference.reshape(1, -1))
        self.register_buffer("ref_logits", ref_logits.to(PATH))
        for i, z in enumerate(ref_pre):
            self.register_buffer(f"ref_pre_{i}", z.detach().clone())
            self.register_buffer(f"ref_act_{i}", fused.act(z).detach().clone())

    def _input(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        """[centred numerics | their pieces | multi-hot levels]: the columns the first layer reads."""
        parts = []
        if self.fused.n_num:
            parts.append(self.fused._dense(num))
        if self.w_in.shape[0] > self.fused.n_dense:
            parts.append(self.fused._multi_hot(cat))
        return torch.cat(parts, dim=1)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The members' logits [N, members × n_out] and each layer's activation input [N, members × width]."""
        f = self.fused
        z = x @ self.w_in + f.bias
        first = z[:, : f.hidden]
        pre: list[torch.Tensor] = []
        if not self.deep_layers:
            logits = first
        else:
            # 2-D MatMuls only, one per member: ONNX Runtime's batched (3-D) MatMul gives a row
            # slightly different results at different positions in a batch; these do not
            h = first
            for i in range(self.n_blocks):
                pre.append(h)
                parts = f.act(h).split(h.shape[1] // self.m, dim=1)
                h = torch.cat(
                    [p @ getattr(self, f"w_{i}_{j}") + getattr(self, f"b_{i}_{j}") for j, p in enumerate(parts)], 1
                )
            pre.append(h)
            logits = f.act(h) @ f.out_weight
            if not f.linear_skip:
                logits = logits + f.out_bias
        if f.linear_skip:
            logits = logits + z[:, f.hidden :]
        return logits, pre

    def forward(
        self, num: torch.Tensor, cat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self._input(num, cat)
        logits, pre = self._forward(x)
        mult, score, baseline, target = self._combine(logits.to(PATH))
        m_x = self._back(mult.to(torch.float32), pre)
        effects = (m_x * (x - self.reference)) @ self.group
        score = score.to(torch.float32)
        # an input with no columns still enters the graph (a zero-width sum), as in model.onnx
        if not self.fused.n_num:
            score = score + num.sum(dim=1)
        if not self.fused.n_cat:
            score = score + cat.sum(dim=1).to(score.dtype)
        return effects, score, baseline.to(torch.float32), target

    def _back(self, mult: torch.Tensor, pre: list[torch.Tensor]) -> torch.Tensor:
        """The logits' multipliers carried back to the input columns (the rescale rule)."""
        f = self.fused
        g = mult
        if self.deep_layers:
            g = (mult @ self.wt_out) * self._rescale(pre[-1], self.n_blocks)
            for i in range(self.n_blocks - 1, -1, -1):
                parts = g.split(g.shape[1] // self.m, dim=1)
                g = torch.cat([p @ getattr(self, f"wt_{i}_{j}") for j, p in enumerate(parts)], 1)
                g = g * self._rescale(pre[i], i)
        m_x = g @ self.wt_first
        return m_x + mult @ self.wt_skip if f.linear_skip else m_x

    def _rescale(self, z: torch.Tensor, layer: int) -> torch.Tensor:
        """Δactivation / Δinput between record and reference; the slope where they (nearly) meet."""
        act, ref_pre, ref_act = self.fused.act, getattr(self, f"ref_pre_{layer}"), getattr(self, f"ref_act_{layer}")
        if isinstance(act, nn.ReLU):
            # the same ratio with no division by Δ: r / (r - min(z, 0)) where the reference r > 0,
            # relu(z) / (relu(z) - r) where r ≤ 0 (1 and 0 as z meets r: ReLU's slopes there)
            up = (ref_pre > 0).to(z.dtype)
            below = torch.clamp(ref_pre, max=-TINY_PRE)  # r ≤ 0 moved off 0: no 0 / 0 at z = r = 0
            relu = act(z)
            return (ref_act + (1 - up) * relu) / (relu - up * z + (up * ref_act - (1 - up) * below))
        d = z - ref_pre
        ratio = (act(z) - ref_act) / d  # inf or NaN where d is 0: not selected
        slope = (act(z + STEP) - act(z - STEP)) / (2 * STEP)
        return torch.where(d.abs() < SMALL, slope, ratio)

    def _combine(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The score's multipliers on each member logit [N, members × n_out], the score and its
        value at the reference (multiclass: float64; else float32)."""
        ref = self.ref_logits
        a = torch.ones((), dtype=PATH)
        if self.fused.calibrated:  # the score is of the calibrated logits a·z + b: ∂/∂z is a times ∂/∂(a·z + b)
            a, b = self.fused.platt[0].to(PATH), self.fused.platt[1:].to(PATH)
            repeat = logits.shape[1] // len(b)
            logits, ref = logits * a + b.repeat(repeat), ref * a + b.repeat(repeat)
        if self.task == "regression":
            scale = self.fused.target_std.to(PATH)
            mean = self.fused.target_mean.to(PATH)
            mult = torch.ones_like(logits) * scale / self.m
            score = logits.mean(dim=1) * scale + mean
            base = torch.zeros_like(score) + (ref.mean(dim=1) * scale + mean)
            return mult, score, base, torch.zeros_like(score).to(torch.int64)
        if self.task == "binary":
            # the log-odds is the members' calibrated mean logit: linear, so each member logit's
            # multiplier is exactly a / members, with no path to integrate
            score = logits.mean(dim=1)
            base = torch.zeros_like(score) + ref.mean(dim=1)
            return torch.ones_like(logits) * a / self.m, score, base, torch.ones_like(score).to(torch.int64)
        # multiclass: the score, its change and the rescaling below in float64: float32's rounding
        # (~1e-7 of the logits) in a change of 1e-5, rescaled, moved large cancelling effects by up to 0.04
        wide, wide_ref = logits.double(), ref.double()
        c = self.n_out
        z = logits.reshape(-1, self.m, c)
        zr = ref.reshape(1, self.m, c)
        probs = torch.softmax(z, dim=2).mean(dim=1)
        target = probs.argmax(dim=1)  # the predicted class
        k = torch.nn.functional.one_hot(target, c).to(PATH)
        path = zr + self.nodes.unsqueeze(3) * (z - zr)  # [nodes, N, members, classes]
        mult = (self.weights.unsqueeze(3) * _log_prob_slope(path, k)).sum(dim=0).reshape(-1, self.m * c)
        wz, wzr, wk = wide.reshape(-1, self.m, c), wide_ref.reshape(1, self.m, c), k.double()
        score, baseline = _log_prob(wz, wk), _log_prob(wzr.expand_as(wz), wk)
        # the few-point integral is close, not exact, where members disagree far from the reference:
        # its residual is shared out in proportion to each term's size, so that the effects sum to the
        # score's change exactly (completeness). Not a scaling by change / integral: where the score
        # barely moves but large terms cancel, that ratio of two small numbers amplified float32's
        # rounding (diamonds' cut: ORT's effects 0.016 from PyTorch's)
        step, wide_mult = wide - wide_ref, mult.double()
        terms = wide_mult * step
        residual = (score - baseline).unsqueeze(1) - terms.sum(dim=1, keepdim=True)
        # softmax saturated at every node (a value far beyond training): the integral is 0 and the
        # whole change is residual, shared by the slope at the reference's end of the path instead
        at_ref = _log_prob_slope(zr.unsqueeze(0), k).reshape(-1, self.m * c).double()
        vanished = terms.abs().sum(dim=1, keepdim=True) <= TINY
        slope = torch.where(vanished, at_ref, wide_mult)
        total = (slope * step).abs().sum(dim=1, keepdim=True)
        share = torch.where(total > TINY, residual / torch.where(total > TINY, total, 1.0), 0.0)
        mult = mult + (share * slope.abs() * torch.sign(step)).to(PATH)
        return mult * a, score, baseline, target


def _log_prob(z: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """log of the predicted class's probability (the members' softmax averaged), in log space."""
    own = (torch.log_softmax(z, dim=-1) * k.unsqueeze(1)).sum(dim=-1)  # [N, members]
    return torch.logsumexp(own, dim=1) - math.log(z.shape[1])


def _log_prob_slope(z: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """∂ log P_k / ∂ z[m, c] = w_m (δ_kc - p[m, c]), w_m each member's share of P_k."""
    p = torch.softmax(z, dim=3)  # [nodes, N, members, classes]
    kk = k.reshape(1, -1, 1, k.shape[1])
    own = (torch.log_softmax(z, dim=3) * kk).sum(dim=3, keepdim=True)  # log p[m, k]
    return torch.softmax(own, dim=2) * (kk - p)


def level_frequencies(pre: Preprocess, enc: Encoded, rows: np.ndarray) -> list[np.ndarray]:
    """Each categorical feature's share of training rows per code (0: missing or rare)."""
    freq = []
    for j, feat in enumerate(pre.categorical):
        counts = np.bincount(enc.cat[rows, j], minlength=feat.cardinality).astype(np.float64)
        freq.append(counts / max(counts.sum(), 1.0))
    return freq


def export_explainer(explainer: Explainer, pre: Preprocess, path: Path) -> None:
    """Trace with a batch of 2 and write explain.onnx (inputs `num`, `cat`, as model.onnx)."""
    num = torch.zeros(2, len(pre.numeric), dtype=torch.float32)
    cat = torch.zeros(2, len(pre.categorical), dtype=torch.int64)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns it is deprecated
        torch.onnx.export(
            explainer.eval(),
            (num, cat),
            buf,
            input_names=["num", "cat"],
            output_names=OUTPUTS,
            dynamic_axes={name: {0: "batch"} for name in ["num", "cat", *OUTPUTS]},
            opset_version=OPSET,
            dynamo=False,
        )
    model = onnx.load_from_string(buf.getvalue())
    model.doc_string = f"tabserve effects per feature ({pre.task}, target {pre.target!r})"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def reference_stats(pre: Preprocess, enc: Encoded, rows: np.ndarray, freq: list[np.ndarray]) -> dict[str, Any]:
    """What a reason's text places a value against: each numeric's training percentiles, each
    categorical's level shares (explain.json)."""
    features: dict[str, Any] = {}
    for j, feat in enumerate(pre.numeric):
        values = enc.num[rows, j].astype(np.float64)
        values = values[~np.isnan(values)]
        quantiles = np.quantile(values, np.linspace(0, 1, 101)).tolist() if len(values) else []
        features[feat.name] = {"kind": "numeric", "mean": feat.mean_, "percentiles": quantiles}
    for j, cfeat in enumerate(pre.categorical):
        shares = {level: float(freq[j][i + 1]) for i, level in enumerate(cfeat.vocab_)}
        features[cfeat.name] = {"kind": "categorical", "missing_or_rare": float(freq[j][0]), "levels": shares}
    return {
        "format_version": 1,
        "method": "DeepLIFT rescale rule; reference: the training population's mean input",
        "score": {
            "binary": "log-odds of the positive class",
            "multiclass": "log probability of the predicted class",
        }.get(pre.task, "the predicted value"),
        "features": features,
    }


CHECK_BLOCK = 8_192  # test rows explained at a time when the bundle is checked


def write_explainer(
    fused: FusedEnsemble, pre: Preprocess, enc: Encoded, fit_rows: np.ndarray, test_rows: np.ndarray, out: Path
) -> dict[str, Any]:
    """explain.onnx and explain.json into a bundle being written, checked on the test rows in ONNX
    Runtime (effects sum to the score's change; the same effects as PyTorch); returns the global
    view for metrics.json: mean |effect| per feature and how often each is a top-4 reason."""
    from service.bundle import EXPLAIN_FILE, EXPLAIN_STATS_FILE
    from service.explain import Explainer as Reasons
    from service.runtime import CPU, create_session

    freq = level_frequencies(pre, enc, fit_rows)
    explainer = Explainer(fused, pre, freq).eval()
    export_explainer(explainer, pre, out / EXPLAIN_FILE)
    stats = reference_stats(pre, enc, fit_rows, freq)
    (out / EXPLAIN_STATS_FILE).write_text(json.dumps(stats, indent=1) + "\n")
    reasons = Reasons(pre, create_session(out / EXPLAIN_FILE, CPU), stats)
    gap = drift = excess = 0.0
    top, total_abs = np.zeros(len(pre.features)), np.zeros(len(pre.features))
    for start in range(0, len(test_rows), CHECK_BLOCK):  # in blocks: 100 k test rows at once took ~1 GB
        rows = test_rows[start : start + CHECK_BLOCK]
        found = reasons.run(np.ascontiguousarray(enc.num[rows]), np.ascontiguousarray(enc.cat[rows]))
        with torch.no_grad():
            expected = explainer(torch.from_numpy(enc.num[rows]), torch.from_numpy(enc.cat[rows]))[0].numpy()
        miss = np.abs(found.effects.sum(axis=1) - (found.score - found.baseline))
        gap = max(gap, float(np.max(miss, initial=0.0)))
        excess = max(excess, float(np.max(reasons.excess(found), initial=0.0)))
        drift = max(drift, float(np.max(np.abs(found.effects - expected), initial=0.0)))
        order, keep = reasons.order(found, 4)
        top += np.bincount(order[keep], minlength=len(pre.features))
        total_abs += np.abs(found.effects).sum(axis=0)
    tol = reasons.tolerance
    if not (excess <= tol and drift <= 100 * tol):
        raise ExportError(f"explain.onnx: effects miss the score by {gap:.1e}, PyTorch by {drift:.1e} (> {tol:.0e})")
    top, mean_abs = top / max(len(test_rows), 1), total_abs / max(len(test_rows), 1)
    return {
        "method": stats["method"],
        "score": stats["score"],
        "additivity_max_abs_gap": gap,
        "mean_abs_effect": {f.name: float(v) for f, v in zip(pre.features, mean_abs, strict=True)},
        "top4_share": {f.name: float(v) for f, v in zip(pre.features, top, strict=True)},
    }
