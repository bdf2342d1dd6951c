"""The bundle's feature contract: raw records → `num`/`cat` arrays (numpy only).

This is the one place where raw values (JSON objects, CSV cells, DataFrame columns) become model
inputs. Training builds its tensors through it and the service scores through it, so training and
serving cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
import difflib
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

FORMAT_VERSION = 1
Task = Literal["binary", "multiclass", "regression"]
Label = str | int | float | bool
# what a per-record warning is about (a metrics label: drift shows as out_of_range/unseen_level)
WarningKind = Literal["unseen_level", "out_of_range", "lookalike_field"]

# spreadsheets and exports write "missing" in many ways; for a *numeric* column all of these
# mean "no value" ("." is SAS's and Stata's). Categorical columns only treat blanks as missing
# ("none" is a real level there).
NUMERIC_MISSING = frozenset(
    {"", "na", "n/a", "nan", "null", "none", "?", "-", "--", "#n/a", "."}
    # a spreadsheet's error cells, and the zero dates SAP and MySQL write for "no date"
    | {"#div/0!", "#value!", "#ref!", "#name?", "#num!", "#null!", "00.00.0000", "0000-00-00", "0000-00-00 00:00:00"}
)
# an integer written as a float (`17.0`): how pandas writes an integer column with gaps
_WHOLE_FLOAT = re.compile(r"(-?\d+)\.0+")


NOTHING_KNOWN = "every feature is blank or null: it would be scored as the all-median record"


class EncodingError(ValueError):
    """A raw value that cannot be encoded; names the record and the field (None: the record)."""

    def __init__(self, row: int, field_name: str | None, reason: str) -> None:
        super().__init__(self.at(f"record {row}", field_name, reason))
        self.row, self.field, self.reason = row, field_name, reason

    @staticmethod
    def at(place: str, field_name: str | None, reason: str) -> str:
        """`record 3, field 'tenure': reason` (`row 4` in a file): the one wording of where a value failed."""
        return f"{place}: {reason}" if field_name is None else f"{place}, field '{field_name}': {reason}"


def _squashed(name: str) -> str:
    return "".join(ch for ch in name.casefold() if ch.isalnum())


def stripped(names: list[str]) -> list[str]:
    """Header names as training reads them (`  Contract  ` is `Contract`)."""
    return [str(name).strip() for name in names]


def named_twice(names: Sequence[str]) -> list[str]:
    """The names a header gives more than once, sorted: which of the two holds a value is a guess."""
    return sorted({name for name in names if names.count(name) > 1})


def has_value(value: Any) -> bool:
    """Not null, NaN or blank text: a field that says something."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return not isinstance(value, str) or bool(value.strip())


def near_miss(name: str, candidates: Sequence[str]) -> str | None:
    """The candidate that is most likely `name` mistyped (case, spacing, punctuation or a close
    spelling), or None: how a misspelt field or column gets a "did you mean" instead of silence."""
    squashed = _squashed(name)
    for candidate in candidates:
        if _squashed(candidate) == squashed:
            return candidate
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.8)
    return close[0] if close else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """` (did you mean 'tenure'?)` for a flag's misspelt name, or nothing where no candidate is close."""
    guess = near_miss(name, sorted(candidates))
    return f" (did you mean {guess!r}?)" if guess else ""


def parse_number(value: Any, decimal: str = ".") -> float:
    """One raw value → float (NaN for missing); raises ValueError with a reason otherwise. Text may
    carry a currency or percent sign, `(1,200)` negatives and thousands separators (`business_number`)."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got a boolean ({value})")
    if isinstance(value, int | float | np.integer | np.floating):
        try:
            number = float(value)
        except OverflowError:
            raise ValueError(f"expected a finite number, got {shown(value)}") from None
    elif isinstance(value, str):
        text = value.strip()
        if text.lower() in NUMERIC_MISSING:
            return math.nan
        if "_" in text:  # Python's float() reads `2023_01` as 202301: a code, not a number
            raise ValueError(f"expected a number, got {shown(value)}")
        try:  # the plain form first; with a decimal comma a point may be a thousands separator
            number = float(text) if decimal == "." or "." not in text else business_number(text, decimal)[0]
        except ValueError:
            number = business_number(text, decimal)[0]
    else:
        raise ValueError(f"expected a number, got {type(value).__name__}")
    if math.isinf(number):
        raise ValueError(f"expected a finite number, got {shown(value)}")
    return number


# beside text classes, what a numeric column reads as missing but marks that can be classes (`+`/`-`)
TEXT_MISSING = NUMERIC_MISSING - {"-", ".", "none"}


def missing_outcomes(keys: Sequence[str | None], decimal: str = ".") -> np.ndarray:
    """Which target (outcome) cells hold no outcome: blank, or beside numbers what a numeric column
    reads as missing (`NA`, `?`, `#DIV/0!`, `-nan`: as a class, `NA` made a 0/1 target a regression),
    beside text classes the words of TEXT_MISSING."""
    distinct = {k for k in keys if k is not None}
    try:
        nan = {k for k in distinct if k.lower() not in NUMERIC_MISSING and np.isnan(parse_number(k, decimal))}
    except ValueError:  # text classes
        gone = {k for k in distinct if k.lower() in TEXT_MISSING}
    else:
        gone = nan | {k for k in distinct if k.lower() in NUMERIC_MISSING}
    return np.array([k is None or k in gone for k in keys], dtype=bool)


SHOWN = 80  # characters of a value a message quotes: a file's field may hold a megabyte


def shown(value: Any) -> str:
    """A value as an error or warning quotes it: its repr, cut to SHOWN characters with its length."""
    text = repr(value)
    return text if len(text) <= SHOWN else f"{text[:SHOWN]}… ({len(str(value)):,} characters)"


def plain_number(text: str) -> float | None:
    """A label written as a plain number (`2`, `2.0`: one value), or None for text: how a target's
    classes written two ways are merged (training) and how an outcome finds its class (feedback)."""
    try:
        number = float(text) if "_" not in text else math.nan  # `1_0` is no way of writing 10
    except ValueError:
        return None
    return number if math.isfinite(number) else None


CURRENCIES = ("$", "€", "£", "¥", "₹", "USD", "EUR", "GBP", "CHF", "JPY")
_GROUPING = (" ", "\u00a0", "\u202f", "'")  # separators that only ever group thousands


def business_number(text: str, decimal: str = ".") -> tuple[float, str]:
    """`$1,234.50`, `12.5%`, `(1,200)`, `1.234,5` → (number, unit stripped: '$', '%' or '');
    the unit is stripped and the number kept as written (12.5% is 12.5)."""
    core, negative, unit = text, False, ""
    if core.startswith("(") and core.endswith(")"):  # accounting negative
        core, negative = core[1:-1].strip(), True
    if core.endswith("%"):
        core, unit = core[:-1].strip(), "%"
    if core[:1] in ("+", "-"):
        core, negative = core[1:].strip(), negative != (core[0] == "-")
    for symbol in CURRENCIES:
        if core.startswith(symbol) or core.endswith(symbol):
            core, unit = (core[len(symbol) :] if core.startswith(symbol) else core[: -len(symbol)]).strip(), symbol
            break
    if core[:1] in ("+", "-") and not negative:
        core, negative = core[1:].strip(), core[0] == "-"
    digits = _plain_digits(core, decimal)
    if digits is None:
        raise ValueError(f"expected a number, got {shown(text)}")
    number = float(digits)
    return (-number if negative else number), unit


def _plain_digits(core: str, decimal: str) -> str | None:
    """`1.234,5` → `1234.5` (Python's form), or None when the separators do not group thousands."""
    if any(sep in core for sep in _GROUPING):  # `1 234,50`, `1'234.50`: the other mark is the decimal one
        if not _SPACED.fullmatch(core):
            return None
        return _SPACE.sub("", core).replace(",", ".")
    marks = {ch for ch in core if ch in ".,"}
    if not marks:
        return core if core.isdigit() else None
    if len(marks) == 2:
        point = core[max(core.rfind("."), core.rfind(","))]  # the last one marks the decimals
    elif core.count(next(iter(marks))) > 1:
        point = ""  # the same mark more than once groups thousands
    else:
        mark = next(iter(marks))
        head, _, tail = core.partition(mark)
        # `1,234` is a thousand or one and a bit: the file's (or bundle's) decimal mark decides
        ambiguous = len(tail) == 3 and 1 <= len(head) <= 3 and head != "0"
        point = "" if ambiguous and decimal != mark else mark
    whole, frac = core.rsplit(point, 1) if point else (core, "")
    groups = whole.replace(".", ",").split(",")
    if not groups[0].isdigit() or not all(len(g) == 3 and g.isdigit() for g in groups[1:]):
        return None
    if point and not frac.isdigit():
        return None
    return "".join(groups) + ("." + frac if point else "")


_SPACED = re.compile(r"\d{1,3}(?:[ \u00a0\u202f']\d{3})+(?:[.,]\d+)?")
_SPACE = re.compile(r"[ \u00a0\u202f']")


def category_key(value: Any) -> str | None:
    """One raw value → the vocabulary key (stripped text), or None when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, dict | list):
        raise ValueError(f"expected a category (text), got {type(value).__name__}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON 2.0 and CSV "2" name the same level
    text = str(value).strip()
    return text or None


# tried in this order, the first that reads every value wins: day first before month first; with a
# time of day as spreadsheets and databases export it (seconds or not; US 12-hour clock with AM/PM);
# 05-JAN-2024 as Oracle and Excel write months (English abbreviations, any case)
_FOUR_DIGIT_YEARS = (
    *(
        f"{day}{time}"
        for day in ("%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y", "%Y/%m/%d", "%d-%m-%Y", "%m-%d-%Y", "%d-%b-%Y")
        for time in ("", " %H:%M", " %H:%M:%S")
    ),
    "%m/%d/%Y %I:%M %p",
    "%m/%d/%Y %I:%M:%S %p",
)
# then the same with two-digit years (Excel's 1/5/24, Oracle's 05-JAN-24), which strptime reads as
# 1969-1999 for 69-99 and 2000-2068 for 00-68 (POSIX); never year first (24/01/05 reads either way)
DATE_FORMATS = (
    "iso",
    *_FOUR_DIGIT_YEARS,
    *(f.replace("%Y", "%y") for f in _FOUR_DIGIT_YEARS if not f.startswith("%Y")),
)
# how a person reads a format (shown_format): 'DD/MM/YYYY hh:mm'
_SHOWN = {
    "%d": "DD",
    "%m": "MM",
    "%b": "Mon",
    "%Y": "YYYY",
    "%y": "YY",
    "%H": "hh",
    "%I": "hh",
    "%M": "mm",
    "%S": "ss",
    "%p": "AM/PM",
}


def shown_format(fmt: str) -> str:
    """A date format as a person reads it: '%d/%m/%Y %H:%M' → 'DD/MM/YYYY hh:mm'."""
    return "YYYY-MM-DD" if fmt == "iso" else re.sub("%[a-zA-Z]", lambda m: _SHOWN.get(m.group(), m.group()), fmt)


def is_iso(text: str) -> bool:
    """Text that starts as ISO does (2024-01-05), never a day or month first."""
    return text[4:5] == "-" and text[:4].isdigit()


def _strptime(text: str, fmt: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(text, fmt)
    except ValueError:
        if "%y" not in fmt:
            raise
        return dt.datetime.strptime(text, fmt.replace("%y", "%Y"))  # 2024 for 24: no century to guess


def parse_date(value: Any, fmt: str = "iso") -> dt.datetime | None:
    """A date or datetime (text in `fmt`, or a date object) → naive UTC datetime; None for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, dt.datetime):
        stamp = value
    elif isinstance(value, dt.date):
        stamp = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        if text.lower() in NUMERIC_MISSING:
            return None
        try:  # an ISO text is read whatever the training file's format was (JSON clients write it)
            stamp = dt.datetime.fromisoformat(text) if fmt == "iso" or is_iso(text) else _strptime(text, fmt)
        except ValueError:
            raise ValueError(f"expected a date ({shown_format(fmt)}), got {shown(value)}") from None
    else:
        raise ValueError(f"expected a date (text), got {type(value).__name__}")
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(dt.UTC).replace(tzinfo=None)
    return stamp


@dataclass(frozen=True)
class DateParse:
    """A date feature's raw value → its age in days at the bundle's reference date (NaN: missing)."""

    reference: str  # ISO datetime, the latest date in the training data
    fmt: str = "iso"

    def __call__(self, value: Any) -> float:
        stamp = parse_date(value, self.fmt)
        if stamp is None:
            return math.nan
        return (self.reference_ - stamp).total_seconds() / 86400.0

    @cached_property
    def reference_(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.reference)

    def at(self, age: float) -> str:
        """The date of an age in days, as a person reads it (`2024-06-30`, or with the time of day)."""
        try:
            stamp = self.reference_ - dt.timedelta(days=age)
        except (OverflowError, ValueError):  # an age past year 1 or 9999, or none (a hand-edited bundle)
            return f"{age:g} days before {self.reference_.date().isoformat()}"
        stamp = (stamp + dt.timedelta(microseconds=500_000)).replace(microsecond=0)
        return stamp.date().isoformat() if stamp.time() == dt.time() else stamp.isoformat(sep=" ")


def text_encoding(name: str) -> bool:
    """Whether `name` is a codec that turns bytes into text (`base64` and `rot13` are codecs, not that)."""
    import codecs

    try:
        return bool(getattr(codecs.lookup(name), "_is_text_encoding", True))
    except LookupError:
        return False


@dataclass(frozen=True)
class Reading:
    """How the training file's text was read (preprocess.json `read`): scoring reads files the same way."""

    sep: str = ","
    decimal: str = "."
    encoding: str = "utf-8"
    format: str = "csv"  # the training file's format: csv, parquet, jsonl or excel
    # the encoding was named for this file (`--encoding`, `?encoding=`): read as named, never guessed
    encoding_given: bool = field(default=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The preprocess.json entry."""
        return {"sep": self.sep, "decimal": self.decimal, "encoding": self.encoding, "format": self.format}

    def but(self, sep: str | None, encoding: str | None, decimal: str | None, flag: str = "--") -> Reading:
        """This reading with a file's own delimiter, encoding or decimal mark over it (`--sep`, `?sep=`);
        a value that cannot be one is a ValueError naming the option (`flag` + its name)."""
        if encoding is not None and not text_encoding(encoding):
            raise ValueError(f"{flag}encoding: {encoding!r} is not a text encoding Python knows (e.g. utf-8, cp1252)")
        sep = {"tab": "\t", "\\t": "\t"}.get(sep or "", sep)
        if sep is not None and len(sep) != 1:
            raise ValueError(f"{flag}sep takes one character (such as , ; tab |), not {sep!r}")
        if decimal not in (None, ".", ","):
            raise ValueError(f"{flag}decimal is . or , not {decimal!r}")
        chosen = encoding or self.encoding
        return Reading(sep or self.sep, decimal or self.decimal, chosen, self.format, encoding is not None)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any] | None) -> Reading:
        """From preprocess.json (an older bundle has none: a plain UTF-8 CSV)."""
        read, plain = {k: str(v) for k, v in (doc or {}).items()}, cls()
        return cls(*(read.get(k, getattr(plain, k)) for k in ("sep", "decimal", "encoding", "format")))


@dataclass(frozen=True)
class NumericFeature:
    """A numeric input: imputed with `median_`, standardized with `mean_`/`std_` inside the graph."""

    name: str
    mean_: float
    std_: float
    median_: float
    min_: float
    max_: float
    kind: Literal["numeric"] = "numeric"
    unit: str = ""  # the currency or percent sign the training values carried (stripped)
    date: DateParse | None = None  # a date column: the value is its age in days at date.reference
    # a heavy-tailed column: training quantiles; inside the graph the value becomes its (piecewise
    # linear) quantile instead of a standardized value, so a few huge values do not squash the rest
    knots: tuple[float, ...] = ()
    # training quantiles: the deep path also reads the value as piecewise-linear pieces between
    # them (Gorishniy et al. 2022), so it can bend at thresholds a tree would cut (inside the graph)
    bins: tuple[float, ...] = ()
    # a date's calendar cycles the deep path also reads ("weekday", "year"): seasonality an age in
    # days alone cannot show (inside the graph)
    cycles: tuple[str, ...] = ()
    # the share of training rows it was missing in, where enough were to learn from: the network
    # also reads whether it is missing (inside the graph), since a blank is often itself a signal
    # (an income not given); 0: no such indicator
    missing_: float = 0.0

    def parser(self, decimal: str) -> Callable[[Any], float]:
        """Raw value → float for this feature: a date's age, or a number read with `decimal`."""
        if self.date is not None:
            return self.date
        return parse_number if decimal == "." else partial(parse_number, decimal=decimal)

    def to_json(self) -> dict[str, Any]:
        """The preprocess.json entry."""
        doc: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "mean": self.mean_,
            "std": self.std_,
            "median": self.median_,
            "min": self.min_,
            "max": self.max_,
        }
        if self.unit:
            doc["unit"] = self.unit
        if self.date is not None:
            doc["date"] = {"reference": self.date.reference, "format": self.date.fmt, "value": "age in days"}
        if self.knots:
            doc["knots"] = list(self.knots)
        if self.bins:
            doc["bins"] = list(self.bins)
        if self.cycles:
            doc["cycles"] = list(self.cycles)
        if self.missing_:
            doc["missing"] = self.missing_
        return doc


@dataclass(frozen=True)
class CategoricalFeature:
    """A categorical input: index into `vocab_` plus one; 0 is missing or unseen."""

    name: str
    vocab_: tuple[str, ...]
    kind: Literal["categorical"] = "categorical"
    fold: bool = False  # a level is matched ignoring case (`YES` is `Yes`); older bundles match exactly
    index_: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index_", {v: i + 1 for i, v in enumerate(self.vocab_)})

    @cached_property
    def folded_(self) -> dict[str, int]:
        """Case-folded level → code (levels that fold alike are left out: neither is meant)."""
        folded: dict[str, int] = {}
        clashes = set()
        for level, code in self.index_.items():
            key = level.casefold()
            if key in folded:
                clashes.add(key)
            folded[key] = code
        return {k: v for k, v in folded.items() if k not in clashes} if self.fold else {}

    @cached_property
    def numbered_(self) -> dict[int, int]:
        """A code of digits by its number (`0013` → 13), where no other level has that number."""
        by_number: dict[int, list[int]] = {}
        for level, code in self.index_.items():
            if level.isascii() and level.isdigit():
                by_number.setdefault(int(level), []).append(code)
        return {number: codes[0] for number, codes in by_number.items() if len(codes) == 1}

    def code_of(self, key: str) -> int:
        """A level's code (0: none): verbatim; ignoring case where the bundle says so; an integer
        code written as a float (`17.0`: how pandas writes an integer column with gaps); a code of
        digits without its leading zeros or with others (`13` for `0013`: Excel, Parquet and JSON
        hold it as the number)."""
        found = self.index_.get(key, 0) or self.folded_.get(key.casefold(), 0)
        if found == 0 and (whole := _WHOLE_FLOAT.fullmatch(key)):
            key = whole[1]
            found = self.index_.get(key, 0)
        if found == 0 and key.isascii() and key.isdigit() and len(key) < 19:
            found = self.numbered_.get(int(key), 0)
        return found

    @property
    def cardinality(self) -> int:
        """Embedding rows: the vocabulary plus the missing/unseen bucket."""
        return len(self.vocab_) + 1

    def to_json(self) -> dict[str, Any]:
        """The preprocess.json entry."""
        doc: dict[str, Any] = {"name": self.name, "kind": self.kind, "vocab": list(self.vocab_)}
        if self.fold:
            doc["match"] = "casefold"
        return doc


Feature = NumericFeature | CategoricalFeature


@dataclass
class Encoded:
    """Model inputs for a batch plus what went wrong per row (row index → message)."""

    num: np.ndarray
    cat: np.ndarray
    errors: dict[int, EncodingError] = field(default_factory=dict)
    warnings: dict[int, list[str]] = field(default_factory=dict)
    tally: dict[tuple[str, str], int] | None = None  # (field, kind) → warnings, for metrics

    def warn(self, row: int, message: str, field_name: str, kind: WarningKind) -> None:
        """Attach a per-record warning about one field."""
        self.warnings.setdefault(row, []).append(message)
        if self.tally is None:
            self.tally = {}
        key = (field_name, kind)
        self.tally[key] = self.tally.get(key, 0) + 1


@dataclass
class Preprocess:
    """Everything needed to turn raw records into model inputs and outputs back into answers."""

    task: Task
    target: str
    labels: list[Label]
    features: list[Feature]
    id_columns: list[str] = field(default_factory=list)
    positive: Label | None = None
    threshold: float | None = None
    target_mean: float = 0.0
    target_std: float = 1.0
    read: Reading = field(default_factory=Reading)
    columns: list[dict[str, Any]] = field(default_factory=list)  # every training column: type and why

    @cached_property
    def parsers(self) -> list[Callable[[Any], float]] | None:
        """Each numeric feature's text parser, in `num` order; None: plain numbers everywhere."""
        if self.read.decimal == "." and not self.dates:
            return None
        return [f.parser(self.read.decimal) for f in self.numeric]

    @cached_property
    def dates(self) -> list[str]:
        """Date features (their value is an age in days), by name."""
        return [f.name for f in self.numeric if f.date is not None]

    @cached_property
    def numeric(self) -> list[NumericFeature]:
        """Numeric features in `num` column order."""
        return [f for f in self.features if isinstance(f, NumericFeature)]

    @cached_property
    def indicated(self) -> list[int]:
        """The `num` columns with a missing indicator (blank in enough training rows), in order."""
        return [j for j, f in enumerate(self.numeric) if f.missing_]

    @cached_property
    def kinds(self) -> dict[str, str]:
        """Feature name → "numeric" or "categorical", in feature order."""
        return {f.name: f.kind for f in self.features}

    @cached_property
    def categorical(self) -> list[CategoricalFeature]:
        """Categorical features in `cat` column order."""
        return [f for f in self.features if isinstance(f, CategoricalFeature)]

    @property
    def n_outputs(self) -> int:
        """Width of the ONNX output."""
        return 1 if self.task == "regression" else len(self.labels)

    def label_index(self, out: np.ndarray) -> np.ndarray:
        """Index into `labels` of each row's predicted label: the saved threshold on the positive
        class (binary; 0.5 if none was saved) or the most probable class (multiclass)."""
        if self.task == "binary":
            t = self.threshold if self.threshold is not None else 0.5
            # compared in float64, as the answers show the probability (a float32 vs a Python
            # float would compare in float32 under NumPy 2 and could flip a row at the threshold)
            return (out[:, 1].astype(np.float64) >= t).astype(np.intp)
        return np.asarray(out.argmax(axis=1), dtype=np.intp)

    def labels_for(self, out: np.ndarray) -> list[Label]:
        """Predicted labels from class probabilities (the rule of `label_index`)."""
        if self.task == "binary" and len(out) <= 64:  # a request's rows: no numpy call
            return self.binary_labels(out[:, 1].tolist())
        return [self.labels[i] for i in self.label_index(out).tolist()]

    def binary_labels(self, probabilities: list[float]) -> list[Label]:
        """Binary labels from positive-class probabilities as Python floats (the rule of `label_index`)."""
        t = self.threshold if self.threshold is not None else 0.5
        neg, pos = self.labels[0], self.labels[1]
        return [pos if p >= t else neg for p in probabilities]

    def encode_columns(self, columns: Mapping[str, Sequence[Any]], n_rows: int) -> Encoded:
        """Column-wise raw values → `num` float32[N, n_num] and `cat` int64[N, n_cat]; an absent
        column is all missing."""
        enc = Encoded(
            num=np.empty((n_rows, len(self.numeric)), dtype=np.float32),
            cat=np.zeros((n_rows, len(self.categorical)), dtype=np.int64),
        )
        # every column's text parsed before any range is checked: a record's first error is then
        # the same whether its values are encoded by column or by record (service/encoders.py)
        parsers = self.parsers or [parse_number] * len(self.numeric)
        parsed = [
            parse_column(f.name, columns.get(f.name), enc, p, f.date is not None)
            for f, p in zip(self.numeric, parsers, strict=True)
        ]
        for j, (feat, values) in enumerate(zip(self.numeric, parsed, strict=True)):
            enc.num[:, j] = encode_numeric(feat.name, values, n_rows, enc)
        for j, cfeat in enumerate(self.categorical):
            enc.cat[:, j] = encode_categorical(cfeat, columns.get(cfeat.name), n_rows, enc)
        self.check_ranges(enc)
        return enc

    def encode_records(self, records: Sequence[Mapping[str, Any]]) -> Encoded:
        """JSON-style records → model inputs: the records as columns (absent or null fields are
        missing), then `check_absent`. The reference the speed encoders (service/encoders.py) match."""
        columns = {name: [r.get(name) for r in records] for name in self.kinds}
        enc = self.encode_columns(columns, len(records))
        self.check_absent(records, enc)
        return enc

    def check_absent(self, records: Sequence[Mapping[str, Any]], enc: Encoded) -> None:
        """Absent features are imputed like nulls, except where that is surely a client mistake: a
        record with none of the features is an error; then `check_lookalikes`."""
        kinds, known = self.kinds, self.known_fields
        for row, record in enumerate(records):
            if any(name in record for name in kinds):
                continue
            ignored = [key for key in record if key not in known]
            sent = f"; it has only {', '.join(map(shown, ignored[:10]))}" if ignored else ""
            reason = f"none of the model's {len(kinds)} features is present{sent}"
            enc.errors[row] = EncodingError(row, None, reason)  # said more exactly than check_known
        self.check_lookalikes(records, enc)

    def check_lookalikes(self, records: Sequence[Mapping[str, Any]], enc: Encoded) -> None:
        """A feature with no value (absent, null or blank) beside an ignored field with one that looks
        like it (`Tenure` for `tenure`) gets a "did you mean" warning; a file's row the same
        (service/scoring/local.py)."""
        kinds, known = self.kinds, self.known_fields
        for row, record in enumerate(records):
            if row in enc.errors:
                continue
            ignored = [key for key, value in record.items() if key not in known and has_value(value)]
            for name in kinds if ignored else ():
                guess = None if has_value(record.get(name)) else near_miss(name, ignored)
                if guess is not None:
                    self.warn_lookalike(enc, row, name, guess)

    @staticmethod
    def warn_lookalike(enc: Encoded, row: int, name: str, guess: str) -> None:
        """The "did you mean" warning of a record whose feature is missing beside a look-alike field."""
        enc.warn(
            row,
            f"field {shown(guess)} is not a feature and was ignored: did you mean {name!r}? "
            f"'{name}' has no value and was scored as missing",
            name,
            "lookalike_field",
        )

    def lookalikes(self, fields: Sequence[str]) -> dict[str, list[str]]:
        """Each feature's look-alikes among fields that are neither features nor ids (a table's
        columns): every one `near_miss` could answer, as a row's values decide which it does."""
        ignored = [f for f in fields if f not in self.known_fields]
        found = {name: [f for f in ignored if near_miss(name, [f]) is not None] for name in self.kinds}
        return {name: fields for name, fields in found.items() if fields}

    def missing_columns(self, columns: Sequence[str], header: bool = True) -> str | None:
        """Why a table with these columns cannot be scored (None: it has every feature): the ones it
        lacks, with the look-alike each was probably meant to be (a file's `header` line: or that it
        is not the first line)."""
        names = [f.name for f in self.features]
        missing = [n for n in names if n not in columns]
        if not missing:
            return None
        unused = [c for c in columns if c not in names]
        guesses = {n: near_miss(n, unused) for n in missing}
        hints = "; ".join(f"is {g!r} meant to be {n!r}?" for n, g in guesses.items() if g is not None)
        if header and len(missing) == len(names) and len(columns) < len(names):  # e.g. a report's title line
            hints = f"its header reads {', '.join(columns)[:80]!r}: is the header the first line?"
        return f"input is missing {len(missing)} column(s) the model needs: {', '.join(missing)}" + (
            f" ({hints})" if hints else ""
        )

    @cached_property
    def known_fields(self) -> frozenset[str]:
        """Feature and id column names: the fields of a record that are not ignored."""
        return frozenset([*self.kinds, *self.id_columns])

    def check_known(self, enc: Encoded) -> None:
        """A record whose every feature is blank or null is an error: its score would be the
        all-median record's, whoever it is (`{}` is refused the same way, by check_absent). One with
        an unseen level is scored, its warning saying so."""
        first = np.isnan(enc.num[:, 0]) if enc.num.shape[1] else enc.cat[:, 0] == 0  # one column rules most out
        rows = np.flatnonzero(first)
        if not len(rows):
            return
        empty = np.isnan(enc.num[rows]).all(axis=1) & (enc.cat[rows] == 0).all(axis=1)  # code 0: missing or unseen
        for row in rows[empty].tolist():
            if row not in enc.warnings:
                enc.errors.setdefault(row, EncodingError(row, None, NOTHING_KNOWN))

    def check_ranges(self, enc: Encoded) -> None:
        """A per-record warning for each numeric value outside the range seen in training (the
        model extrapolates there); compared in float32, as the model sees the values. Then
        check_known."""
        self.check_known(enc)
        lo, hi = self.ranges
        low, high = enc.num < lo, enc.num > hi  # NaN is neither
        if not (low.any() or high.any()):
            return
        below, above = self.range_messages
        for i, j in zip(*np.nonzero(low | high), strict=True):
            enc.warn(int(i), below[j] if low[i, j] else above[j], self.numeric[j].name, "out_of_range")

    @cached_property
    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """The smallest and largest value of each numeric feature seen in training, as float32 (one past
        its range: ±inf, while training refuses that value's row by name)."""
        with np.errstate(over="ignore"):
            return (
                np.array([f.min_ for f in self.numeric], dtype=np.float32),
                np.array([f.max_ for f in self.numeric], dtype=np.float32),
            )

    @cached_property
    def range_messages(self) -> tuple[list[str], list[str]]:
        """The out-of-range warnings of each numeric feature: (below, above)."""
        below = [
            f"field '{f.name}': after the latest date seen in training ({f.date.at(f.min_)})"
            if f.date is not None  # the value is an age in days: a small age is a late date
            else f"field '{f.name}': below the smallest value seen in training ({f.min_:g})"
            for f in self.numeric
        ]
        above = [
            f"field '{f.name}': before the earliest date seen in training ({f.date.at(f.max_)})"
            if f.date is not None
            else f"field '{f.name}': above the largest value seen in training ({f.max_:g})"
            for f in self.numeric
        ]
        return below, above

    def too_far(self, num: np.ndarray, to: str = "score") -> str:
        """Why a row's outputs (or effects) are not numbers: its numeric value the most standard
        deviations from training's mean, named with training's range (a value near float32's limit
        overflows inside)."""
        return self.farthest(num, to)[1]

    def farthest(self, num: np.ndarray, to: str = "score") -> tuple[str | None, str]:
        """`too_far`, with the field it names (None: no numeric value to blame)."""
        if not self.numeric or np.isnan(num).all():
            return None, f"its values are too far from training's to {to}"
        mean, std = (np.array([getattr(f, k) for f in self.numeric]) for k in ("mean_", "std_"))
        j = int(np.nanargmax(np.abs(num.astype(np.float64) - mean) / std))
        f = self.numeric[j]
        return (
            f.name,
            f"field '{f.name}': {num[j]:g} is too far from training's values ({f.min_:g} to {f.max_:g}) to {to}",
        )

    def to_json(self) -> dict[str, Any]:
        """The preprocess.json document."""
        return {
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "target": self.target,
            "labels": self.labels,
            "positive": self.positive,
            "threshold": self.threshold,
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "id_columns": self.id_columns,
            "features": [f.to_json() for f in self.features],
            "read": self.read.to_json(),
            "columns": self.columns,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Preprocess:
        """Parse a preprocess.json document (refuses unknown format versions)."""
        if doc.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported preprocess format_version {doc.get('format_version')!r}")
        task, positive, threshold = doc["task"], doc.get("positive"), doc.get("threshold")
        # checked, not trusted: a hand-edited `"labels": "NY"` served classes N and Y, `"task": "foo"` a regression
        if task not in ("binary", "multiclass", "regression"):
            raise ValueError(f"task is binary, multiclass or regression, not {task!r}")
        labels: list[Label] = _listed(doc, "labels", (str, int, float, bool))
        if positive is not None and positive not in labels:
            raise ValueError(f"positive {positive!r} is not one of the labels {labels}")
        if threshold is not None and (type(threshold) not in (int, float) or not 0 <= threshold <= 1):
            raise ValueError(f"threshold is a number from 0 to 1, not {threshold!r}")
        return cls(
            task=task,
            target=doc["target"],
            labels=labels,
            features=[_feature_from_json(f) for f in doc["features"]],
            id_columns=_texts(doc, "id_columns"),
            positive=positive,
            threshold=threshold,
            target_mean=float(doc.get("target_mean", 0.0)),
            target_std=float(doc.get("target_std", 1.0)),
            read=Reading.from_json(doc.get("read")),
            columns=list(doc.get("columns", [])),
        )

    def save(self, path: Path) -> None:
        """Write preprocess.json."""
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Preprocess:
        """Read preprocess.json."""
        return cls.from_json(json.loads(path.read_text()))


def _feature_from_json(doc: Mapping[str, Any]) -> Feature:
    if doc["kind"] == "numeric":
        date = doc.get("date")
        return NumericFeature(
            doc["name"],
            float(doc["mean"]),
            float(doc["std"]),
            float(doc["median"]),
            float(doc["min"]),
            float(doc["max"]),
            unit=str(doc.get("unit", "")),
            date=DateParse(date["reference"], date.get("format", "iso")) if date else None,
            knots=tuple(float(k) for k in doc.get("knots", ())),
            bins=tuple(float(k) for k in doc.get("bins", ())),
            cycles=tuple(str(c) for c in doc.get("cycles", ())),
            missing_=float(doc.get("missing", 0.0)),
        )
    if doc["kind"] == "categorical":
        return CategoricalFeature(doc["name"], tuple(_texts(doc, "vocab")), fold=doc.get("match") == "casefold")
    raise ValueError(f"unknown feature kind {doc['kind']!r}")


def _texts(doc: Mapping[str, Any], key: str) -> list[str]:
    """`doc[key]`, a list of text (absent: empty); a string is refused, not read as its letters."""
    return _listed(doc, key, (str,))


def _listed(doc: Mapping[str, Any], key: str, kinds: tuple[type, ...]) -> list[Any]:
    """`doc[key]`, a list of values of `kinds` (absent: empty)."""
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, kinds) for v in value):
        raise ValueError(f"{key} is a list of {'text' if kinds == (str,) else 'values'}, not {shown(value)}")
    return value


_PLAIN_NUMBER_TYPES = frozenset({float, int, type(None)})
F32_MAX = float(np.finfo(np.float32).max)


def _number(row: int, name: str, value: Any, enc: Encoded, parse: Callable[[Any], float] = parse_number) -> float:
    try:
        return parse(value)
    except ValueError as exc:
        enc.errors.setdefault(row, EncodingError(row, name, str(exc)))
        return math.nan


def level_code(row: int, feat: CategoricalFeature, value: Any, enc: Encoded) -> int:
    """One raw level → its code (0: missing, or unseen with a warning; an error if not a level)."""
    try:
        key = category_key(value)
    except ValueError as exc:
        enc.errors.setdefault(row, EncodingError(row, feat.name, str(exc)))
        return 0
    if key is None:
        return 0
    found = feat.code_of(key)
    if found == 0:
        enc.warn(row, f"field '{feat.name}': unseen level {shown(key)} scored as missing", feat.name, "unseen_level")
    return found


def codes_of(
    flat: Sequence[Any], feats: list[CategoricalFeature], indexes: list[dict[str, int]], enc: Encoded
) -> np.ndarray:
    """Row-major raw levels → vocabulary indices (0: missing or unseen, with a warning)."""
    try:
        codes = list(map(dict.get, itertools.cycle(indexes), flat))
    except TypeError:  # an unhashable value (a list or an object) somewhere
        codes = [None] * len(flat)
    try:
        return np.array(codes, dtype=np.int64)
    except TypeError:  # a None (missing, unseen, not a level); cheaper than `None in codes`
        pass
    k = len(feats)
    codes = [c if c is not None else level_code(p // k, feats[p % k], flat[p], enc) for p, c in enumerate(codes)]
    return np.array(codes, dtype=np.int64)


def _float_matrix(flat: Sequence[Any]) -> np.ndarray:
    try:
        return np.array(flat, dtype=np.float64)
    except OverflowError:  # an int beyond float range; as inf it becomes an error below
        return np.array([_clamp(v) for v in flat], dtype=np.float64)


def _clamp(value: Any) -> float:
    try:
        return math.nan if value is None else float(value)
    except OverflowError:
        return math.inf


def parse_column(
    name: str,
    values: Sequence[Any] | np.ndarray | None,
    enc: Encoded,
    parse: Callable[[Any], float] = parse_number,
    every: bool = False,
) -> Sequence[Any] | np.ndarray | None:
    """A column with its text, booleans and objects parsed (errors recorded); numbers, NaN and None
    as they are, unless `every` value must be parsed (a date column)."""
    if values is None or (not every and isinstance(values, np.ndarray) and values.dtype.kind in "fiu"):
        return values
    flat = values.tolist() if isinstance(values, np.ndarray) else values if isinstance(values, list) else list(values)
    return numbers_parsed([name], flat, enc, [parse], every)


def encode_numeric(
    name: str,
    values: Sequence[Any] | np.ndarray | None,
    n: int,
    enc: Encoded,
    parse: Callable[[Any], float] | None = None,
) -> np.ndarray:
    """One column of raw numeric values → float32[n]; None (absent column) is all missing."""
    if values is None:
        return np.full(n, np.nan, dtype=np.float32)
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiu" and not isinstance(parse, DateParse):
        return _finite_or_errors([name], values.astype(np.float64).reshape(n, 1), enc)[:, 0]
    flat = values.tolist() if isinstance(values, np.ndarray) else values if isinstance(values, list) else list(values)
    return numbers_of([name], flat, n, enc, None if parse is None else [parse])[:, 0]


def numbers_parsed(
    names: list[str],
    flat: Sequence[Any],
    enc: Encoded,
    parsers: list[Callable[[Any], float]] | None = None,
    every: bool = False,
) -> Sequence[Any]:
    """Row-major raw values with every one that is not a number or None parsed (by `parsers`, one
    per name; default parse_number); with `every`, numbers too (dates are never plain numbers)."""
    k = len(names)
    strict = [every or isinstance(parse, DateParse) for parse in parsers] if parsers else [every] * k
    if not any(strict) and set(map(type, flat)) <= _PLAIN_NUMBER_TYPES:
        return flat
    if parsers is None:
        return [
            v if type(v) in _PLAIN_NUMBER_TYPES else _number(p // k, names[p % k], v, enc) for p, v in enumerate(flat)
        ]
    return [
        v
        if type(v) in _PLAIN_NUMBER_TYPES and not strict[p % k]
        else _number(p // k, names[p % k], v, enc, parsers[p % k])
        for p, v in enumerate(flat)
    ]


def numbers_of(
    names: list[str], flat: Sequence[Any], n: int, enc: Encoded, parsers: list[Callable[[Any], float]] | None = None
) -> np.ndarray:
    """Row-major raw values → float32 [n, k]: parsed, then values beyond float32 are errors."""
    return _float32(names, numbers_parsed(names, flat, enc, parsers), n, enc)


def _float32(names: list[str], flat: Sequence[Any], n: int, enc: Encoded) -> np.ndarray:
    """Row-major numbers (None = missing) → float32 [n, k]; values beyond float32 become errors."""
    # for request-sized inputs a Python range check is cheaper than three numpy calls
    if len(flat) <= 64 and all(v is None or -F32_MAX <= v <= F32_MAX for v in flat):
        return np.array(flat, dtype=np.float32).reshape(n, len(names))
    return _finite_or_errors(names, _float_matrix(flat).reshape(n, len(names)), enc)


def _finite_or_errors(names: list[str], values: np.ndarray, enc: Encoded) -> np.ndarray:
    """float64 [N, k] → float32, recording ±inf (or values too large for float32) as errors."""
    too_big = np.abs(values) > F32_MAX  # NaN compares False: missing values pass
    if not too_big.any():
        return values.astype(np.float32)
    for i, j in zip(*np.nonzero(too_big), strict=True):
        value = float(values[i, j])
        within = "" if math.isinf(value) else " within float32's range"
        reason = f"expected a finite number{within}, got {value!r}"
        enc.errors.setdefault(int(i), EncodingError(int(i), names[j], reason))
    values = values.copy()
    values[too_big] = np.nan
    return values.astype(np.float32)


def encode_categorical(feat: CategoricalFeature, values: Sequence[Any] | None, n: int, enc: Encoded) -> np.ndarray:
    """One column of raw levels → int64[n] codes; None (absent column) is all missing."""
    if values is None:
        return np.zeros(n, dtype=np.int64)
    return codes_of(list(values), [feat], [feat.index_], enc)
