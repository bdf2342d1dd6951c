"""Training configuration: one dataclass, from flags and/or a TOML or YAML file."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ACTIVATIONS = ("relu", "leaky_relu", "gelu", "tanh", "sigmoid")
TASKS = ("auto", "binary", "multiclass", "regression")


class ConfigError(ValueError):
    """A configuration value that cannot be used."""


@dataclass
class TrainConfig:
    """Everything one training run needs; every default says why it is the default."""

    # --- data ---
    data: str = ""  # the CSV to train on
    target: str = ""  # the column to predict
    name: str = ""  # model name in the store (default: the CSV's file stem)
    models_dir: str | None = None  # store root (None: $TABSERVE_MODELS_DIR or ./models)
    task: str = "auto"  # auto: text/boolean or two-valued → classification, many floats → regression
    positive: str | None = None  # binary positive class (None: 'yes'/'true'/'1'/'bad'…, else minority)
    id_columns: list[str] = field(default_factory=list)  # pass through scoring, never features
    drop: list[str] = field(default_factory=list)  # columns to leave out (leaky or useless ones)
    test_fraction: float = 0.2  # held out for the final report; 20% is the field's usual choice
    val_fraction: float = 0.2  # of the rest, for early stopping when ensemble == 1
    min_category_count: int = 3  # rarer levels share the unseen bucket: too few rows to learn from
    max_vocab: int = 1000  # most frequent levels kept; keeps free-text columns from exploding
    # --- model ---
    hidden: list[int] = field(default_factory=lambda: [32, 16])  # as good as 128-64 here, far cheaper to serve
    activation: str = "relu"  # cheap, well-behaved with BatchNorm
    batch_norm: bool = True  # stabilises training on unevenly scaled inputs
    dropout: float = 0.3  # small data sets overfit quickly; 0.3 measured best on both bundled sets
    linear_skip: bool = True  # a wide (logistic) path beside the deep one: tabular data is often near-linear
    linear_init: bool = True  # start the linear path at a fitted logistic regression (see BENCHMARKS.md)
    max_embedding_dim: int = 4  # wider embeddings only added variance on both bundled sets (BENCHMARKS.md)
    # --- optimisation ---
    epochs: int = 200  # an upper bound: early stopping usually ends far sooner
    batch_size: int = 256  # enough rows per step for stable BatchNorm statistics
    lr: float = 3e-3  # AdamW's sweet spot for small MLPs
    weight_decay: float = 1e-3  # AdamW decoupled decay: mild shrinkage, better calibrated outputs
    patience: int = 12  # epochs without validation improvement before stopping
    class_weight: str = "none"  # none keeps probabilities calibrated; 'balanced' for rare positives
    ensemble: int = 5  # k-fold members averaged: uses all non-test rows and cuts variance
    threshold_rule: str = "f1"  # f1 | youden | accuracy | a fixed number such as 0.5
    seed: int = 0  # same seed and data → same model and metrics
    report_plots: bool = True  # PNG plots in the bundle (matplotlib); off saves ~1 s

    def validate(self) -> TrainConfig:
        """Check values that would otherwise fail deep inside training."""
        if not self.data or not self.target:
            raise ConfigError("both a data file and a target column are required")
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError("dropout must be in [0, 1)")
        if self.ensemble < 1 or self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("ensemble and epochs must be ≥ 1, batch_size ≥ 2")
        if self.class_weight not in ("none", "balanced"):
            raise ConfigError("class_weight must be 'none' or 'balanced'")
        if not 0 < self.test_fraction < 0.9 or not 0 < self.val_fraction < 0.9:
            raise ConfigError("test_fraction and val_fraction must be in (0, 0.9)")
        self.name = self.name or Path(self.data).stem
        return self


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (.toml) or YAML (.yaml/.yml) file into a flat dict of TrainConfig fields."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    if p.suffix == ".toml":
        doc = tomllib.loads(p.read_text())
    elif p.suffix in (".yaml", ".yml"):
        import yaml

        doc = yaml.safe_load(p.read_text()) or {}
    else:
        raise ConfigError(f"config file must be .toml, .yaml or .yml: {p}")
    doc = doc.get("train", doc)  # NOTE: allow a [train] table so one file can hold more sections
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ConfigError(f"unknown config keys in {p}: {', '.join(unknown)}")
    return dict(doc)


def build_config(file: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults ← file ← flags (flags given as non-None keyword arguments win)."""
    values: dict[str, Any] = load_config_file(file) if file else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values).validate()
