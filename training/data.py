"""Reading a business CSV, inferring its schema and target, splitting it, fitting preprocessing."""

from __future__ import annotations

import csv
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from service.features import (
    CategoricalFeature,
    Feature,
    Label,
    NumericFeature,
    Preprocess,
    category_key,
    near_miss,
    parse_number,
)
from training.config import TrainConfig

POSITIVE_WORDS = ("yes", "y", "true", "t", "1", "bad", "churn", "default", "positive", "fraud")
MAX_CLASSES = 50
ID_WORDS = frozenset({"id", "key", "number", "no", "nr", "index", "uuid", "guid"})
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


class DataError(ValueError):
    """The input data cannot be trained on; the message says why in one line."""


@dataclass
class Schema:
    """What each column is: numeric or categorical feature, id, or dropped (with the reason)."""

    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    id_columns: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)

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


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read every cell as text (types are inferred later, the same way scoring parses them); a
    Parquet file (`.parquet`, or the PAR1 magic) is read the same way, each value as its text."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    head = p.open("rb").read(4096)
    if p.suffix.lower() == ".parquet" or head[:4] == b"PAR1":
        return _checked_frame(_read_parquet(p), p)
    if b"\x00" in head:
        raise DataError(f"{p} is not a CSV text file (binary content)")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise DataError(f"{p} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{p} is not a readable CSV: {str(exc).splitlines()[0]}") from None
    with p.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
        header = [c.strip() for c in next(csv.reader(fh), [])]
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:  # NOTE: pandas would rename the second one silently ("tenure.1")
        raise DataError(f"column(s) named more than once in the header of {p}: {', '.join(twice)}")
    df.columns = [str(c).strip() for c in df.columns]
    return _checked_frame(df, p)


def _checked_frame(df: pd.DataFrame, p: Path) -> pd.DataFrame:
    if df.empty:
        raise DataError(f"{p} has a header but no data rows")
    if df.shape[1] < 2:
        raise DataError(f"{p} has {df.shape[1]} column; need a target and at least one feature")
    return df


def _read_parquet(p: Path) -> pd.DataFrame:
    """Every column as text, nulls as empty cells: what the same data looks like read from a CSV."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{p} is not a readable Parquet file: {exc}") from None
    names = [str(c).strip() for c in table.column_names]
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        raise DataError(f"column(s) named more than once in {p}: {', '.join(twice)}")
    columns = {}
    for name, column in zip(names, table.columns, strict=True):
        try:
            text = pc.cast(column, pa.string())
        except pa.ArrowException as exc:  # nested values (lists, structs) have no one text
            raise DataError(f"{p}: column {name!r} ({column.type}) cannot be read as values: {exc}") from None
        columns[name] = pc.fill_null(text, "").to_numpy(zero_copy_only=False).astype(object)
    return pd.DataFrame(columns)


def file_sha256(path: str | Path) -> str:
    """Hash of the training data file, recorded in metrics.json."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def numeric_values(column: pd.Series) -> np.ndarray | None:
    """The column parsed as numbers (NaN for missing), or None if any value is not a number."""
    try:
        return np.array([parse_number(v) for v in column], dtype=np.float64)
    except ValueError:
        return None


def category_values(column: pd.Series) -> list[str | None]:
    """The column's category keys (stripped text, None for missing)."""
    return [category_key(v) for v in column]


def infer_schema(df: pd.DataFrame, cfg: TrainConfig) -> Schema:
    """Classify every non-target column; raises DataError for all-missing or unknown columns."""
    for col in [*cfg.id_columns, *cfg.drop]:
        if col not in df.columns:
            raise _missing_column("column (named in id_columns/drop)", col, df)
    schema = Schema(id_columns=list(cfg.id_columns))
    for col in df.columns:
        if col == cfg.target or col in cfg.id_columns:
            continue
        if col in cfg.drop:
            schema.dropped[col] = "dropped by request"
            continue
        _classify(col, df[col], schema)
    if not schema.features:
        raise DataError("no usable feature columns left after schema inference")
    return schema


def _classify(col: str, column: pd.Series, schema: Schema) -> None:
    keys = category_values(column)
    present = [k for k in keys if k is not None]
    if not present:
        raise DataError(f"feature column {col!r} has no values (all missing); use --drop {col!r}")
    distinct = len(set(present))
    if distinct == 1 and len(present) == len(keys):
        schema.dropped[col] = "constant"
    elif _looks_like_id(col, column, present, distinct):
        schema.id_columns.append(col)
        schema.dropped[col] = "identifier (a distinct value per row); passed through scoring"
    elif numeric_values(column) is not None:
        schema.numeric.append(col)
    else:
        schema.categorical.append(col)


def _looks_like_id(col: str, column: pd.Series, present: list[str], distinct: int) -> bool:
    if distinct != len(present) or len(present) < 20:
        return False
    if numeric_values(column) is None:
        return True  # NOTE: a distinct text per row (customerID) carries no learnable signal
    values = numeric_values(column)
    integral = values is not None and bool(np.all(np.mod(values[~np.isnan(values)], 1) == 0))
    return integral and _named_like_id(col)


def _named_like_id(col: str) -> bool:
    """'customerID', 'RowNumber', 'loan_no', 'Index' — the last word of the name says identifier."""
    words = _WORD.findall(col)
    return bool(words) and words[-1].lower() in ID_WORDS


def encode_target(df: pd.DataFrame, cfg: TrainConfig) -> tuple[pd.DataFrame, Target]:
    """Drop rows without a target, decide the task, encode classes as indices (or floats)."""
    if cfg.target not in df.columns:
        raise _missing_column("target column", cfg.target, df)
    keys = category_values(df[cfg.target])
    keep = np.array([k is not None for k in keys])
    dropped = int((~keep).sum())
    df = df.loc[keep].reset_index(drop=True)
    present = [k for k in keys if k is not None]
    if not present:
        raise DataError(f"target column {cfg.target!r} has no values")
    task = _decide_task(cfg.task, present, df[cfg.target])
    if task == "regression":
        y = np.array([parse_number(v) for v in df[cfg.target]], dtype=np.float64)
        return df, Target(task, y, [], None, dropped)
    levels = sorted(set(present), key=_level_sort_key)
    if len(levels) < 2:
        raise DataError(f"target {cfg.target!r} has one class only ({levels[0]!r}); nothing to learn")
    if task == "binary" and len(levels) != 2:
        raise DataError(f"--task binary needs 2 target classes, {cfg.target!r} has {len(levels)}")
    if task == "binary":
        levels = _order_binary(levels, present, cfg.positive)
    index = {lv: i for i, lv in enumerate(levels)}
    y = np.array([index[k] for k in present], dtype=np.int64)
    labels = [_typed_label(lv) for lv in levels]
    positive = labels[1] if task == "binary" else None
    return df, Target(task, y, labels, positive, dropped)


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


def _decide_task(requested: str, present: list[str], column: pd.Series) -> str:
    numbers = _try_numbers(present)
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
    return "multiclass" if integral and distinct <= 10 else "regression"


def _try_numbers(values: list[str]) -> np.ndarray | None:
    try:
        return np.array([parse_number(v) for v in values], dtype=np.float64)
    except ValueError:
        return None


def _level_sort_key(level: str) -> tuple[int, float, str]:
    try:
        return (0, parse_number(level), level)
    except ValueError:
        return (1, 0.0, level)


def _order_binary(levels: list[str], present: list[str], positive: str | None) -> list[str]:
    """[negative, positive]: the requested one, else a 'positive-sounding' one, else the minority."""
    if positive is not None:
        wanted = positive.strip()
        if wanted not in levels:
            raise DataError(f"--positive {positive!r} is not a target class (classes: {levels})")
    else:
        named = [lv for lv in levels if lv.lower() in POSITIVE_WORDS]
        counts = {lv: present.count(lv) for lv in levels}
        wanted = named[0] if len(named) == 1 else min(levels, key=lambda lv: (counts[lv], lv))
    return [lv for lv in levels if lv != wanted] + [wanted]


def _typed_label(level: str) -> Label:
    try:
        number = parse_number(level)
    except ValueError:
        return level
    return int(number) if float(number).is_integer() else number


@dataclass
class Split:
    """Row indices of the development (train+validation) and test parts, plus validation folds."""

    dev: np.ndarray
    test: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]  # (train, val) index pairs into the frame


def split_rows(target: Target, cfg: TrainConfig, test: np.ndarray | None = None) -> Split:
    """Seeded, stratified (for classification) test split, then k folds or one validation split."""
    rows = np.arange(len(target.y))
    strat = target.y if target.task != "regression" else None
    if test is None:
        dev, test = train_test_split(rows, test_size=cfg.test_fraction, random_state=cfg.seed, stratify=strat)
    else:
        dev = np.setdiff1d(rows, test)
    return Split(np.sort(dev), np.sort(test), _folds(dev, target, cfg))


def _folds(dev: np.ndarray, target: Target, cfg: TrainConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    strat = target.y[dev] if target.task != "regression" else None
    if cfg.ensemble == 1:
        tr, va = train_test_split(dev, test_size=cfg.val_fraction, random_state=cfg.seed, stratify=strat)
        return [(np.sort(tr), np.sort(va))]
    if strat is None:
        strat = np.zeros(len(dev), dtype=np.int64)
    kfold = StratifiedKFold(n_splits=cfg.ensemble, shuffle=True, random_state=cfg.seed)
    return [(dev[tr], dev[va]) for tr, va in kfold.split(dev, strat)]


def fit_features(df: pd.DataFrame, schema: Schema, cfg: TrainConfig) -> list[Feature]:
    """Fit imputation, standardization and vocabularies on the given (training) rows only."""
    features: list[Feature] = []
    for col in schema.numeric:
        values = numeric_values(df[col])
        assert values is not None  # NOTE: schema inference guarantees every value parses
        features.append(_fit_numeric(col, values))
    for col in schema.categorical:
        features.append(_fit_categorical(col, category_values(df[col]), cfg))
    return features


def _fit_numeric(col: str, values: np.ndarray) -> NumericFeature:
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        raise DataError(f"feature column {col!r} has no values in the training split")
    std = float(finite.std())
    # NOTE: zero variance guarded: a constant column standardizes to 0, never to inf/NaN
    return NumericFeature(
        col,
        float(finite.mean()),
        std if std > 1e-12 else 1.0,
        float(np.median(finite)),
        float(finite.min()),
        float(finite.max()),
    )


def _fit_categorical(col: str, keys: list[str | None], cfg: TrainConfig) -> CategoricalFeature:
    counts = pd.Series([k for k in keys if k is not None]).value_counts(sort=False)
    kept = counts[counts >= min(cfg.min_category_count, int(counts.max()))]
    kept = kept.sort_values(ascending=False, kind="stable").head(cfg.max_vocab)
    return CategoricalFeature(col, tuple(sorted(str(k) for k in kept.index)))


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
        features=fit_features(train_df, schema, cfg),
        id_columns=schema.id_columns,
        positive=target.positive,
        target_mean=mean,
        target_std=std if not math.isnan(std) else 1.0,
    )


def columns_of(df: pd.DataFrame) -> dict[str, Any]:
    """A DataFrame as the column mapping that Preprocess.encode_columns takes."""
    return {c: df[c].to_numpy() for c in df.columns}
