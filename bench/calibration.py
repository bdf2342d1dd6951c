"""Calibration maps compared: the shipped members' mean logit on the benchmark's held rows, mapped by
each candidate map fitted on the run's out-of-fold outputs (what training fits Platt scaling on),
on the binary sets of `bench/quality.py` over its seeded 80/20 splits.

    python bench/calibration.py                    # the seven binary sets, 5 seeds (~6 min)
    python bench/calibration.py --only german --seeds 20

Maps: Platt scaling (a·z + b, the evaluation fit's; training ships it after matching the refit's
logits to the out-of-fold ones, training/pipeline.py `matched_platt`), none, temperature (a·z),
isotonic regression (not expressible as a·z + b; for reference). Each row: mean ECE and log loss of the held rows; the
last row averages the sets. Logistic regression's ECE beside, and the floor: the ECE a perfectly
calibrated model with the shipped outputs would show on the same rows.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import checkout  # noqa: F401 - this checkout's code, not the editable install's
import numpy as np
import torch
from quality import dataset, outer_split
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from monitoring.accuracy import EPS, calibration_outcomes, ece, ece_floor
from training import data as D
from training.config import build_config
from training.evaluate import Baseline, log_odds, task_metrics
from training.pipeline import fit_platt, train

BINARY = ["telco", "german", "mlc_churn", "credit_data", "attrition", "lending_club", "hmda"]
MAPS = ("Platt", "beta", "none", "temperature", "isotonic")


def fitted_maps(p: np.ndarray, y: np.ndarray) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Each map fitted on out-of-fold positive-class probabilities `p` and targets `y`, as a function
    of logits; Platt scaling is training's own fit."""
    a, b = fit_platt(y, p).tolist()
    z = log_odds(p)
    temperature = LogisticRegression(C=1e4, fit_intercept=False).fit(z.reshape(-1, 1), y)
    beta = LogisticRegression(C=1e4).fit(_beta_features(z), y)
    iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-4, y_max=1 - 1e-4).fit(z, y)
    return {
        "Platt": lambda t: 1 / (1 + np.exp(-(a * t + b))),
        "beta": lambda t: beta.predict_proba(_beta_features(t))[:, 1],
        "none": lambda t: 1 / (1 + np.exp(-t)),
        "temperature": lambda t: temperature.predict_proba(t.reshape(-1, 1))[:, 1],
        "isotonic": iso.predict,
    }


def _beta_features(z: np.ndarray) -> np.ndarray:
    """Beta calibration's inputs (Kull et al. 2017): ln p and ln(1 − p) of the logit z, apart."""
    return np.stack([-np.logaddexp(0, -z), -np.logaddexp(0, z)], axis=1)


def run(name: str, seeds: int) -> dict[str, list[float]]:
    path, target = dataset(name)
    out: dict[str, list[float]] = {k: [] for k in ["lr", "floor", *(f"{m} {f}" for m in MAPS for f in ("ece", "loss"))]}
    for seed in range(seeds):
        given, held, held_target = outer_split(path, target, seed)
        cfg = build_config(data=str(given), target=target, seed=seed, report_plots=False)
        result = train(cfg, publish=False, say=lambda _: None)
        pre, model = result.pre, result.model
        assert model is not None and result.out_of_fold is not None and pre.task == "binary"
        labels = [str(label) for label in pre.labels]
        y = np.array([labels.index(str(label)) for label in held_target])
        enc = pre.encode_columns(D.columns_of(held), len(held))
        with torch.no_grad():  # the members' mean logit, before the shipped calibration
            x, cat = model.normalize(torch.from_numpy(enc.num)), torch.from_numpy(enc.cat)
            z = torch.stack([m(x, cat)[:, 0] for m in model.members]).mean(dim=0).numpy().astype(np.float64)
        oof_y, oof = result.out_of_fold
        maps = fitted_maps(oof[:, 1], oof_y)
        for m, f in maps.items():
            p = np.clip(f(z), EPS, 1 - EPS)
            out[f"{m} ece"].append(ece(y, p))
            out[f"{m} loss"].append(task_metrics(pre, y, np.stack([1 - p, p], axis=1))["log_loss"])
        given_df, given_target = D.encode_target(D.read_csv(given), cfg)
        base = Baseline(pre).fit(pre.encode_columns(D.columns_of(given_df), len(given_df)), given_target.y)
        out["lr"].append(ece(y, base.predict(enc)[:, 1]))
        with torch.no_grad():  # the shipped outputs
            shipped = model(torch.from_numpy(enc.num), torch.from_numpy(enc.cat)).numpy().astype(np.float64)
        out["floor"].append(ece_floor(calibration_outcomes(pre.task, y, shipped)[1]))
        print(f"  {name} seed {seed}: " + ", ".join(f"{m} {out[m + ' ece'][-1]:.4f}" for m in MAPS), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--only", action="append", choices=BINARY)
    args = parser.parse_args()
    rows = [(name, run(name, args.seeds)) for name in args.only or BINARY]
    head = " | ".join(f"{m} ECE / log loss" for m in MAPS)
    print(f"\n| data | {head} | LR ECE | floor |\n|---|{'---|' * len(MAPS)}---|---|")
    means = {k: [np.mean(r[k]) for _, r in rows] for k in rows[0][1]}
    for name, r in [*rows, ("mean", {k: [float(np.mean(v))] for k, v in means.items()})]:
        cells = " | ".join(f"{np.mean(r[m + ' ece']):.4f} / {np.mean(r[m + ' loss']):.4f}" for m in MAPS)
        print(f"| {name} | {cells} | {np.mean(r['lr']):.4f} | {np.mean(r['floor']):.4f} |")


if __name__ == "__main__":
    main()
