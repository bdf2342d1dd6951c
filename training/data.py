"""Inferring a training file's schema and target, splitting it, fitting preprocessing (reading it: training/reading.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from monitoring.log import OWN_COLUMNS
from service.features import (
    DATE_FORMATS,
    NUMERIC_MISSING,
    CategoricalFeature,
    DateParse,
    Feature,
    Label,
    NumericFeature,
    Preprocess,
    Reading,
    business_number,
    category_key,
    is_iso,
    missing_outcomes,
    near_miss,
    parse_date,
    parse_number,
    plain_number,
    shown_format,
)
from training.config import COLUMN_LISTS, TrainConfig, flag
from training.reading import UNNAMED

# reading lives in training/reading.py; these names stay here for `training.data` callers
from training.reading import DataError as DataError
from training.reading import read_csv as read_csv
from training.reading import read_data as read_data
from training.reading import sniff_sep as sniff_sep

POSITIVE_WORDS = ("yes", "y", "true", "t", "1", "bad", "churn", "default", "positive", "fraud")
MAX_CLASSES = 50
INTEGER_CLASSES = 10  # a numeric target of at most this many whole numbers (a rating, a small count) is classes
# rows a class needs: one or more for the test split, the rest for training and validation (a
# stratified split of fewer fails, and a class seen once can be neither learned nor evaluated)
MIN_CLASS_ROWS = 3
SHOWN_CLASSES = 5  # classes an error names before "and N more"
# `rownames`: R row names as a column, as R data packages export their CSVs
ID_WORDS = frozenset(
    {"id", "key", "number", "no", "nr", "index", "uuid", "guid", "code", "ref", "reference", "rownames"}
    | {"rowid", "rownum", "objectid"}  # as databases export them (SQLite, Oracle, GIS): one word, no case break
)
# numeric-looking codes (zip codes, branch codes): their digits name a place or a thing, not an amount
CODE_WORDS = frozenset({"zip", "zipcode", "postcode", "postal", "plz", "code"})
# so do an id's integers where they repeat (a household's purchases): 17 is no more than 16 (not `no`,
# `number`, `nr`, `index`: `week_nr`, `floor_no` can be ordinal)
REPEATED_ID_WORDS = ID_WORDS - {"no", "number", "nr", "index"}
# an id-named column with more distinct values than this share of its rows repeats per customer
ID_SHARE = 0.5
REPEATED_GROUPS = 20  # shared values a column needs before its repeats can tell records from chance
LEAK_SCORE = 0.99  # one feature alone this good (AUC, purity, |correlation|) is almost surely leakage
# a regression target this well restated, out of sample, by a sum of two or three numeric columns is
# their total (casual + registered = rentals): no business relation is that exact
PARTS_R2 = 0.999
PARTS_ROWS = 5000  # rows the parts check reads (a seeded sample): enough to tell an identity from a trend
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_DIGITS = re.compile(r"-?\d+")


@dataclass
class Schema:
    """What each column is: numeric or categorical feature, id, or dropped (with the reason); how
    the file was read; and every column's type with the reason (the table training prints)."""

    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    id_columns: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    read: Reading = field(default_factory=Reading)
    units: dict[str, str] = field(default_factory=dict)  # numeric column → currency/percent sign stripped
    dates: dict[str, str] = field(default_factory=dict)  # date column → its format
    merged: dict[str, dict[str, str]] = field(default_factory=dict)  # column → {spelling: level it joined}
    levels: dict[str, int] = field(default_factory=dict)  # categorical column → distinct levels (merged)
    told: dict[str, str] = field(default_factory=dict)  # column → the override that typed it
    codes: dict[str, str] = field(default_factory=dict)  # categorical column of digits → why not a number
    table: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def features(self) -> list[str]:
        """Feature columns, numeric first then categorical (the `num`/`cat` order)."""
        return self.numeric + self.categorical


@dataclass
class Target:
    """The encoded target: class indices (or float values) plus labels and task."""

    task: str
    y: np.ndarray
    labels: list[Label]
    positive: Label | None
    dropped_missing: int
    merged: dict[str, str] = field(default_factory=dict)  # label spellings that differ only in case → the one kept
    # each kept row's place among the file's rows (None: every row kept): errors name the file's row
    file_rows: np.ndarray | None = None
    header_rows: list[int] = field(default_factory=list)  # rows (from 1) that repeat the header: left out
    missing_as: list[str] = field(default_factory=list)  # how the dropped targets were written, blank aside (`NA`)

    @property
    def file_row_count(self) -> int:
        """The file's data rows: kept, without a target, and repeating the header."""
        return len(self.y) + self.dropped_missing + len(self.header_rows)

    @cached_property
    def ranks(self) -> np.ndarray:
        """The target's ranks (ties averaged), once for every column's rank correlation with it."""
        from scipy import stats  # scikit-learn's dependency

        ranked: np.ndarray = stats.rankdata(self.y)
        return ranked


def file_sha256(path: str | Path) -> str:
    """Hash of the training data file, recorded in metrics.json."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def numeric_values(column: pd.Series, decimal: str = ".") -> np.ndarray | None:
    """The column parsed as numbers (NaN for missing), or None if any value is not a number."""
    distinct, codes = _distinct(column)
    try:
        values: np.ndarray = np.array([parse_number(v, decimal) for v in distinct], dtype=np.float64)
    except ValueError:
        return None
    parsed: np.ndarray = values[codes]
    return parsed


def category_values(column: pd.Series) -> list[str | None]:
    """The column's category keys (stripped text, None for missing)."""
    distinct, codes = _distinct(column)
    keys: list[str | None] = np.array([category_key(v) for v in distinct], dtype=object)[codes].tolist()
    return keys


def group_keys(df: pd.DataFrame, cfg: TrainConfig) -> np.ndarray | None:
    """Each row's group under --group-column (a blank is a group of its own row), or None without it."""
    if cfg.group_column is None:
        return None
    if cfg.group_column not in df.columns:
        raise _missing_column("--group-column", cfg.group_column, df)
    keys = category_values(df[cfg.group_column])
    index: dict[str, int] = {}
    return np.array([index.setdefault(k, len(index)) if k is not None else -1 - i for i, k in enumerate(keys)])


def _distinct(column: pd.Series) -> tuple[Sequence[Any], np.ndarray]:
    """The column's distinct values and each row's index among them: a value is read once, not once
    per row (a 500 k-row file repeats a few levels; a minute of Python otherwise). Only for text:
    in a column of mixed types 1, 1.0 and True hash alike but read differently."""
    if pd.api.types.infer_dtype(column, skipna=True) in ("string", "empty"):
        codes, distinct = pd.factorize(column, use_na_sentinel=False)
        return list(distinct), codes
    return list(column), np.arange(len(column))


def infer_schema(
    df: pd.DataFrame, cfg: TrainConfig, read: Reading | None = None, target: Target | None = None
) -> Schema:
    """Classify every non-target column; raises DataError for unknown columns (named in `cfg`)."""
    for name in COLUMN_LISTS:
        if missing := [col for col in getattr(cfg, name) if col not in df.columns]:
            raise _missing_column(flag(name), missing[0], df)
    if clash := [c for c in cfg.id_columns if c in OWN_COLUMNS]:
        raise DataError(f"--id-column {clash[0]!r} is named as a column the prediction log writes itself: rename it")
    schema = Schema(id_columns=list(cfg.id_columns), read=read or df.attrs.get("read", Reading()))
    schema.warnings = list(df.attrs.get("warnings", []))  # how the file was read (a guessed encoding)
    for col in df.columns:
        if col == cfg.target:
            continue
        if col in cfg.id_columns:
            schema.dropped[col] = "identifier (--id-column); passed through scoring"
        elif col in cfg.drop:
            schema.dropped[col] = "dropped by request"
        elif col in OWN_COLUMNS:  # it would be a second column of its name in the log (a wrong drift figure)
            schema.dropped[col] = "named as a column the prediction log writes itself: rename it to use it"
        elif UNNAMED.fullmatch(col) and not df[col].str.strip().astype(bool).any():
            schema.dropped[col] = "no name in the header and no values (a delimiter ending each line, an empty column)"
        elif UNNAMED.fullmatch(col):
            schema.dropped[col] = "no name in the header (a written row index); name it to use it"
        else:
            _classify(col, df[col], schema, cfg, target.file_rows if target is not None else None)
        schema.table.append(_row(col, schema))
    for col, (first, r) in restated_columns(df, schema).items():
        row = next(row for row in schema.table if row["column"] == col)
        row["restates"] = first  # training/explain.py: its effect is reported under `first`
        row["why"] += f"; restates '{first}' (correlation {r:.7f}): the two get one effect, under '{first}'"
    if not schema.features:
        raise DataError("no usable feature columns left after schema inference")
    if target is not None:
        schema.table.insert(0, _target_row(cfg.target, target, cfg.task))
        leaks = leakage_warnings(df, schema, target, cfg)
        for columns, warning in leaks:
            for row in schema.table:
                if row["column"] in columns:
                    row["warning"] = warning
        schema.warnings += [warning for _, warning in leaks] + _stray_classes(cfg.target, target)
        schema.warnings += repeated_records(df, target, cfg, {c for columns, _ in leaks for c in columns})
    return schema


def repeated_records(df: pd.DataFrame, target: Target, cfg: TrainConfig, leaked: set[str]) -> list[str]:
    """A warning for a column whose repeated values tie rows of one outcome together (one incident's
    records, a customer's rows): split by row, a test row's twins are in training and the figures
    flatter the model. Such a column's shared values have one class far more often than chance gives.
    A leaked column (`leaked`: the target follows its value) shows the same, and is said as a leak."""
    if target.task == "regression" or cfg.group_column is not None:
        return []
    shares = np.bincount(target.y, minlength=len(target.labels)) / len(target.y)
    found = []
    for col in df.columns:
        if col == cfg.target or col in leaked:
            continue
        keys = df[col].astype(str).str.strip()
        codes, uniques = pd.factorize(keys.where(keys != "", None))
        shared = np.flatnonzero(np.bincount(codes[codes >= 0]) >= 2)
        if len(shared) < REPEATED_GROUPS or len(uniques) < len(df) / 10:  # a few levels repeat by nature
            continue
        rows = np.isin(codes, shared)
        table = pd.crosstab(codes[rows], target.y[rows])
        sizes = table.sum(axis=1).to_numpy()
        pure = (table.to_numpy().max(axis=1) == sizes).mean()
        chance = (shares[None, :] ** sizes[:, None]).sum(axis=1)  # a group of m rows all one class by chance
        # far purer than chance, with enough mixed groups expected for that to mean something
        if (1 - chance).sum() >= 5 and 1 - pure <= 0.1 * (1 - chance).mean():
            found.append((1 - pure, col, len(shared), int(rows.sum())))
    return [
        f"rows sharing a value of '{col}' have one {cfg.target} ({groups:,} values shared by {rows:,} rows, "
        f"{1 - impure:.0%} of them with one outcome each): if they are one record repeated (an incident's, a "
        f"customer's), a split by row puts its twins on both sides and flatters the test figures; "
        f"--group-column {col} keeps each value's rows on one side"
        for impure, col, groups, rows in sorted(found)[:1]
    ]


def _stray_classes(name: str, target: Target) -> list[str]:
    """Two classes and a few rows of others (`Unknown`, `?`): a binary outcome with stray values, said
    rather than silently trained as a multiclass model."""
    if target.task != "multiclass":
        return []
    counts = np.bincount(target.y, minlength=len(target.labels))
    stray = counts < 0.01 * len(target.y)
    if (~stray).sum() != 2:
        return []
    shown = ", ".join(
        f"{label!r} ({n} rows)" for label, n, few in zip(target.labels, counts, stray, strict=True) if few
    )
    return [
        f"target {name!r}: two classes and a few rows of {shown}, so the model is multiclass; "
        "if those are not outcomes, remove their rows (or blank their target: such rows are dropped)"
    ]


# two numeric columns this correlated state one quantity twice (a date and its decimal year, a price
# in two currencies): the network splits the quantity's effect between them, and their reason codes
# would come out as large effects of opposite signs that cancel. The network keeps reading both
# (leaving the copy out cost log loss: BENCHMARKS.md); their explanations are one effect
RESTATED = 1 - 1e-4  # the same quantity up to rounding (a charge rounded to cents stays above it)
RESTATED_SAMPLE = 10_000  # rows that find candidate pairs; a candidate is then checked on every row


def restated_columns(df: pd.DataFrame, schema: Schema) -> dict[str, tuple[str, float]]:
    """Each numeric column that restates an earlier one (|correlation| ≥ RESTATED, missing in the same
    rows) → that column and the correlation (the earlier one may restate another in turn)."""
    if len(schema.numeric) < 2:
        return {}

    def values(col: str, rows: pd.DataFrame) -> np.ndarray:
        # a date: ages at any one reference date (the choice only shifts them)
        age = DateParse("2000-01-01T00:00:00", schema.dates[col]) if col in schema.dates else None
        return numbers_of(rows[col], schema, age)

    # every k-th row: the first rows of a sorted file, or of a column blank at first, could be constant
    sample = df.iloc[:: max(1, len(df) // RESTATED_SAMPLE)]
    x = np.stack([values(c, sample) for c in schema.numeric], axis=1)
    filled = np.where(np.isnan(x), np.nanmean(np.where(np.isnan(x).all(axis=0), 0.0, x), axis=0), x)
    with np.errstate(all="ignore"):  # a column constant on the sample, or past 1e154 (overflows): no candidate
        close = np.abs(np.corrcoef(filled, rowvar=False)) >= RESTATED
    whole: dict[str, np.ndarray] = {}  # a candidate's values on every row, parsed once
    restated: dict[str, tuple[str, float]] = {}
    for j, col in enumerate(schema.numeric):
        for i in np.flatnonzero(close[j, :j]).tolist():
            first = schema.numeric[i]
            for c in (first, col):
                if c not in whole:
                    whole[c] = values(c, df)
            a, b = whole[first], whole[col]
            both = ~np.isnan(a)
            if not np.array_equal(both, ~np.isnan(b)) or both.sum() < 3:
                continue
            r = abs(float(np.corrcoef(a[both], b[both])[0, 1]))
            if r >= RESTATED:
                restated[col] = (first, r)
                break
    return restated


def numbers_of(column: pd.Series, schema: Schema, date: DateParse | None = None) -> np.ndarray:
    """A numeric (or date: ages in days by `date`) column's values, NaN where missing."""
    if date is not None:
        return np.array([date(v) for v in column], dtype=np.float64)
    values = numeric_values(column, schema.read.decimal)
    assert values is not None  # NOTE: schema inference guarantees every value parses
    return values


def restated_roots(columns: list[dict[str, Any]]) -> dict[str, str]:
    """From a column table (`restates` rows): each restated column → the column at the start of its
    chain (c restates b, b restates a: c → a), the one its effect is explained under."""
    restates = {row["column"]: row["restates"] for row in columns if "restates" in row}
    roots = {}
    for col in restates:
        root = restates[col]
        while root in restates:
            root = restates[root]
        roots[col] = root
    return roots


def _classify(col: str, column: pd.Series, schema: Schema, cfg: TrainConfig, file_rows: np.ndarray | None) -> None:
    keys = category_values(column)
    present = [k for k in keys if k is not None]
    if not present:  # as a constant column: it tells nothing (weeks a song never charted; a field never filled)
        schema.dropped[col] = "no values (all missing)"
        return
    decimal = schema.read.decimal
    if col in cfg.date_columns:
        fmt = _date_format(present, col, cfg.month_first, schema.warnings, forced=True) or "iso"
        schema.dates[col], schema.told[col] = fmt, "--date-columns"
        schema.numeric.append(col)
        return
    if col in cfg.numeric:
        _numeric_or_fail(col, column, schema, file_rows)
        schema.told[col] = "--numeric"
        return
    if col in cfg.categorical:
        _categorical(col, present, schema)
        schema.told[col] = "--categorical"
        if _digits(present):
            schema.codes[col] = "each value a level"
        return
    levels = set(present)
    distinct = len(levels)
    numbers = None if _has_leading_zeros(levels) else numeric_values(column, decimal)
    if distinct == 1 and len(present) == len(keys):
        schema.dropped[col] = "constant"
    elif numbers is None and (fmt := _date_format(present, col, cfg.month_first, schema.warnings)) is not None:
        # before the identifier test: a signup date has many distinct values and is still a date
        schema.dates[col] = fmt
        schema.numeric.append(col)
    elif (why := _id_reason(col, present, distinct, numbers)) is not None:
        schema.id_columns.append(col)
        schema.dropped[col] = why
    elif numbers is not None and (code := _code_reason(col, present, numbers)) is None:
        schema.numeric.append(col)
        _record_unit(col, present, schema)
    else:
        _categorical(col, present, schema)
        if numbers is not None:
            schema.codes[col] = code
        elif _digits(v for v in levels if v.lower() not in NUMERIC_MISSING):
            schema.codes[col] = "codes with leading zeros: each a level"
        elif distinct > ALMOST_LEVELS:
            schema.warnings += _almost(col, column, present, decimal, cfg.month_first)


ALMOST_LEVELS = 50  # a column of this many levels is looked at for a few cells that kept it from numbers or dates
ALMOST_SHARE = 0.95  # of its cells numbers (or dates in one format): the rest are likely slips, said


def _almost(col: str, column: pd.Series, present: list[str], decimal: str, month_first: bool) -> list[str]:
    """A warning for a column read as levels because a few of its cells are no number (`unknown`) or
    no date in the format the others share (`31.02.2024`): one such cell made a column of amounts 1,199
    levels, without a word. Missing cells count for neither side."""
    distinct, codes = _distinct(column)
    counts = np.bincount(codes, minlength=len(distinct))
    given = np.array([category_key(v) is not None and str(v).strip().lower() not in NUMERIC_MISSING for v in distinct])
    values = int(counts[given].sum())
    if not values:
        return []
    readable = np.array([_is_number(v, decimal) for v in distinct]) & given
    kind = "numbers"
    if counts[readable].sum() < ALMOST_SHARE * values:
        sample = present[:: max(1, len(present) // 500)]
        formats = sorted(DATE_FORMATS, key=lambda f: f.startswith(DAY_FIRST)) if month_first else DATE_FORMATS
        fmt = max(formats, key=lambda f: sum(_reads_every([v], f) for v in sample))
        readable = np.array([_reads_every([str(v)], fmt) for v in distinct]) & given
        kind = f"dates ({shown_format(fmt)})"
        if counts[readable].sum() < ALMOST_SHARE * values:
            return []
    bad = [(int(n), str(v)) for v, n, no in zip(distinct, counts, given & ~readable, strict=True) if no]
    odd = sum(n for n, _ in bad)
    if not odd:  # every value reads: kept from it for another reason (a two-digit year), said where it was
        return []
    shown = ", ".join(repr(v) for _, v in sorted(bad, reverse=True)[:3]) + (", …" if len(bad) > 3 else "")
    return [
        f"{col!r} is read as categorical though all but {odd:,} of its {values:,} values are {kind} ({shown}): "
        "if those mean missing, blank or correct them and the column is read as the others are"
    ]


def _is_number(value: Any, decimal: str) -> bool:
    try:
        parse_number(value, decimal)
    except ValueError:
        return False
    return True


def _numeric_or_fail(col: str, column: pd.Series, schema: Schema, file_rows: np.ndarray | None) -> None:
    for row, value in enumerate(column):
        try:
            parse_number(value, schema.read.decimal)
        except ValueError as exc:  # the row as the file numbers it (rows without a target were left out)
            shown = int(file_rows[row]) if file_rows is not None else row
            raise DataError(f"--numeric {col!r}: row {shown + 1}: {exc}") from None
    schema.numeric.append(col)
    _record_unit(col, [v for v in column if category_key(v) is not None], schema)


def _categorical(col: str, present: list[str], schema: Schema) -> None:
    schema.categorical.append(col)
    merged = merged_levels(present)
    if merged:
        schema.merged[col] = merged
    schema.levels[col] = len({merged.get(v, v) for v in present})


def merged_levels(present: list[str], by_value: bool = False) -> dict[str, str]:
    """Spellings that differ only by case → the most frequent of them (`YES`, `yes` → `Yes`); with
    `by_value`, numbers of equal value too (`1.0`, `1` → `1`, as a target exported by two tools)."""
    counts = Counter(present)
    groups: dict[str | float, list[str]] = {}
    for level in counts:
        number = plain_number(level) if by_value else None
        groups.setdefault(level.casefold() if number is None else number, []).append(level)
    merged = {}
    for spellings in groups.values():
        if len(spellings) > 1:
            keep = min(spellings, key=lambda v: (-counts[v], v))
            merged.update({v: keep for v in spellings if v != keep})
    return merged


def _has_leading_zeros(present: Iterable[str]) -> bool:
    """`000123`, `0421`, `01.11` (NACE), `0101.21` (HS): codes whose zeros matter, never amounts (`0`,
    `0.5` are numbers). An amount a fixed-width export padded (`00029.85`) reads as codes too: the two
    cannot be told apart; `--numeric` reads it."""
    return any(len(v) > 1 and v[0] == "0" and v[1].isdigit() for v in present)


def _integral(numbers: np.ndarray) -> bool:
    finite = numbers[~np.isnan(numbers)]
    return bool(np.all(np.mod(finite, 1) == 0))


def _id_reason(col: str, present: list[str], distinct: int, numbers: np.ndarray | None) -> str | None:
    """Why a column is an identifier (passed through scoring, never a feature), or None."""
    if len(present) < 20:
        return None
    integral = numbers is not None and _integral(numbers)
    if distinct == len(present) and (numbers is None or (integral and _named(col, ID_WORDS))):
        # NOTE: a distinct text per row (customerID) carries no learnable signal
        return "identifier (a distinct value per row); passed through scoring"
    if (numbers is None or integral) and _named(col, ID_WORDS - {"no"}) and distinct > ID_SHARE * len(present):
        return f"identifier ({distinct:,} distinct values in {len(present):,} rows: repeats per customer, not a feature); passed through scoring"
    if numbers is None and distinct > ID_SHARE * len(present) and distinct > 100:
        return f"identifier-like ({distinct:,} distinct values in {len(present):,} rows: too few rows per level to learn from); passed through scoring"
    return None


def _code_reason(col: str, present: list[str], numbers: np.ndarray) -> str | None:
    """Why a numeric-looking column is categorical (integer codes), or None. Only integers written as
    digits: levels are text, and a level `17.0` would not match a client's `17`."""
    if not _integral(numbers):
        return None
    written = [v for v in present if v.lower() not in NUMERIC_MISSING]
    if not _digits(written):
        return None
    if _named(col, CODE_WORDS):
        return "integers named as a code: each value a level, not an amount"
    if _named(col, REPEATED_ID_WORDS) and len(set(written)) < len(written):
        return "an id's integers, repeating: each value a level, not an amount"
    return None


def _digits(values: Iterable[str]) -> bool:
    return all(_DIGITS.fullmatch(v) for v in values)


def _named(col: str, words: frozenset[str]) -> bool:
    """'customerID', 'RowNumber', 'loan_no', 'zip_code' — the last word of the name says what it is."""
    found = _WORD.findall(col)
    return bool(found) and found[-1].lower() in words


DAY_FIRST = ("%d/%m", "%d-%m")  # the day-first formats a month-first one also reads (no day above 12)


def _date_format(
    present: list[str], col: str, month_first: bool, warnings: list[str], forced: bool = False
) -> str | None:
    """The one format every value of a date column is written in, or None (a refusal when `forced`);
    `month_first`: MM/DD/YYYY before DD/MM/YYYY, MM-DD-YYYY before DD-MM-YYYY (ISO stays first).
    Said in `warnings`: two-digit years that would read as a later century (not taken for dates
    unless `forced`), and dates that read day first and month first alike."""
    present = [v for v in present if v.lower() not in NUMERIC_MISSING]  # NA, n/a: missing, as in scoring
    sample = present[:: max(1, len(present) // 2000)]
    if not forced and not (sample and all(("-" in v or "/" in v or "." in v) and v[:1].isdigit() for v in sample)):
        return None
    formats = sorted(DATE_FORMATS, key=lambda f: f.startswith(DAY_FIRST)) if month_first else DATE_FORMATS
    fmt = next((f for f in formats if _reads_every(present, f) and (forced or _padded(present, f))), None)
    if fmt is not None:
        if (late := _past_century(present, fmt)) is not None:
            message = f"{col!r}: {late!r} as {shown_format(fmt)} reads as {parse_date(late, fmt):%Y}"
            if not forced:
                warnings.append(
                    f"{message}, likely an earlier century's: not read as dates; write the years with four digits"
                )
                return None
            # the user says these are dates: a year to come may be meant (a loan's maturity)
            warnings.append(f"{message}; if an earlier century is meant, write the years with four digits")
        _warn_if_either_order(col, present, fmt, warnings)
        return fmt
    if forced:
        _refuse_as_dates(present, col)
    return None


def _refuse_as_dates(present: list[str], col: str) -> NoReturn:
    """The --date-columns error: the first value no format reads, or two values in different formats."""
    bad = next((v for v in present if not any(_reads_every([v], f) for f in DATE_FORMATS)), None)
    if bad is not None:
        raise DataError(f"--date-columns {col!r}: {bad!r} is not a date in any known format (e.g. 2023-04-17)")
    first = next(f for f in DATE_FORMATS if _reads_every(present[:1], f))
    other = next(v for v in present if not _reads_every([v], first))
    raise DataError(
        f"--date-columns {col!r}: dates in more than one format ({present[0]!r}, {other!r}): write them in one"
    )


# dotted or dashed two-digit years only where day and month are padded (17.04.23, 05-JAN-24, as German
# and Oracle exports write them): a version (1.2.10) or a range of codes is not a date
_PADDED = re.compile(r"\d\d[.-](\d\d|[A-Za-z]{3})[.-]\d\d(\D|$)")


def _padded(present: list[str], fmt: str) -> bool:
    return "%y" not in fmt or "/" in fmt or all(_PADDED.match(v) or is_iso(v) for v in present)


# a two-digit year more than this many years ahead of today is an earlier century's: strptime reads a
# birth year of 55 as 2055, which would make the column's ages silently wrong
FUTURE_YEARS = 10


def _past_century(present: list[str], fmt: str) -> str | None:
    """The first value whose two-digit year reads over FUTURE_YEARS ahead of today, if any."""
    if "%y" not in fmt:
        return None
    limit = dt.datetime.now() + dt.timedelta(days=365.25 * FUTURE_YEARS)
    return next((v for v in present if (_two_digit_year(v, fmt) or limit) > limit), None)


def _two_digit_year(text: str, fmt: str) -> dt.datetime | None:
    """`text` read in `fmt` when its year has two digits (2050 written in full is meant), else None."""
    try:
        return dt.datetime.strptime(text.strip(), fmt)
    except ValueError:
        return None


def _reads_every(present: list[str], fmt: str) -> bool:
    try:
        for v in present:
            parse_date(v, fmt)
    except ValueError:
        return False
    return True


def _warn_if_either_order(col: str, present: list[str], fmt: str, warnings: list[str]) -> None:
    """A week of US dates (12/01 to 12/07) reads day first too, as seven months: said, not silent."""
    if not fmt.startswith(DAY_FIRST):
        return
    other = f"%m{fmt[2]}%d{fmt[5:]}"
    if other in DATE_FORMATS and _reads_every(present, other):
        warnings.append(
            f"{col!r}: every date reads as {shown_format(fmt)} and as {shown_format(other)} (no day above 12): "
            f"read day first; --month-first reads it as {shown_format(other)}"
        )


def _record_unit(col: str, present: list[str], schema: Schema) -> None:
    units = Counter(business_number(v, schema.read.decimal)[1] for v in present[:5000] if not _plain(v))
    units.pop("", None)
    if units:
        schema.units[col] = units.most_common(1)[0][0]


def _plain(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text.strip().lower() in NUMERIC_MISSING
    return True


def _row(col: str, schema: Schema) -> dict[str, Any]:
    """The column table's line for one column: the type it got and why."""
    row = _typed_row(col, schema)
    if col in schema.told:
        row["why"] = f"as told ({schema.told[col]}); " + row["why"]
    return row


def _typed_row(col: str, schema: Schema) -> dict[str, Any]:
    if col in schema.dropped:
        kind = "identifier" if col in schema.id_columns else "left out"
        return {"column": col, "type": kind, "why": schema.dropped[col]}
    if col in schema.dates:
        fmt = schema.dates[col]
        century = "; two-digit years 69-99 as 19xx, 00-68 as 20xx" if "%y" in fmt else ""
        return {
            "column": col,
            "type": "date",
            "why": f"dates ({'ISO' if fmt == 'iso' else shown_format(fmt)}{century}): age in days at the latest training date",
        }
    if col in schema.numeric:
        unit = schema.units.get(col)
        return {
            "column": col,
            "type": "numeric",
            "why": "every value a number" + (f" ({unit!r} stripped)" if unit else ""),
        }
    merged = schema.merged.get(col, {})
    why = schema.codes.get(col, "text values")
    if merged:
        shown = ", ".join(f"{k!r}→{v!r}" for k, v in list(merged.items())[:4])
        why += f"; levels differing only in case merged: {shown}" + (" …" if len(merged) > 4 else "")
    return {"column": col, "type": "categorical", "levels": schema.levels.get(col, 0), "why": why}


def _target_row(name: str, target: Target, requested: str) -> dict[str, Any]:
    why = f"{target.task} target" + (f" (positive class {target.positive!r})" if target.positive is not None else "")
    numeric = all(isinstance(label, int | float) and not isinstance(label, bool) for label in target.labels)
    if requested == "auto" and target.task == "multiclass" and numeric:
        # a count or a rating became classes: say so, and how to predict it as a number instead
        why += (
            f": {len(target.labels)} whole-number values, taken as classes (a number with at most {INTEGER_CLASSES} is); "
            "--task regression predicts it as a number"
        )
    if target.merged:
        why += "; labels written two ways merged: " + ", ".join(f"{k!r}→{v!r}" for k, v in target.merged.items())
    return {"column": name, "type": "target", "why": why}


def column_lines(schema: Schema) -> list[str]:
    """The table training prints: how the file was read, then every column with its type and why."""
    r = schema.read
    sep = {"\t": "tab"}.get(r.sep, r.sep)
    lines = [
        f"read as {r.format}: delimiter {sep!r}, decimal mark {r.decimal!r}, encoding {r.encoding}"
        if r.format == "csv"  # a typed file has no delimiter nor encoding to guess; text numbers may still have a mark
        else f"read as {r.format}: decimal mark {r.decimal!r} (numbers written as text)"
    ]
    width = max(len(row["column"]) for row in schema.table)
    for row in schema.table:
        shown = row["type"] + (f" ({_levels_of(row)})" if row["type"] == "categorical" else "")
        lines.append(f"  {row['column']:<{width}}  {shown:<26} {row['why']}")
    lines += [f"WARNING: {w}" for w in schema.warnings]
    return lines


def _levels_of(row: dict[str, Any]) -> str:
    return f"{row['levels']} levels" if "levels" in row else "levels"


def leakage_warnings(df: pd.DataFrame, schema: Schema, target: Target, cfg: TrainConfig) -> list[tuple[list[str], str]]:
    """A warning, with the columns it names, for each feature that alone predicts the target almost
    perfectly, and for numeric columns that sum to a regression target (likely leakage)."""
    warnings: list[tuple[list[str], str]] = []
    majority = (
        float(np.bincount(target.y.astype(np.int64)).max() / len(target.y)) if target.task != "regression" else 0.0
    )
    for col in schema.features:
        score, what = _alone(df[col], col, schema, target, cfg)
        if score >= LEAK_SCORE and (what != "purity" or majority < LEAK_SCORE):
            warnings.append(
                (
                    [col],
                    f"column '{col}' alone predicts {cfg.target} almost perfectly ({what} {score:.3f}): likely leakage "
                    f"(the target under another name, or known only after the outcome); --drop {col} unless it is known when predicting",
                )
            )
    if target.task == "regression":  # the columns already named alone are no one's parts
        parts, r2 = target_parts(df, schema, target.y, {c for columns, _ in warnings for c in columns})
        if parts:
            named = " + ".join(f"'{c}'" for c in parts)
            warnings.append(
                (
                    parts,
                    f"columns {named} together restate {cfg.target} almost exactly (a weighted sum of them: R² {r2:.4f} "
                    f"on rows it was not fitted on): likely leakage (the target's parts, such as a total's "
                    f"components); --drop {','.join(parts)} unless they are known when predicting",
                )
            )
    return warnings


def target_parts(df: pd.DataFrame, schema: Schema, y: np.ndarray, named: set[str]) -> tuple[list[str], float]:
    """Two or three numeric columns whose weighted sum is the target (R² ≥ PARTS_R2 on held rows), or [].
    Chosen greedily, each step the column closest to what the chosen ones leave unexplained; fitted
    on half of a seeded sample and judged on the other half, so many columns cannot fit noise."""
    cols = [c for c in schema.numeric if c not in schema.dates and c not in named]
    rows = np.random.default_rng(0).permutation(len(y))[:PARTS_ROWS]
    if len(cols) < 2 or len(rows) < 40:
        return [], 0.0
    values = [numeric_values(df[c].iloc[rows], schema.read.decimal) for c in cols]
    x = np.column_stack([v if v is not None else np.full(len(rows), np.nan) for v in values])
    filled = np.where(np.isnan(x), np.nanmedian(np.where(np.isnan(x).all(axis=0), 0.0, x), axis=0), x)
    t = y[rows]
    half = len(rows) // 2
    with np.errstate(all="ignore"):  # values near float64's limit (a 1e308 placeholder) overflow: not parts
        scale = filled[:half].std(axis=0)
        usable = np.isfinite(scale) & (scale > 0)
        spread = t[:half].std(), t[half:].std()
        if usable.sum() < 2 or not all(np.isfinite(s) and s > 0 for s in spread):
            return [], 0.0
        z = (filled[:, usable] - filled[:half, usable].mean(axis=0)) / scale[usable]
    if not np.isfinite(z).all():
        return [], 0.0
    names = [c for c, u in zip(cols, usable, strict=True) if u]
    chosen: list[int] = []
    left = t[:half] - t[:half].mean()
    r2 = 0.0
    for _ in range(3):
        closeness = np.abs(z[:half].T @ left)
        closeness[chosen] = -1.0
        chosen.append(int(closeness.argmax()))
        design = np.column_stack([z[:, chosen], np.ones(len(rows))])
        coef, *_ = np.linalg.lstsq(design[:half], t[:half], rcond=None)
        left = t[:half] - design[:half] @ coef
        r2 = 1.0 - float(np.mean((t[half:] - design[half:] @ coef) ** 2) / t[half:].var())
        if r2 >= PARTS_R2:
            return ([names[j] for j in chosen], r2) if len(chosen) > 1 else ([], 0.0)
    return [], r2


def _alone(column: pd.Series, col: str, schema: Schema, target: Target, cfg: TrainConfig) -> tuple[float, str]:
    """How well one column alone predicts the target: AUC (binary, numeric), |correlation| or |rank
    correlation| (regression, numeric) or purity (categorical: the share of rows whose level's majority class is theirs)."""
    y = target.y
    if col in schema.numeric and col not in schema.dates:
        x = numeric_values(column, schema.read.decimal)
        if x is None:
            return 0.0, ""
        if target.task == "multiclass":  # groups of ~20 rows by rank, blanks their own: as pure as a leaked level?
            return _purity(value_groups(x, max(10, min(100, len(x) // 20))), y, cfg)
        missing = np.isnan(x)
        if target.task == "binary":
            from sklearn.metrics import roc_auc_score

            # blanks below every value, then above: a field filled in only after the outcome tells it apart
            ends = (np.nanmin(x) - 1, np.nanmax(x) + 1) if missing.any() else (0.0,)
            aucs = [float(roc_auc_score(y, np.where(missing, end, x))) for end in ends]
            return max(max(auc, 1 - auc) for auc in aucs), "AUC"
        x = np.where(missing, np.nanmedian(x), x)
        with np.errstate(all="ignore"):  # values past 1e154 overflow (NaN: no leak); training refuses them later
            if not x.std() > 0 or y.std() == 0:
                return 0.0, ""
            linear = float(np.nan_to_num(abs(np.corrcoef(x, y)[0, 1])))
        from scipy import stats  # scikit-learn's dependency

        # the target's logarithm, or the target rounded to bands, keeps its order but not its line
        ranked = abs(float(np.corrcoef(stats.rankdata(x), target.ranks)[0, 1]))
        return (linear, "|correlation|") if linear >= ranked else (ranked, "|rank correlation|")
    if col in schema.categorical and target.task != "regression":
        merged = schema.merged.get(col, {})
        return _purity(np.array([merged.get(k, k) if k is not None else "" for k in category_values(column)]), y, cfg)
    return 0.0, ""


def _purity(groups: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> tuple[float, str]:
    """The share of rows whose group's majority class is theirs (groups of min_category_count rows or more)."""
    table = pd.crosstab(pd.Series(groups), pd.Series(y))
    table = table[table.sum(axis=1) >= cfg.min_category_count]
    if table.empty or len(table) < 2:
        return 0.0, ""
    return float(table.max(axis=1).sum() / table.values.sum()), "purity"


def encode_target(df: pd.DataFrame, cfg: TrainConfig) -> tuple[pd.DataFrame, Target]:
    """Drop rows without a target, decide the task, encode classes as indices (or floats)."""
    if cfg.target not in df.columns:
        raise _missing_column("target column", cfg.target, df)
    keys = category_values(df[cfg.target])
    # exports stacked into one file repeat their header line: such a row is never data (its target read
    # `Churn` made a third class, and one text cell made each numeric column categorical)
    header = np.zeros(len(df), dtype=bool)
    for row in np.flatnonzero((df[cfg.target].str.strip() == cfg.target).to_numpy()):
        # each copy of an Excel "CSV UTF-8" export keeps its BOM; a column with no name has a blank cell
        cells = [str(v).strip().lstrip("\ufeff") for v in df.iloc[row]]
        header[row] = all(c == n or (c == "" and UNNAMED.fullmatch(n)) for c, n in zip(cells, df.columns, strict=True))
    decimal = df.attrs.get("read", Reading()).decimal
    given = ~missing_outcomes(keys, decimal)
    missing_as = sorted({k for k, g in zip(keys, given, strict=True) if not g and k})
    keep = given & ~header
    dropped = int((~given).sum())  # a repeated header's target is given: its own name
    df = df.loc[keep].reset_index(drop=True)
    file_rows = np.flatnonzero(keep) if not keep.all() else None
    header_rows = (np.flatnonzero(header) + 1).tolist()
    present = [k for k, kept in zip(keys, keep, strict=True) if kept]
    if not present:
        raise DataError(f"target column {cfg.target!r} has no values")
    task = _decide_task(cfg.task, present, df[cfg.target], decimal)
    if task == "regression":
        y = np.array([parse_number(v, decimal) for v in df[cfg.target]], dtype=np.float64)
        return df, Target(task, y, [], None, dropped, {}, file_rows, header_rows, missing_as)
    # `yes`, `YES` and `Yes` are one class, never three, and so are `1` and `1.0`: a binary target stays binary
    merged = merged_levels(present, by_value=True)
    present = [merged.get(k, k) for k in present]
    if merged and cfg.task == "auto":
        task = _decide_task(cfg.task, present, df[cfg.target], decimal)
    levels = sorted(set(present), key=_level_sort_key)
    if len(levels) < 2:
        raise DataError(f"target {cfg.target!r} has one class only ({levels[0]!r}); nothing to learn")
    if task == "binary" and len(levels) != 2:
        raise DataError(f"--task binary needs 2 target classes, {cfg.target!r} has {len(levels)}")
    if task == "binary":
        levels = _order_binary(levels, present, cfg.positive)
    index = {lv: i for i, lv in enumerate(levels)}
    y = np.array([index[k] for k in present], dtype=np.int64)
    _check_class_sizes(cfg.target, levels, np.bincount(y, minlength=len(levels)))
    labels = _typed_labels(levels)
    positive = labels[1] if task == "binary" else None
    return df, Target(task, y, labels, positive, dropped, merged, file_rows, header_rows, missing_as)


def _check_class_sizes(target: str, levels: list[str], counts: np.ndarray) -> None:
    rare = [
        f"{lv!r} ({n} row{'' if n == 1 else 's'})" for lv, n in zip(levels, counts, strict=True) if n < MIN_CLASS_ROWS
    ]
    if not rare:
        return
    if len(rare) > SHOWN_CLASSES:  # 2,000 numbers taken for classes made a 59 KB line
        rare = [*rare[:SHOWN_CLASSES], f"and {len(rare) - SHOWN_CLASSES:,} more"]
    count = "; if it is a count, --task regression" if all(_class_number(lv) is not None for lv in levels) else ""
    raise DataError(
        f"target {target!r}: too few rows in class {', '.join(rare)} to split into training, validation "
        f"and test rows (each class needs {MIN_CLASS_ROWS}); merge it into another class or drop its rows{count}"
    )


def _cols(df: pd.DataFrame) -> str:
    """The data's columns for an error message: all of them, or both ends of a very wide file
    (the target is often the last column)."""
    names = [str(c) for c in df.columns]
    if len(names) > 40:
        names = [*names[:20], f"… {len(names) - 25} more …", *names[-5:]]
    return ", ".join(names)


def _missing_column(what: str, name: str, df: pd.DataFrame) -> DataError:
    guess = near_miss(name, [str(c) for c in df.columns])
    hint = f"; did you mean {guess!r}?" if guess else ""
    return DataError(f"{what} {name!r} is not in the data{hint} (columns: {_cols(df)})")


def _decide_task(requested: str, present: list[str], column: pd.Series, decimal: str = ".") -> str:
    numbers = _try_numbers(present, decimal)
    distinct = len(set(present))
    if requested == "regression":
        if numbers is None:
            raise DataError("--task regression needs a numeric target")
        return "regression"
    if requested in ("binary", "multiclass"):
        return requested
    if distinct == 2:
        return "binary"
    if numbers is None:
        if distinct > MAX_CLASSES:
            raise DataError(f"target has {distinct} text classes (> {MAX_CLASSES}); is it an id?")
        return "multiclass"
    integral = bool(np.all(np.mod(numbers, 1) == 0))
    return "multiclass" if integral and distinct <= INTEGER_CLASSES else "regression"


def _try_numbers(values: list[str], decimal: str = ".") -> np.ndarray | None:
    try:
        return np.array([parse_number(v, decimal) for v in values], dtype=np.float64)
    except ValueError:
        return None


def _class_number(level: str) -> float | None:
    """A target class as a number, or None for text ('none', a missing number's spelling, is text:
    a class is a name, never NaN)."""
    try:
        number = parse_number(level)
    except ValueError:
        return None
    return None if math.isnan(number) else number


def _level_sort_key(level: str) -> tuple[int, float, str]:
    """Numbers by value, then text."""
    number = _class_number(level)
    return (1, 0.0, level) if number is None else (0, number, level)


def _order_binary(levels: list[str], present: list[str], positive: str | None) -> list[str]:
    """[negative, positive]: the requested one, else a 'positive-sounding' one, else the minority."""
    if positive is not None:
        wanted = positive.strip()
        # `--positive yes` names the class `Yes` that `yes`/`YES` were merged into
        wanted = (
            next((lv for lv in levels if lv.casefold() == wanted.casefold()), wanted)
            if wanted not in levels
            else wanted
        )
        if wanted not in levels:
            raise DataError(f"--positive {positive!r} is not a target class (classes: {levels})")
    else:
        # `1` is a flag's positive against `0`; in a 1/2 code (German credit's 1 = good) it says nothing
        named = [lv for lv in levels if lv.lower() in POSITIVE_WORDS and (lv != "1" or "0" in levels)]
        counts = {lv: present.count(lv) for lv in levels}
        wanted = named[0] if len(named) == 1 else min(levels, key=lambda lv: (counts[lv], lv))
    return [lv for lv in levels if lv != wanted] + [wanted]


def _typed_labels(levels: list[str]) -> list[Label]:
    """The classes as numbers where every one is a number ('1', '2.5' → 1, 2.5), else as their text:
    one type, as the scored file's label column needs."""
    numbers = [_class_number(level) for level in levels]
    if any(n is None for n in numbers):
        return list(levels)
    return [int(n) if n.is_integer() else n for n in numbers if n is not None]


@dataclass
class Split:
    """Row indices of the development (train+validation) and test parts, plus validation folds."""

    dev: np.ndarray
    test: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]  # (train, val) index pairs into the frame

    @property
    def val_rows(self) -> np.ndarray:
        """The folds' validation rows, fold after fold: the rows of the out-of-fold outputs, in order."""
        return np.concatenate([va for _, va in self.folds])


def split_rows(
    target: Target, cfg: TrainConfig, test: np.ndarray | None = None, groups: np.ndarray | None = None
) -> Split:
    """Seeded, stratified (for classification) test split, then k folds or one validation split;
    with `groups` (--group-column), a group's rows all on one side of each."""
    rows = np.arange(len(target.y))
    strat = target.y if target.task != "regression" else None
    if test is None and groups is not None:
        dev, test = _group_split(rows, target, groups, cfg.test_fraction, cfg)
    elif test is None:
        dev, test = train_test_split(rows, test_size=cfg.test_fraction, random_state=cfg.seed, stratify=strat)
    else:
        dev = np.setdiff1d(rows, test)
    return Split(np.sort(dev), np.sort(test), _folds(dev, target, cfg, groups))


def _folds(
    dev: np.ndarray, target: Target, cfg: TrainConfig, groups: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    strat = target.y[dev] if target.task != "regression" else None
    if cfg.ensemble == 1:
        if groups is not None:
            return [_group_split(dev, target, groups, cfg.val_fraction, cfg)]
        tr, va = train_test_split(dev, test_size=cfg.val_fraction, random_state=cfg.seed, stratify=strat)
        return [(np.sort(tr), np.sort(va))]
    if strat is None:
        strat = np.zeros(len(dev), dtype=np.int64)
    if groups is not None:
        return [(dev[tr], dev[va]) for tr, va in _group_folds(dev, strat, groups, cfg.ensemble, cfg)]
    most = int(np.bincount(strat).max())  # StratifiedKFold refuses more folds than the largest class has rows
    if cfg.ensemble > most:
        rows = f"{len(dev):,} development rows" + (f", {most:,} of the largest class" if most < len(dev) else "")
        raise DataError(f"--ensemble {cfg.ensemble} is more folds than the data allow: at most {most:,} here ({rows})")
    kfold = StratifiedKFold(n_splits=cfg.ensemble, shuffle=True, random_state=cfg.seed)
    return [(dev[tr], dev[va]) for tr, va in kfold.split(dev, strat)]


def _group_split(
    rows: np.ndarray, target: Target, groups: np.ndarray, fraction: float, cfg: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    """`rows` cut in two with whole groups on each side, about `fraction` of them held (the first of
    round(1 / fraction) stratified group folds)."""
    strat = target.y[rows] if target.task != "regression" else np.zeros(len(rows), dtype=np.int64)
    kept, held = _group_folds(rows, strat, groups, max(2, round(1 / fraction)), cfg)[0]
    share = len(held) / len(rows)
    if not fraction / 2 <= share <= 2 * fraction:  # a few groups hold most rows: no figure means what it says
        sizes = np.sort(np.unique(groups[rows], return_counts=True)[1])[::-1]
        raise DataError(
            f"--group-column {cfg.group_column}: whole groups cannot hold about {fraction:.0%} of {len(rows):,} rows "
            f"(the held part would be {share:.0%}; the largest groups have {', '.join(f'{n:,}' for n in sizes[:3])} "
            "rows): name a column of more, smaller groups, or drop the option"
        )
    return np.sort(rows[kept]), np.sort(rows[held])


def _group_folds(
    rows: np.ndarray, strat: np.ndarray, groups: np.ndarray, k: int, cfg: TrainConfig
) -> list[tuple[np.ndarray, np.ndarray]]:
    """StratifiedGroupKFold over `rows`: a group never on both sides; refused by name with too few
    groups, or where a side would lack a class (its rows in too few groups)."""
    from sklearn.model_selection import StratifiedGroupKFold

    found = len(np.unique(groups[rows]))
    if found < k:
        raise DataError(
            f"--group-column {cfg.group_column}: {found} group(s), fewer than the {k} parts it is split into"
        )
    folds = list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=cfg.seed).split(rows, strat, groups[rows]))
    classes = len(np.unique(strat))
    if any(len(np.unique(strat[side])) < classes for fold in folds for side in fold):
        raise DataError(
            f"--group-column {cfg.group_column}: no split of whole groups holds every class of {cfg.target} "
            "on both sides (a class lives in a few groups); drop the option or merge rare classes"
        )
    return folds


def fit_features(df: pd.DataFrame, schema: Schema, cfg: TrainConfig, y: np.ndarray | None = None) -> list[Feature]:
    """Fit imputation, standardization and vocabularies on the given (training) rows only (`y`, their
    target, ranks the numerics for their pieces where not every column can have them)."""
    features: list[Feature] = []
    columns: list[tuple[NumericFeature, np.ndarray]] = []
    for col in schema.numeric:
        date = _fit_date(col, df[col], schema.dates[col]) if col in schema.dates else None
        values = numbers_of(df[col], schema, date)
        feat = _fit_numeric(col, values, cfg.robust_numerics and date is None)
        finite = values[~np.isnan(values)]
        cycles = date_cycles(finite) if date is not None and cfg.numeric_bins else ()
        # as for a rare level: a blank seen fewer times than this is too rare to learn from
        missing = (
            (len(values) - finite.size) / len(values)
            if finite.size and len(values) - finite.size >= cfg.min_category_count
            else 0.0
        )
        feat = replace(feat, unit=schema.units.get(col, ""), date=date, cycles=cycles, missing_=missing)
        columns.append((feat, values))
    task = "regression" if y is not None and y.dtype.kind == "f" else "classification"  # as piece_edges reads it
    finer = [feat.date is not None and y is not None and tells_apart(values, y, task) for feat, values in columns]
    edges = piece_edges([v for _, v in columns], cfg.numeric_bins, y, finer)
    features += [replace(feat, bins=e) for (feat, _), e in zip(columns, edges, strict=True)]
    for col in schema.categorical:
        merged = schema.merged.get(col, {})
        keys = [merged.get(k, k) if k is not None else None for k in category_values(df[col])]
        features.append(_fit_categorical(col, keys, cfg))
    return features


def _fit_date(col: str, column: pd.Series, fmt: str) -> DateParse:
    """A date column's parser: ages in days at the latest date of the training rows."""
    stamps = [parse_date(v, fmt) for v in column]
    latest = max((t for t in stamps if t is not None), default=None)
    if latest is None:
        raise DataError(f"date column {col!r} has no values in the training split")
    return DateParse(latest.isoformat(), fmt)


def _fit_numeric(col: str, values: np.ndarray, robust: bool = False) -> NumericFeature:
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        raise DataError(f"feature column {col!r} has no values in the training split")
    with np.errstate(over="ignore", invalid="ignore"):  # a value past float32's range: refused by row at encoding
        std, mean = float(finite.std()), float(finite.mean())
    # NOTE: zero variance guarded: a constant column standardizes to 0, never to inf/NaN
    return NumericFeature(
        col,
        mean,
        std if std > 1e-12 else 1.0,
        float(np.median(finite)),
        float(finite.min()),
        float(finite.max()),
        knots=quantile_knots(finite) if robust else (),
    )


HEAVY_SKEW = 2.0  # |skewness| beyond which a column's few extreme values would squash the rest
KNOTS = 17  # quantiles 0, 1/16, …, 1: 16 linear pieces


def quantile_knots(finite: np.ndarray) -> tuple[float, ...]:
    """A heavy-tailed column's distinct training quantiles (no knots: the column is not heavy-tailed
    or has too few distinct values to need it)."""
    if finite.size < 50 or len(np.unique(finite[:10_000])) < 10:
        return ()
    centred = finite - finite.mean()
    spread = float(np.sqrt(np.mean(centred**2)))
    if spread == 0 or abs(float(np.mean(centred**3)) / spread**3) <= HEAVY_SKEW:
        return ()
    knots = np.unique(np.quantile(finite, np.linspace(0, 1, KNOTS)))
    return tuple(float(k) for k in knots) if len(knots) >= 3 else ()


# piece columns over all numeric features (--numeric-bins per column); beyond it only the columns that
# tell the target apart most get pieces: pieces of weak columns cost more than they gain (BENCHMARKS.md)
MAX_PIECES = 128
# a date that tells the target apart gets this many times the pieces: its age spans years, and what
# changed at a date (a price, a rule, a season's peak) falls anywhere in them (BENCHMARKS.md)
DATE_PIECES = 4


def bin_edges(finite: np.ndarray, bins: int) -> tuple[float, ...]:
    """A column's distinct training quantiles at `bins` equal steps; none for fewer than 2 pieces
    (a 0/1 column: its one piece would be the value itself)."""
    if bins < 2 or finite.size == 0:
        return ()
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)))
    return tuple(float(e) for e in edges) if len(edges) >= 3 else ()


def piece_edges(
    columns: list[np.ndarray], bins: int, y: np.ndarray | None, finer: Sequence[bool] = ()
) -> list[tuple[float, ...]]:
    """Each numeric column's bin edges (`bins`; DATE_PIECES × as many where `finer`), at most
    MAX_PIECES pieces in all: beyond that (a wide file), the columns whose value groups (value_groups:
    `bins` groups of rank) tell the target's values apart most keep theirs and the rest get none; a
    finer column where its pieces no longer fit keeps `bins` if those do (without a target: fewer
    bins for every column)."""
    plain = [bin_edges(v[~np.isnan(v)], bins) for v in columns]
    finer = finer or [False] * len(columns)
    fine = [bin_edges(v[~np.isnan(v)], bins * DATE_PIECES) if f else () for v, f in zip(columns, finer, strict=True)]
    edges = [f or e for f, e in zip(fine, plain, strict=True)]
    if sum(max(len(e) - 1, 0) for e in edges) <= MAX_PIECES:
        return edges
    if y is None:
        return [bin_edges(v[~np.isnan(v)], min(bins, MAX_PIECES // len(columns))) for v in columns]
    target = np.eye(int(y.max()) + 1)[y.astype(np.int64)] if y.dtype.kind in "iub" else y.reshape(-1, 1)
    order = np.argsort(
        [-between_share(value_groups(v, bins), target) if e else 0.0 for v, e in zip(columns, edges, strict=True)]
    )
    kept: list[tuple[float, ...]] = [()] * len(columns)
    room = MAX_PIECES
    for j in order.tolist():
        for choice in (edges[j], plain[j]):
            if 0 < len(choice) - 1 <= room:
                kept[j], room = choice, room - (len(choice) - 1)
                break
    return kept


def value_groups(values: np.ndarray, bins: int) -> np.ndarray:
    """A numeric column's rows in `bins` groups of about equal size by their rank, missing values
    (NaN) a group of their own. Tied values share a rank and so a group: a column that is mostly 0 has
    its 0s in one group and the rest in others (cut at its quantiles, it would be one group)."""
    from scipy import stats  # scikit-learn's dependency

    groups = np.full(len(values), bins, dtype=np.int64)
    finite = ~np.isnan(values)
    if finite.any():
        ranks = stats.rankdata(values[finite])  # ties: their average rank
        groups[finite] = np.minimum((ranks - 0.5) * bins / finite.sum(), bins - 1).astype(np.int64)
    return groups


def tells_apart(values: np.ndarray, y: np.ndarray, task: str) -> bool:
    """Whether a numeric column's deciles of rank (missing values, NaN, a group of their own) tell the
    target apart at SCREEN_LEVEL: the screen's test of a numeric column."""
    return association_p_value(value_groups(values, SCREEN_BINS), y, task) < SCREEN_LEVEL


def between_share(groups: np.ndarray, target: np.ndarray) -> float:
    """η² of `target` [rows, k] (a class's one-hot column per class) over integer `groups`."""
    counts = np.bincount(groups).astype(np.float64)
    sums = np.stack([np.bincount(groups, weights=t, minlength=len(counts)) for t in target.T], axis=1)
    centre = target.mean(axis=0)
    used = counts > 0
    between = (counts[used, None] * (sums[used] / counts[used, None] - centre) ** 2).sum()
    total = ((target - centre) ** 2).sum()
    return float(between / total) if total > 0 else 0.0


# a screened member's test (--screen): a column whose groups tell the target apart less surely than
# this (a p-value) is left out; about 1 noise column in 100 gets through
SCREEN_LEVEL = 0.01
SCREEN_BINS = 10  # a numeric column's groups: its deciles of rank, and its missing values


def screened(num: np.ndarray, missing: np.ndarray, cat: np.ndarray, y: np.ndarray, task: str) -> np.ndarray:
    """Which columns (numeric, then categorical) tell the target apart at SCREEN_LEVEL on these rows:
    a numeric column by its deciles of rank (value_groups: tied values together; missing values, where
    `missing` marks them, a group of their own), a categorical one by its levels; chi-square test of
    independence (regression: the F test of η²)."""
    numeric = [tells_apart(np.where(missing[:, j], np.nan, num[:, j]), y, task) for j in range(num.shape[1])]
    levels = [association_p_value(cat[:, i], y, task) < SCREEN_LEVEL for i in range(cat.shape[1])]
    return np.array(numeric + levels, dtype=bool)


def association_p_value(groups: np.ndarray, y: np.ndarray, task: str) -> float:
    """The p-value of no association between integer `groups` and the target: Pearson's chi-square
    over the groups × classes table; regression: the F test of the groups' η²."""
    from scipy import stats  # scikit-learn's dependency

    groups = np.unique(groups, return_inverse=True)[1].reshape(-1)
    k, n = int(groups.max()) + 1 if len(groups) else 0, len(groups)
    if k < 2 or n <= k:
        return 1.0
    if task == "regression":
        share = between_share(groups, y.reshape(-1, 1).astype(np.float64))
        f = (share / (k - 1)) / max((1 - share) / (n - k), 1e-12)
        return float(stats.f.sf(f, k - 1, n - k))
    table = np.zeros((k, int(y.max()) + 1))
    np.add.at(table, (groups, y.astype(np.int64)), 1)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / n
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return float(stats.chi2.sf(chi2, (k - 1) * (table.shape[1] - 1)))


def date_cycles(ages: np.ndarray) -> tuple[str, ...]:
    """The calendar cycles a date column's training values can show: the weekday where dates fall on
    more than one, the time of year where they span three months or more."""
    if ages.size == 0:
        return ()
    cycles = ("weekday",) if np.unique(np.floor(ages[:100_000]) % 7).size > 1 else ()
    return cycles + (("year",) if float(ages.max() - ages.min()) >= 90 else ())


def _fit_categorical(col: str, keys: list[str | None], cfg: TrainConfig) -> CategoricalFeature:
    counts = pd.Series([k for k in keys if k is not None]).value_counts(sort=False)
    kept = counts[counts >= min(cfg.min_category_count, int(counts.max()))]
    kept = kept.sort_values(ascending=False, kind="stable").head(cfg.max_vocab)
    return CategoricalFeature(col, tuple(sorted(str(k) for k in kept.index)), fold=True)


def build_preprocess(
    train_df: pd.DataFrame, y_train: np.ndarray, schema: Schema, target: Target, cfg: TrainConfig
) -> Preprocess:
    """The Preprocess fitted on the training rows only; target scaling for regression."""
    mean, std = 0.0, 1.0
    if target.task == "regression":
        mean, std = float(np.mean(y_train)), float(np.std(y_train)) or 1.0
    return Preprocess(
        task=target.task,  # type: ignore[arg-type]
        target=cfg.target,
        labels=target.labels,
        # a regression target as floats: piece_edges tells classes from values by the dtype
        features=fit_features(
            train_df, schema, cfg, y_train.astype(np.float64) if target.task == "regression" else y_train
        ),
        id_columns=schema.id_columns,
        positive=target.positive,
        target_mean=mean,
        target_std=std if not math.isnan(std) else 1.0,
        read=schema.read,
        columns=schema.table,
    )


def widen_ranges(pre: Preprocess, num: np.ndarray) -> Preprocess:
    """`pre` with each numeric feature's range (`min_`, `max_`) widened to the values in `num` (rows ×
    numeric features, as the model reads them): what a refit on every row saw, so that a value it trained
    on is not called out of range. Every other figure stays the fitted rows' (the graph's scaling)."""
    low, high = np.nanmin(num, axis=0), np.nanmax(num, axis=0)
    # a float32's shortest decimal: 0.1 as the file wrote it, not 0.10000000149011612
    decimal = lambda v: float(str(v))  # noqa: E731
    features, k = [], 0
    for f in pre.features:
        if isinstance(f, NumericFeature):
            f = replace(f, min_=min(f.min_, decimal(low[k])), max_=max(f.max_, decimal(high[k])))
            k += 1
        features.append(f)
    return replace(pre, features=features)


def columns_of(df: pd.DataFrame) -> dict[str, Any]:
    """A DataFrame as the column mapping that Preprocess.encode_columns takes."""
    return {c: df[c].to_numpy() for c in df.columns}
