"""Reason codes against `shap`: how far our DeepLIFT effects agree with Shapley values of the same
function (the score, with each feature switched between the record's value and the reference's).

    python bench/explain_quality.py                  # both data sets, default configuration, ~3 min
    python bench/explain_quality.py --only german --exact 0   # Kernel SHAP only, ~20 s

Per data set: train with the default configuration, write explain.onnx as a bundle does, explain the
first 200 test-split records with it (ONNX Runtime) and with Kernel SHAP, and print the top-4
agreement, the rank correlation of |effects| and the additivity gap. `--exact N` also runs shap's
exact explainer (every one of the 2^features coalitions) on N records, to show how close Kernel SHAP is.
The measurement is tests/training/test_explain_shap.py's, which asserts on it with fewer epochs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from checkout import ROOT

from tests.training.test_explain_shap import Explained, agreement, explained, shapley, switched

DATASETS = {
    "telco": (ROOT / "data/telco_churn.csv", "Churn"),
    "german": (ROOT / "data/german_credit.csv", "creditability"),
}


def exact(run: Explained, records: int, kernel: np.ndarray) -> dict[str, float]:
    """shap's exact explainer on the first records: its gap to Kernel SHAP and to ours."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        import shap

    n_features = run.explainer.group.shape[1]
    off, on = np.zeros((1, n_features)), np.ones((1, n_features))
    values = []
    for row in run.x[:records]:
        model = shap.explainers.Exact(switched(run.explainer, row), shap.maskers.Independent(off, max_samples=1))
        values.append(model(on, max_evals=2**n_features + 2, silent=True).values[0])
    truth = np.array(values)
    return {
        "exact_records": float(records),
        "kernel_vs_exact_max": float(np.abs(kernel[:records] - truth).max()),
        "ours_vs_exact_max": float(np.abs(run.effects.effects[:records] - truth).max()),
    }


def measure(name: str, epochs: int | None, records: int) -> dict[str, float]:
    data, target = DATASETS[name]
    overrides = {} if epochs is None else {"epochs": epochs}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        run = explained(data, target, Path(tmp), **overrides)
        trained = time.perf_counter() - started
        kernel = shapley(run.explainer, run.x)
        figures = {"train_s": trained, "kernel_s": time.perf_counter() - started - trained}
        figures |= agreement(run.reasons, run.effects, kernel)
        figures["additivity_max_gap_test_split"] = run.summary["additivity_max_abs_gap"]
        if records:
            figures |= exact(run, records, kernel)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(DATASETS))
    parser.add_argument("--epochs", type=int, help="fewer than the default's, for a quick look")
    parser.add_argument("--exact", type=int, default=10, help="records also given exact Shapley values")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small matrices: a second thread only waits on a busy machine
    for name in [args.only] if args.only else list(DATASETS):
        figures = measure(name, args.epochs, args.exact)
        print(f"{name}:", flush=True)
        for key, value in figures.items():
            print(f"  {key:32s} {value:.4g}")


if __name__ == "__main__":
    main()
