"""Our reason codes against the `shap` package, on the same function and the same reference.

shap sees the model's score (binary: log-odds of the positive class) as a function of one switch
per feature: on, the feature takes the record's value; off, the reference's, in the columns the
fused graph's first layer reads (centred numerics; a categorical's multi-hot columns against its
training level frequencies). Both methods then split score(record) - score(reference) among the
features: ours with DeepLIFT in `explain.onnx`, shap's Kernel SHAP with Shapley values.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from service import bundle
from service.explain import Effects
from service.explain import Explainer as Reasons
from service.runtime import CPU, create_session
from tests.conftest import GERMAN, TELCO
from training.config import build_config
from training.explain import PATH, Explainer, level_frequencies, write_explainer
from training.fuse import FusedEnsemble
from training.pipeline import fit_ensemble, fit_rows_of, prepare_data

ROWS = 200  # test-split records compared per data set
TOP = 4  # reasons on an adverse-action notice
EPOCHS = 20  # the default configuration (3 members) with fewer epochs: a few seconds of training
# coalitions per record: every subset of one or two features (and their complements) and a weighted
# sample of the rest; how close that comes to exact Shapley values: bench/explain_quality.py
NSAMPLES = 2048


class Explained(NamedTuple):
    """A trained model's explainers and our effects on ROWS test records."""

    explainer: Explainer  # PyTorch, for its internals
    reasons: Reasons  # the served one, on explain.onnx
    effects: Effects  # ONNX Runtime's answer for the records
    x: np.ndarray  # the records' first-layer input [ROWS, columns]
    summary: dict[str, Any]  # what the bundle's metrics.json records (over the whole test split)


def explained(data: Path, target: str, out: Path, **overrides: Any) -> Explained:
    """Train with the default configuration (but `overrides`), write explain.onnx as a bundle does
    and run it on the first ROWS test records."""
    cfg = build_config(data=str(data), target=target, models_dir=str(out), report_plots=False, **overrides)
    prep = prepare_data(cfg, say=lambda _: None)
    scorer = fit_ensemble(prep, cfg)[0][0].scorer(prep.pre)  # the network candidate
    fused = FusedEnsemble(scorer.eval()).eval()
    fit_rows, test = fit_rows_of(prep.split, cfg), prep.split.test
    summary = write_explainer(fused, prep.pre, prep.enc, fit_rows, test, out)
    stats = json.loads((out / bundle.EXPLAIN_STATS_FILE).read_text())
    reasons = Reasons(prep.pre, create_session(out / bundle.EXPLAIN_FILE, CPU), stats)
    rows = test[:ROWS]
    num, cat = np.ascontiguousarray(prep.enc.num[rows]), np.ascontiguousarray(prep.enc.cat[rows])
    explainer = Explainer(fused, prep.pre, level_frequencies(prep.pre, prep.enc, fit_rows)).eval()
    with torch.no_grad():
        x = explainer._input(torch.from_numpy(num), torch.from_numpy(cat))
    return Explained(explainer, reasons, reasons.run(num, cat), x.numpy(), summary)


def switched(explainer: Explainer, x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """z [K, features] of 0/1 → the score with feature i at the record's value where z_i = 1 and at
    the reference's where z_i = 0."""
    ref, record = explainer.reference, torch.from_numpy(x)

    def score(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            on = torch.from_numpy(np.asarray(z, dtype=np.float32)) @ explainer.group.T
            logits, _ = explainer._forward(ref + on * (record - ref))
            return explainer._combine(logits.to(PATH))[1].double().numpy()

    return score


def shapley(explainer: Explainer, x: np.ndarray, nsamples: int = NSAMPLES) -> np.ndarray:
    """Kernel SHAP's values [N, features] for each record's switches against all-off (seeded)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # shap's colour maps, at import
        import shap

    n_features = explainer.group.shape[1]
    off, on = np.zeros((1, n_features)), np.ones((1, n_features))
    state = np.random.get_state()
    np.random.seed(0)  # Kernel SHAP samples coalitions with numpy's global generator
    try:
        return np.vstack(
            [
                shap.KernelExplainer(switched(explainer, row), off).shap_values(
                    on, nsamples=nsamples, l1_reg=False, silent=True
                )
                for row in x
            ]
        )
    finally:
        np.random.set_state(state)


def agreement(reasons: Reasons, ours: Effects, theirs: np.ndarray) -> dict[str, float]:
    """Top-4 overlap (as `Reasons.order` picks them) and Spearman rank correlation of |effects|."""
    mine, shaps = (
        reasons.order(ours, TOP)[0],
        reasons.order(Effects(theirs, ours.score, ours.baseline, ours.target), TOP)[0],
    )
    overlap = np.array([len(set(a) & set(b)) for a, b in zip(mine.tolist(), shaps.tolist(), strict=True)])
    ra, rb = rankdata(np.abs(ours.effects), axis=1), rankdata(np.abs(theirs), axis=1)
    ra, rb = ra - ra.mean(axis=1, keepdims=True), rb - rb.mean(axis=1, keepdims=True)
    rho = (ra * rb).sum(axis=1) / np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    return {
        "records": float(len(overlap)),
        "top4_mean_overlap": float(overlap.mean()),
        "top4_3_of_4": float(np.mean(overlap >= 3)),
        "top4_4_of_4": float(np.mean(overlap == 4)),
        "top1_same": float(np.mean(mine[:, 0] == shaps[:, 0])),
        "spearman_median": float(np.median(rho)),
        "spearman_min": float(rho.min()),
        "max_abs_diff": float(np.abs(ours.effects - theirs).max()),
        "mean_abs_effect": float(np.abs(ours.effects).mean()),
        "additivity_max_gap": float(np.abs(ours.effects.sum(axis=1) - (ours.score - ours.baseline)).max()),
    }


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread: these small matrices gain nothing from two, and on a busy machine
    two threads wait on each other (several times slower)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def telco_run(tmp_path_factory: pytest.TempPathFactory) -> Explained:
    """A telco model trained once for the tests here that read one (training is most of their time)."""
    with torch_threads(1):
        return explained(TELCO, "Churn", tmp_path_factory.mktemp("telco"), epochs=EPOCHS)


@pytest.fixture(scope="module")
def german_run(tmp_path_factory: pytest.TempPathFactory) -> Explained:
    with torch_threads(1):
        return explained(GERMAN, "creditability", tmp_path_factory.mktemp("german"), epochs=EPOCHS)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("trained", ["telco_run", "german_run"])
def test_reasons_agree_with_shap(request: pytest.FixtureRequest, trained: str) -> None:
    run: Explained = request.getfixturevalue(trained)
    ours, n_features = run.effects, run.explainer.group.shape[1]
    # the switched function is the one ours explains: all on is the record's score, all off the reference's
    on_off = np.repeat([[1.0], [0.0]], n_features, axis=1)
    ends = np.array([switched(run.explainer, row)(on_off) for row in run.x])
    np.testing.assert_allclose(ends, np.stack([ours.score, ours.baseline], axis=1), atol=1e-4)
    figures = agreement(run.reasons, ours, shapley(run.explainer, run.x))
    print(trained, {k: float(f"{v:.4g}") for k, v in figures.items()})
    assert figures["records"] == ROWS
    assert figures["additivity_max_gap"] <= 1e-4
    assert figures["top4_3_of_4"] >= 0.9, figures
    assert figures["top4_mean_overlap"] >= 3.5, figures
    assert figures["spearman_median"] >= 0.95, figures


@pytest.mark.usefixtures("one_thread")
def test_a_record_scored_at_the_reference_is_explained_alike_in_onnx_runtime(telco_run: Explained) -> None:
    """A record whose score lies about 1e-5 from the reference's, its features far from it: large
    effects that cancel. The rescaling to the score's change must not amplify rounding there."""
    run = telco_run
    cfg = build_config(data=str(TELCO), target="Churn", report_plots=False)
    prep = prepare_data(cfg, say=lambda _: None)
    col = [f.name for f in prep.pre.numeric].index("tenure")

    def change(num: np.ndarray, cat: np.ndarray) -> float:
        found = run.reasons.run(num, cat)
        return float(found.score[0] - found.baseline[0])

    for row in prep.split.test:
        num, cat = prep.enc.num[row : row + 1].copy(), prep.enc.cat[row : row + 1].copy()
        lo, hi = num.copy(), num.copy()
        lo[0, col], hi[0, col] = 0.0, 72.0  # tenure's range, in months
        if change(lo, cat) * change(hi, cat) < 0:
            break
    else:
        pytest.fail("no test record's score crosses the reference's as tenure runs over its range")
    target = 1e-5 * np.sign(change(hi, cat))  # a change of 1e-5: small, yet rescaled (above 1e-6)

    def gap(num: np.ndarray) -> float:
        return change(num, cat) - target

    for _ in range(60):  # bisection on tenure: the score's change is continuous in it
        mid = (lo + hi) / 2
        if abs(gap(mid)) < 5e-6:
            break
        lo, hi = (mid, hi) if gap(mid) * gap(lo) > 0 else (lo, mid)
    found = run.reasons.run(mid, cat)
    assert 5e-6 <= abs(found.score[0] - found.baseline[0]) <= 1.5e-5
    assert np.abs(found.effects).max() > 0.5  # the features do move the score; their effects cancel
    with torch.no_grad():
        expected = run.explainer(torch.from_numpy(mid), torch.from_numpy(cat))[0].numpy()
    np.testing.assert_allclose(found.effects, expected, atol=1e-3)


@pytest.fixture(scope="module")
def contract_run(tmp_path_factory: pytest.TempPathFactory) -> Explained:
    """A multiclass model (telco's Contract), briefly trained: its math, not its fit, is tested."""
    with torch_threads(1):
        return explained(TELCO, "Contract", tmp_path_factory.mktemp("contract"), epochs=2)


@pytest.mark.usefixtures("one_thread")
def test_multiclass_effects_add_up_where_softmax_saturates(contract_run: Explained) -> None:
    """A value far beyond training (tenure 10,000) saturates the softmax at every node of the path:
    the integral was 0, the whole change in the score was dropped and the effects summed to ~1e-18
    while the score moved by 3. The change is now shared by the slope at the reference's end."""
    explainer, reasons = contract_run.explainer, contract_run.reasons
    m, c = explainer.m, explainer.n_out
    a, b = explainer.fused.platt[0].double(), explainer.fused.platt[1:].double()
    ref = explainer.ref_logits.double().reshape(m, c) * a + b
    k = int(torch.softmax(ref, dim=1).mean(dim=0).argmin())  # the least likely class at the reference
    end = ref.clone()
    end[:, k] += 1000.0  # each member sure of it at every node
    mult, score, baseline, target = explainer._combine(((end - b) / a).reshape(1, -1).to(PATH))
    step = ((end - b) / a).reshape(-1) - explainer.ref_logits.double().reshape(-1)
    assert int(target[0]) == k and float(score[0] - baseline[0]) > 0.5
    assert float((mult[0].double() * step).sum()) == pytest.approx(float(score[0] - baseline[0]), abs=1e-6)
    pre = reasons.pre
    for j, feature in enumerate(pre.numeric):  # and in ONNX Runtime, on records far out on each numeric
        num = np.tile(np.array([f.mean_ for f in pre.numeric], np.float32), (3, 1))
        num[:, j] = [1e4, -1e4, 1e6]
        found = reasons.run(num, np.ones((3, len(pre.categorical)), np.int64))
        assert reasons.unexplained(found).size == 0, (
            feature.name,
            found.effects.sum(axis=1),
            found.score - found.baseline,
        )


def test_multiclass_effects_that_cancel_are_the_path_integrals(contract_run: Explained) -> None:
    """Each member's logits all moved by 40 (softmax does not see it) and the predicted class's by a
    hair: the score changes by about 1e-5, while each logit's share of that change is large and the
    shares cancel. Each share must be the integral of the score's slope along the path (computed
    here on 2,000 points), not those rescaled by a ratio of two near-zero numbers, which turns
    float32's rounding into large errors (diamonds' cut: ONNX Runtime's effects 0.016 from PyTorch's)."""
    explainer = contract_run.explainer
    m, c = explainer.m, explainer.n_out
    a, b = explainer.fused.platt[0].double(), explainer.fused.platt[1:].double()
    ref = explainer.ref_logits.double().reshape(m, c) * a + b  # calibrated, as the score reads them
    k = int(torch.softmax(ref, dim=1).mean(dim=0).argmax())
    end = ref + 40.0
    end[:, k] += 5e-5
    logits = ((end - b) / a).reshape(1, -1)
    mult, score, baseline, target = explainer._combine(logits.to(PATH))
    assert int(target[0]) == k and 2e-6 < float(score[0] - baseline[0]) < 1e-4
    step = (logits - explainer.ref_logits.double()).reshape(-1)
    terms = mult[0].double() * step
    assert float(terms.abs().max()) > 1  # large shares that cancel
    # the exact shares: ∂score/∂logit (members' softmax averaged, then log of class k) along the path
    t = torch.linspace(0, 1, 2001, dtype=torch.float64).reshape(-1, 1, 1)
    path = (ref + t * (end - ref)).requires_grad_(True)
    torch.logsumexp(torch.log_softmax(path, dim=2)[:, :, k], dim=1).sum().backward()
    assert path.grad is not None
    exact = torch.trapezoid(path.grad, dx=1 / 2000, dim=0).reshape(-1) * a * step  # ∂(a·z + b)/∂z = a
    np.testing.assert_allclose(terms.numpy(), exact.numpy(), atol=1e-4 * float(exact.abs().max()))
