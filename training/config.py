"""Training configuration: one dataclass, from flags and/or a TOML or YAML file."""

from __future__ import annotations

import codecs
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACTIVATIONS = ("relu", "leaky_relu", "gelu", "tanh", "sigmoid")
TASKS = ("auto", "binary", "multiclass", "regression")
PROMOTE = ("auto", "always", "never")
SCREENS = ("auto", "on", "off")
THRESHOLD_RULES = ("f1", "youden", "accuracy")
# settings that name columns: each repeatable or comma-separated, on the command line and in a file
COLUMN_LISTS = ("id_columns", "drop", "date_columns", "categorical", "numeric")
FLAGS = {"id_columns": "--id-column", "report_plots": "--plots"}  # the names users already type


class ConfigError(ValueError):
    """A configuration value that cannot be used."""


SEEDS = 2**32  # scikit-learn's random_state takes seeds below this
# the least value each count takes: below it, nothing a user can mean
LEAST = {"patience": 1, "max_vocab": 1, "min_category_count": 1, "max_embedding_dim": 1}


def flag(name: str) -> str:
    """The `tabserve train` flag of a field: `batch_size` is `--batch-size`."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def column_list(values: list[str]) -> list[str]:
    """`["a,b", " c "]` → `["a", "b", "c"]`: repeated and comma-separated names alike, stripped as headers are."""
    return [name.strip() for value in values for name in str(value).split(",") if name.strip()]


def opt(default: Any, help: str) -> Any:
    """A TrainConfig field with its help: the one place a setting's default and reason live
    (`tabserve train` builds its options from these). A list field uses `field(default_factory=…,
    metadata={"help": …})` instead."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything one training run needs; every default says why it is the default."""

    # --- data ---
    data: str = opt("", "file to train on: CSV (any delimiter), .csv.gz, Parquet, JSON lines or Excel (required)")
    target: str = opt("", "column to predict (required)")
    name: str = opt("", "model name in the store (default: the file's name, german for german.csv.gz)")
    models_dir: str | None = opt(None, "model store (default: $TABSERVE_MODELS_DIR or ./models)")
    task: str = opt(
        "auto", f"{' | '.join(TASKS)}; auto: text/boolean or two-valued → classification, many floats → regression"
    )
    positive: str | None = opt(
        None, "positive class of a binary target (default: 'yes'/'true'/'1'/'bad'…, else the minority)"
    )
    group_column: str | None = opt(
        None,
        "rows sharing this column's value (a customer's several rows, one incident's records) stay on one "
        "side of every split, so test figures are for groups never seen",
    )
    id_columns: list[str] = field(
        default_factory=list,
        metadata={"help": "identifier column, passed through scoring, never a feature (repeatable)"},
    )
    drop: list[str] = field(
        default_factory=list, metadata={"help": "column to leave out, e.g. a leaky or useless one (repeatable)"}
    )
    # --- reading the file (training/data.py; detected when not given, saved in the bundle) ---
    sep: str | None = opt(None, "CSV delimiter, one character: , ; tab | or another (default: detected from the file)")
    decimal: str | None = opt(None, "decimal mark of numbers in the file: . or , (default: detected)")
    encoding: str | None = opt(None, "text encoding, e.g. utf-8, cp1252, latin-1 (default: detected)")
    date_columns: list[str] = field(
        default_factory=list, metadata={"help": "column read as a date: its age in days is the feature (repeatable)"}
    )
    month_first: bool = opt(
        False,
        "a column of dates (12/01/2024, 12-01-2024) whose every value reads day first and month first alike "
        "(no day above 12) is month first, as US exports write it (default: day first, with a warning)",
    )
    categorical: list[str] = field(
        default_factory=list, metadata={"help": "column taken as categorical whatever it looks like (repeatable)"}
    )
    numeric: list[str] = field(
        default_factory=list, metadata={"help": "column taken as numeric; a value that is no number fails (repeatable)"}
    )
    test_fraction: float = opt(0.2, "rows held out for the final report; 20% is the usual choice")
    val_fraction: float = opt(0.2, "of the rest, rows for early stopping when ensemble is 1")
    min_category_count: int = opt(
        3,
        "a level seen fewer times shares the unseen bucket, and a numeric column missing fewer times gets no "
        "missing indicator: too few rows to learn from",
    )
    max_vocab: int = opt(1000, "most frequent levels kept per column; keeps free-text columns from exploding")
    # --- model ---
    hidden: list[int] = field(
        default_factory=lambda: [64, 32],
        metadata={
            "help": "hidden layer sizes, e.g. 128,64; 64,32 (3 members) beat 32,16 (5 members) where trees lead "
            "logistic regression by far, for a little more serving cost (BENCHMARKS.md)"
        },
    )
    activation: str = opt("relu", f"{' | '.join(ACTIVATIONS)}; relu: cheap, well-behaved with BatchNorm")
    batch_norm: bool = opt(True, "BatchNorm layers: stabilise training on unevenly scaled inputs")
    dropout: float = opt(0.3, "dropout rate; small data sets overfit quickly, 0.3 measured best on both bundled sets")
    linear_skip: bool = opt(True, "a wide (logistic) path beside the deep one: tabular data is often near-linear")
    linear_init: bool = opt(True, "start the linear path at a fitted logistic regression (see BENCHMARKS.md)")
    linear_penalty: str = opt(
        "auto",
        "the linear path's start: l2:C or l1:C (C: inverse strength; l2:1 = plain logistic regression, "
        "least squares for regression); auto: the best of l2:1, l2:0.1, l1:0.1, l1:0.03 (regression also "
        "l2:100, a small ridge) on the first fold (files up to 50,000 rows)",
    )
    robust_numerics: bool = opt(
        False,
        "a heavy-tailed numeric column (|skew| > 2) enters the network as its training quantile (16 linear "
        "pieces), not standardized; off: it helped 2 of 10 benchmark sets and hurt 1 (BENCHMARKS.md)",
    )
    numeric_bins: int = opt(
        16,
        "the deep path also reads each numeric column as piecewise-linear pieces between this many training "
        "quantiles (and a date as its weekday and time of year); 0: off (BENCHMARKS.md)",
    )
    screen: str = opt(
        "auto",
        "on: each member reads only the columns whose deciles (levels) tell the target apart at the 1 % level "
        "(chi-square; regression: F) on its training rows; auto: such a network is also trained, as a "
        "candidate, where the screen leaves out at least half the columns (docs/training.md); off: never",
    )
    max_embedding_dim: int = opt(4, "widest categorical embedding; wider only added variance on both bundled sets")
    # --- optimisation ---
    epochs: int = opt(200, "most epochs per member; early stopping usually ends far sooner")
    batch_size: int = opt(
        256, "rows per step at least: enough for stable BatchNorm; larger files take more, ≤ 256 steps an epoch"
    )
    lr: float = opt(3e-3, "AdamW learning rate; the sweet spot for small MLPs")
    weight_decay: float = opt(1e-3, "AdamW decoupled decay: mild shrinkage, better calibrated outputs")
    patience: int = opt(12, "epochs without validation improvement before stopping")
    class_weight: str = opt(
        "none", "none | balanced; none keeps probabilities calibrated, balanced helps rare positives"
    )
    ensemble: int = opt(3, "k-fold ensemble members, averaged: all non-test rows used, less variance; 1: one model")
    refit: bool = opt(
        True,
        "publish members retrained on every row (test rows too) for the epochs the evaluation fit chose, on files "
        "up to 100,000 rows; the report's figures come from the evaluation fit, which never saw the test rows",
    )
    calibrate: bool = opt(
        True,
        "classification: logits scaled (Platt on the members' mean; multiclass: temperature and a bias per class), "
        "fitted on out-of-fold outputs, inside model.onnx",
    )
    tune: str = opt(
        "0",
        "search hyper-parameters for this long (60s, 5m; optuna TPE with pruning) against the default network "
        "and the linear path; 0: off (default)",
    )
    tune_trials: int = opt(
        0, "most search trials (0: as many as the time allows); a fixed count makes a run repeatable"
    )
    threshold_rule: str = opt("f1", "binary decision threshold: f1 | youden | accuracy | a fixed number such as 0.5")
    seed: int = opt(
        0,
        "random seed: same seed, data and store → same model and metrics (a retrain of the champion's file "
        "keeps the champion's test rows: the model card says so)",
    )
    threads: int = opt(
        1, "CPU threads for torch and LightGBM; 1: as fast on telco idle, 2.6x faster beside a busy process"
    )
    report_plots: bool = opt(True, "PNG plots in the bundle (matplotlib); off saves ~5 s on telco (BENCHMARKS.md)")
    # --- release (training/gate.py, docs/releases.md) ---
    promote: str = opt(
        "auto",
        f"{' | '.join(PROMOTE)}: make the new version champion; auto: only if, on this run's test rows, "
        "no metric is worse than the champion's beyond the tolerance (95 % paired bootstrap)",
    )
    min_gain: float | None = opt(
        None, "auto also needs the key metric to beat the champion's by at least this (AUC; multiclass: log loss; RMSE)"
    )
    gate_tolerance: float | None = opt(
        None, "how much worse than the champion a metric may be (default 0.01; regression: 0.02 × its RMSE)"
    )

    def validate(self) -> TrainConfig:
        """Check values that would otherwise fail deep inside training."""
        self.target = self.target.strip()  # headers are stripped when read: "Churn  " names Churn
        if not self.data or not self.target:
            raise ConfigError(
                "a data file and a target column are required (--data and --target, or data and target in the config file)"
            )
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError("dropout must be in [0, 1)")
        if self.threads < 1:
            raise ConfigError(f"threads must be ≥ 1, not {self.threads}")
        if self.numeric_bins < 0:
            raise ConfigError(f"numeric_bins must be ≥ 0 (0: off), not {self.numeric_bins}")
        if self.screen not in SCREENS:
            raise ConfigError(f"screen must be one of {', '.join(SCREENS)}, not {self.screen!r}")
        if not self.hidden:  # no hidden layer: no network beside the linear path, as `--hidden ''` is refused
            raise ConfigError(
                f"{flag('hidden')} takes whole numbers separated by commas, such as 128,64, not an empty list"
            )
        if any(size < 1 for size in self.hidden):
            raise ConfigError(f"hidden layer sizes must be ≥ 1, not {','.join(map(str, self.hidden))}")
        if not 0 <= self.seed < SEEDS:
            raise ConfigError(f"{flag('seed')} must be a whole number from 0 to {SEEDS - 1}, not {self.seed}")
        if self.ensemble < 1 or self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("ensemble and epochs must be ≥ 1, batch_size ≥ 2")
        # each published a model (or failed deep in torch) that no one can have meant
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"{flag('lr')} must be a number above 0, not {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"{flag('weight_decay')} must be a number ≥ 0, not {self.weight_decay!r}")
        small = [(name, floor) for name, floor in LEAST.items() if getattr(self, name) < floor]
        if small:
            raise ConfigError(", ".join(f"{flag(n)} must be ≥ {floor}, not {getattr(self, n)}" for n, floor in small))
        if self.class_weight not in ("none", "balanced"):
            raise ConfigError("class_weight must be 'none' or 'balanced'")
        for name in ("test_fraction", "val_fraction"):
            if not 0 < getattr(self, name) < 0.9:
                raise ConfigError(f"{flag(name)} must be above 0 and below 0.9, not {getattr(self, name)!r}")
        kind, _, strength = self.linear_penalty.partition(":")
        if self.linear_penalty != "auto" and (kind not in ("l1", "l2") or not _positive(strength)):
            raise ConfigError(f"linear_penalty must be auto, l2:C or l1:C with C > 0, not {self.linear_penalty!r}")
        if self.promote not in PROMOTE:
            raise ConfigError(f"promote must be one of {', '.join(PROMOTE)}, not {self.promote!r}")
        if self.gate_tolerance is not None and not 0 <= self.gate_tolerance < float("inf"):
            raise ConfigError(f"gate_tolerance must be a number ≥ 0, not {self.gate_tolerance!r}")
        if self.min_gain is not None and not abs(self.min_gain) < float("inf"):
            raise ConfigError(f"min_gain must be a finite number, not {self.min_gain!r}")
        try:
            parse_seconds(self.tune)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.tune_trials < 0:
            raise ConfigError(f"tune_trials must be ≥ 0, not {self.tune_trials}")
        if self.tune_trials and not parse_seconds(self.tune):  # it ran no search at all, without a word
            raise ConfigError(f"{flag('tune_trials')} counts the trials of {flag('tune')}: give it a time, such as 60s")
        self.threshold_rule = _threshold_rule(self.threshold_rule)
        if self.sep is not None:
            self.sep = {"tab": "\t", "\\t": "\t"}.get(self.sep, self.sep)
            if len(self.sep) != 1:
                raise ConfigError(f"sep must be one character (such as , ; tab |), not {self.sep!r}")
        if self.decimal not in (None, ".", ","):
            raise ConfigError(f"decimal must be '.' or ',', not {self.decimal!r}")
        if self.encoding is not None:
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                raise ConfigError(f"unknown encoding {self.encoding!r} (e.g. utf-8, cp1252, latin-1)") from None
        for name in COLUMN_LISTS:
            setattr(self, name, column_list(getattr(self, name)))
            if self.target in getattr(self, name):  # left out, a feature or an id: which was meant is a guess
                raise ConfigError(
                    f"{flag(name)} names the target {self.target!r}; name other columns or another target"
                )
        if self.group_column is not None:
            self.group_column = self.group_column.strip()
            if self.group_column == self.target:  # every group one class: nothing would be left to learn
                raise ConfigError(
                    f"{flag('group_column')} names the target {self.target!r}; name the column rows share"
                )
        roles: dict[str, list[str]] = {}  # left out, an id, a date, a category or a number: one each
        for name in COLUMN_LISTS:
            for column in getattr(self, name):
                roles.setdefault(column, []).append(flag(name))
        twice = [f"{column} ({' and '.join(given)})" for column, given in roles.items() if len(set(given)) > 1]
        if twice:
            raise ConfigError(f"column(s) given two roles, which was meant is a guess: {', '.join(twice)}")
        self.name = self.name or default_name(self.data)
        return self


def default_name(data: str) -> str:
    """A model's name from its file: `german.csv.gz` is `german`, as `german.csv` is."""
    path = Path(data)
    return Path(path.stem).stem if path.suffix.lower() == ".gz" else path.stem


def _threshold_rule(rule: str) -> str:
    """A rule's name, or a fixed cut-off that flags some rows and not all (NaN flags no one)."""
    text = str(rule).strip().lower()
    if text in THRESHOLD_RULES:
        return text
    try:
        if 0 < float(text) < 1:
            return text
    except ValueError:
        pass
    raise ConfigError(
        f"{flag('threshold_rule')} must be {', '.join(THRESHOLD_RULES)} or a number between 0 and 1 "
        f"(exclusive), not {rule!r}"
    )


def _positive(text: str) -> bool:
    try:
        return 0 < float(text) < float("inf")
    except ValueError:
        return False


def parse_seconds(text: str | float | int) -> float:
    """'60s', '2m', '90' → seconds; 0 turns the search off."""
    if isinstance(text, int | float):
        text = str(text)
    raw = text.strip().lower()
    unit = {"s": 1, "m": 60, "h": 3600}.get(raw[-1:])
    try:
        value = float(raw[:-1] if unit else raw) * (unit or 1)
    except ValueError:
        raise ValueError(f"--tune takes a time such as 60s, 5m or 90, not {text!r}") from None
    if not 0 <= value < float("inf"):
        raise ValueError(f"--tune takes a time such as 60s, not {text!r}")
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (.toml) or YAML (.yaml/.yml) file into a flat dict of TrainConfig fields, each of its type."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    if p.suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"config file must be .toml, .yaml or .yml: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text") from None
    doc = _parse_toml(p, text) if p.suffix == ".toml" else _parse_yaml(p, text)
    if isinstance(doc, dict) and "train" in doc:  # NOTE: allow a [train] table so one file can hold more sections
        doc = doc["train"]
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {p}: expected settings as `key = value` (TOML) or `key: value` (YAML)")
    hints = typing.get_type_hints(TrainConfig)
    unknown = sorted(str(key) for key in doc if key not in hints)
    if unknown:
        raise ConfigError(f"unknown config keys in {p}: {', '.join(unknown)}")
    return {key: _file_value(p, key, value, hints[key]) for key, value in doc.items()}


def _parse_toml(p: Path, text: str) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # its message ends "(at line 3, column 10)"
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None


def _parse_yaml(p: Path, text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as e:  # its own message spans lines: keep the problem and where
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"config file {p} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None


def _file_value(p: Path, key: str, value: Any, kind: Any) -> Any:
    """A file's value as its field's type, in the flag's syntax too ("32,16" for hidden, "a,b" for columns)."""
    args = [t for t in typing.get_args(kind) if t is not type(None)]
    if typing.get_origin(kind) is types.UnionType:  # `str | None`: YAML's null is the default
        if value is None:
            return None
        kind = args[0]
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and number and isinstance(value, int):
        return value
    if kind is float and number:
        return float(value)
    if kind is str and (isinstance(value, str) or number):  # `threshold_rule = 0.5`, `tune = 60`
        return str(value)
    names = value if isinstance(value, list) else [value]  # one name, or "a,b" split by validate() as the flag's
    if kind == list[str] and all(isinstance(v, str | int) and not isinstance(v, bool) for v in names):
        return [str(v) for v in names]
    if kind == list[int]:
        sizes = int_list(value)
        if sizes is not None:
            return sizes
    raise ConfigError(f"config file {p}: {key} must be {_kind_text(kind)}, not {value!r}")


def int_list(value: Any) -> list[int] | None:
    """`[128, 64]`, `"128,64"`, `"64,"` or `128` → `[128, 64]`; None when it is no list of whole numbers.
    The one reading of `hidden`, a file's or a flag's; validate() then checks the sizes."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
    sizes = []
    for item in items:
        if isinstance(item, str) and not item.strip():  # "64," or "128, ,64": a stray comma
            continue
        if isinstance(item, str) and item.strip().lstrip("-").isdecimal():
            sizes.append(int(item))
        elif isinstance(item, int) and not isinstance(item, bool):
            sizes.append(item)
        else:
            return None
    return sizes


def _kind_text(kind: Any) -> str:
    """What a field takes, in a file's words."""
    if kind == list[int]:
        return 'whole numbers such as [64, 32] or "64,32"'
    if kind == list[str]:
        return 'a column name or a list of them (["a", "b"] or "a,b")'
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text"}[kind]


def build_config(file: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults ← file ← flags (flags given as non-None keyword arguments win)."""
    values: dict[str, Any] = load_config_file(file) if file else {}
    flags = {k: v for k, v in overrides.items() if v is not None}
    try:
        return TrainConfig(**{**values, **flags}).validate()
    except ConfigError as e:
        # where to change it: the file, when one of its settings alone is refused so and no flag is
        # (two settings can share a message: "ensemble and epochs must be ≥ 1, batch_size ≥ 2")
        in_file = {_refusal(k, v) for k, v in values.items() if k not in flags}
        if str(e) in in_file and str(e) not in {_refusal(k, v) for k, v in flags.items()}:
            raise ConfigError(f"config file {file}: {e}") from None
        raise


def _refusal(key: str, value: Any) -> str | None:
    """Why this one setting, beside the defaults, fails validation (None: it passes)."""
    try:
        TrainConfig(**{"data": "-", "target": "-", key: value}).validate()
    except ConfigError as e:
        return str(e)
    return None
