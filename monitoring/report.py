"""The log read in place with DuckDB: labelled predictions, the export for retraining, and
`tabserve monitor`'s figures (PSI per feature per period, live metrics per period).

Every query reads `<root>/<model>/date=*/*.parquet` and the open segments (predictions) and
`<root>/<model>/feedback/date=*/*.parquet` (outcomes); the SQL is plain enough to reuse by hand.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from monitoring.accuracy import calibration, finite, metrics_of, truth_of
from monitoring.feedback import FEEDBACK, feedback_files, outputs_of
from monitoring.log import OWN_COLUMNS, LogLocation, logged_parts
from service import bundle
from service.atomic import written_whole
from service.drift import FEW_ROWS, NO_ROWS, population_stability, psi_noise, reading
from service.features import CategoricalFeature, DateParse, NumericFeature, Preprocess

PERIODS = {"day": "day", "week": "week", "hour": "hour"}


def quoted(name: str) -> str:
    """A column name as SQL quotes it."""
    return '"' + name.replace('"', '""') + '"'


class LogReader:
    """One model's log as DuckDB views: `predictions`, `feedback` and `labelled` (the `date=` folders
    are not read as a column: a join on them would pair only same-day outcomes)."""

    def __init__(self, root: str | Path, model: str, ids: list[str] | None = None, threads: int = 0) -> None:
        self.location, self.model = LogLocation.of(root), model
        if not self.location.local:
            raise ValueError(
                "tabserve monitor and log export read a local log folder (DuckDB's httpfs reads object stores)"
            )
        # DuckDB sizes itself by the host's cores, not the affinity mask or quota: `threads`, the CPU budget
        self.db = duckdb.connect(config={"threads": threads} if threads else {})
        self.db.execute("SET TimeZone = 'UTC'")  # periods are UTC days, as the date= folders, wherever it runs
        base = Path(self.location.root) / model
        self.db.execute(f"CREATE VIEW predictions AS {self._predictions_sql()}")
        feedback = feedback_files(self.location, model)  # one cut short is set aside, out of the view's glob
        self.ids = ids if ids is not None else self._ids(feedback)
        self.has_feedback = bool(feedback)
        if self.has_feedback:
            self.db.execute(
                f"CREATE VIEW feedback AS SELECT * FROM read_parquet('{base}/{FEEDBACK}/date=*/*.parquet', union_by_name = true, hive_partitioning = false)"
            )
            rows = "_row" in self._columns("predictions")  # a log written by hand may lack it
            self.db.execute(f"CREATE VIEW labelled AS {labelled_sql(self.ids, rows)}")

    def _predictions_sql(self) -> str:
        """The Parquet files and the open segments (what the server has written but not yet rotated
        into Parquet), read as the feedback path reads them: each row once."""
        segments, files = logged_parts(self.location, self.model)
        if not segments and not files:
            raise ValueError(f"no prediction log for {self.model} under {self.location.root}: nothing scored yet")
        parts = []
        if files:
            listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            parts.append(f"SELECT * FROM read_parquet([{listed}], union_by_name = true, hive_partitioning = false)")
        if segments:
            self.db.register(
                "open_segments", as_parquet_reads(pa.concat_tables(segments, promote_options="permissive"))
            )
            parts.append("SELECT * FROM open_segments")
        return " UNION ALL BY NAME ".join(parts)

    def _ids(self, files: list[str]) -> list[str]:
        """The id columns: those the feedback `files` key on (every column of theirs but its own: an id
        may start with _, as MongoDB's `_id` does)."""
        if not files:
            return []
        names = self.table(f"SELECT * FROM read_parquet('{files[0]}', hive_partitioning = false) LIMIT 0").column_names
        return [n for n in names if n not in OWN_COLUMNS]

    def export(self, output: Path, labelled: bool, store: Path | None = None) -> int:
        """The logged records (with `labelled`: those with an outcome, the outcome under the target's
        name) in the original schema, to Parquet or CSV by extension; the rows written. A date feature
        is written as the date it was (the log holds its age at its version's reference date, found in
        `store`): a model retrained on the export reads it as a date again."""
        if output.suffix.lower() not in (".parquet", ".csv") or output.is_dir():
            raise ValueError(f"--output {output}: name a .parquet or .csv file (it is written as its name says)")
        written = self.check_output(output, "--output")  # before any work
        dates = self._dates(store) if store is not None else {}
        if labelled:
            if not self.has_feedback:
                raise ValueError(f"no feedback for {self.model} yet: nothing is labelled")
            target = self.db.execute("SELECT any_value(_target) FROM feedback").fetchall()[0][0]
            names = [n for n in self._columns("labelled") if n not in OWN_COLUMNS]
            cells = [f"{dates[n]} AS {quoted(n)}" if n in dates else quoted(n) for n in names]
            select = ", ".join([*cells, f"_outcome AS {quoted(target)}"])
            query = f"SELECT {select} FROM labelled ORDER BY _at"
        else:
            replaced = ", ".join(f"{sql} AS {quoted(n)}" for n, sql in dates.items())
            query = f"SELECT * {f'REPLACE ({replaced}) ' if dates else ''}FROM predictions ORDER BY _at"
        kind = "CSV, HEADER" if output.suffix.lower() == ".csv" else "PARQUET"
        with written_whole(written) as tmp:  # killed half-way, a valid-looking file cut short would be retrained on
            target = str(tmp).replace("'", "''")  # a quote in the name stays part of it
            try:  # COPY answers the rows it wrote (counted again, the query would see what was logged since)
                written_rows = self.db.execute(f"COPY ({query}) TO '{target}' (FORMAT {kind})").fetchall()
            except duckdb.Error as exc:  # a full disk is a duckdb.IOException, not an OSError
                reason = _reason(exc).replace(str(tmp), str(output))
                raise ValueError(f"--output {output}: cannot write it ({reason})") from None
        return int(written_rows[0][0])

    def check_output(self, output: Path, flag: str) -> Path:
        """Where to write `output` (a link: the file it names), its folder made; refused inside the
        model's folder of the log (it would be read as logged rows, or replace a log file) or where
        this user cannot write."""
        logged = Path(os.path.realpath(self.location.root)) / self.model  # where the model's rows are read from
        written = Path(os.path.realpath(output))
        if written.is_relative_to(logged):
            raise ValueError(f"{flag} {output} is inside the log's {self.model}/: it would be read as logged rows")
        try:
            written.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"{flag} {output}: cannot make the folder {written.parent} ({exc.strerror})") from None
        if not os.access(written.parent, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {output}: {written.parent} is not writable by this user")
        return written

    def _dates(self, store: Path) -> dict[str, str]:
        """Each logged date feature → SQL for the date its age counts back from, written as its version
        read it (`31.05.2024` stays so: a retrained model then reads the same files)."""
        dates: dict[str, dict[int, DateParse]] = {}
        missing = []
        logged = self._columns("predictions")
        for (version,) in self.db.execute("SELECT DISTINCT _version FROM predictions ORDER BY 1").fetchall():
            folders = [store / self.model / f"{version}{suffix}" for suffix in ("", bundle.RETIRED_SUFFIX)]
            found = next((p for p in folders if (p / bundle.PREPROCESS_FILE).is_file()), None)
            if found is None:
                missing.append(version)
                continue
            for feature in Preprocess.load(found / bundle.PREPROCESS_FILE).numeric:
                if feature.date is not None and feature.name in logged:
                    dates.setdefault(feature.name, {})[version] = feature.date
        if missing and dates:
            raise ValueError(
                f"{self.model} version(s) {', '.join(map(str, missing))} are not in {store} (--models-dir): their "
                f"dates ({', '.join(dates)}) cannot be written back from the ages logged"
            )
        return {name: _date_sql(name, by_version) for name, by_version in dates.items()}

    def _columns(self, view: str) -> list[str]:
        return list(self.table(f"SELECT * FROM {view} LIMIT 0").column_names)

    def table(self, query: str) -> pa.Table:
        """A query's answer as an Arrow table."""
        result: pa.Table = self.db.sql(query).to_arrow_table()
        return result


@contextmanager
def readable(root: str | Path, model: str) -> Iterator[None]:
    """DuckDB's error for a file of the log it cannot read as a ValueError naming the file and what
    to do (not Parquet or cut short: move it out; not readable by this user); any other error as it was."""
    try:
        yield
    except (duckdb.InvalidInputException, duckdb.IOException) as exc:
        location = LogLocation.of(root)
        files = [*location.files(model), *location.files(model, FEEDBACK)]
        named = [f for f in re.findall(r"'([^']+)'", str(exc)) if f in files]
        found = named[0] if named else next((f for f in files if _fault(f) is not None), None)
        if found is None:
            raise
        fault = _fault(found)
        if isinstance(fault, PermissionError):
            raise ValueError(f"cannot read {found}: not readable by this user") from None
        if isinstance(fault, OSError):  # an I/O error: no advice about the file's contents
            raise ValueError(f"cannot read {found}: {fault.strerror or fault}") from None
        reason = _reason(exc).replace(f" '{found}'", "")
        raise ValueError(
            f"cannot read {found} as Parquet ({reason}): a file the log did not write, or one cut short; "
            f"move it out of {root} and run again"
        ) from None


def _reason(exc: duckdb.Error) -> str:
    """DuckDB's message in one line: its first, less the error's kind, or the message of the JSON
    detail it may carry (`Async write failed …: {"exception_message": …}`)."""
    line = re.sub(r"^[\w ]*Error: ", "", str(exc).splitlines()[0])
    with suppress(ValueError, KeyError, TypeError):
        return str(json.loads(line[line.index("{") :])["exception_message"])
    return line


def _fault(path: str) -> Exception | None:
    """What reading a Parquet file's footer raises: an OSError (permission, I/O), Arrow's error (not
    Parquet, cut short), or None where it reads."""
    try:
        pq.read_metadata(path)
    except (OSError, pa.ArrowException) as exc:
        return exc
    return None


def as_parquet_reads(table: pa.Table) -> pa.Table:
    """A segment's columns as DuckDB reads them back from Parquet (a fixed-size list is a list there)."""
    fields = [
        pa.field(f.name, pa.list_(f.type.value_type)) if pa.types.is_fixed_size_list(f.type) else f
        for f in table.schema
    ]
    return table.cast(pa.schema(fields))


def _date_sql(name: str, by_version: dict[int, DateParse]) -> str:
    """The date a logged age counts back from, as text in its version's format (ISO: a date, or a date
    and time where it has one). The age is float32 (about 10 s over years): it is rounded to the
    format's finest unit, so `18:45` is not written back as `18:44`."""
    texts = []
    for version, date in by_version.items():
        fmt = date.fmt if date.fmt != "iso" else "%Y-%m-%d %H:%M:%S"
        # ISO seconds are below float32's resolution at ages of years: the minute is what is kept
        unit = (
            "second"
            if "%S" in fmt and date.fmt != "iso"
            else "minute"
            if "%M" in fmt
            else "hour"
            if "%H" in fmt or "%I" in fmt
            else "day"
        )
        half = {"second": 500_000, "minute": 30_000_000, "hour": 1_800_000_000, "day": 43_200_000_000}[unit]
        micros = f"CAST(round({quoted(name)} * 86400e6) AS BIGINT)"
        at = f"date_trunc('{unit}', TIMESTAMP '{date.reference_.isoformat(sep=' ')}' - to_microseconds({micros} - {half}))"
        if date.fmt == "iso":
            text = f"CASE WHEN {at} = date_trunc('day', {at}) THEN strftime({at}, '%Y-%m-%d') ELSE strftime({at}, '{fmt}') END"
        else:
            text = f"strftime({at}, '{fmt.replace(chr(39), chr(39) * 2)}')"
        texts.append(f"WHEN {version} THEN {text}")
    # a version that read the column as a number (or no date) writes its number
    return f"CASE _version {' '.join(texts)} ELSE CAST({quoted(name)} AS VARCHAR) END"


def labelled_sql(ids: list[str], rows: bool = True) -> str:
    """Each id's latest outcome joined to its latest prediction logged before it (monitoring/feedback.py's
    rule; a request's rows share `_at`: with `rows`, the later row of a request is the later prediction)."""
    keys = ", ".join(map(quoted, ids))
    later = ", p._row DESC" if rows else ""
    return f"""
        WITH outcome AS (
            SELECT {keys}, _outcome, _target, _at AS _labelled_at FROM feedback
            QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY _at DESC) = 1
        )
        SELECT p.*, outcome._outcome, outcome._target, outcome._labelled_at
        FROM predictions p JOIN outcome USING ({keys})
        WHERE p._at <= outcome._labelled_at
        QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY p._at DESC{later}) = 1
    """


@dataclass
class Report:
    """What `tabserve monitor` shows: PSI per feature per period, rows, live metrics per period."""

    model: str
    version: int
    periods: list[str]
    rows: list[int]
    psi: dict[str, list[float]]  # field (and "score") → PSI per period
    missing: dict[str, list[float]]  # numeric field → missing share per period
    score_shares: list[float]  # the score's bin shares over the whole range
    score_reference: list[float]
    score_edges: list[float]
    live: list[dict[str, Any]] = field(default_factory=list)  # per period with outcomes: metrics
    calibration: list[dict[str, float]] = field(default_factory=list)  # whole range (binary)
    training: dict[str, Any] = field(default_factory=dict)
    other_versions: dict[int, int] = field(default_factory=dict)  # version → its rows in the span, left out
    noise: dict[str, list[float]] = field(default_factory=dict)  # field → psi_noise per period (its rows, its bins)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON, with each PSI's usual reading (a non-finite figure: null)."""
        doc = dict(vars(self))
        doc["readings"] = {name: self.readings(name) for name in self.psi}
        doc["status"] = NO_ROWS if self.empty else "ok"
        return dict(finite(doc))

    def readings(self, name: str) -> list[str]:
        """Each period's reading of a field's PSI: too few rows where noise alone would pass 0.1."""
        noise = self.noise.get(name) or [0.0] * len(self.psi[name])  # none given: each PSI read as it is
        return [reading(v, n) for v, n in zip(self.psi[name], noise, strict=True)]

    def moved(self, name: str, last: int = 0) -> float:
        """A field's largest PSI over the periods with rows enough to tell (the last `last`; 0: all):
        how the table and the page put the fields that moved most first."""
        periods = list(zip(self.psi[name], self.readings(name), strict=True))[-last:]  # [-0:]: all
        return max((v for v, r in periods if r != FEW_ROWS), default=0.0)

    @property
    def empty(self) -> bool:
        """No row logged in the span: nothing to compare, so no verdict."""
        return not sum(self.rows)


def build_report(reader: LogReader, ref: bundle.BundleRef, since: str | None, by: str) -> Report:
    """PSI of every logged feature and of the score against the bundle's training reference, per
    period, and the live metrics of the labelled predictions per period."""
    pre = ref.preprocess
    if not (ref.path / bundle.DRIFT_FILE).is_file():
        raise ValueError(
            f"{ref.name} version {ref.version} has no {bundle.DRIFT_FILE}: retrain it for drift monitoring"
        )
    reference = json.loads((ref.path / bundle.DRIFT_FILE).read_text())
    ago = interval(since) if since else None
    span = f"_at >= now() - INTERVAL '{ago}'" if ago else "true"
    present = set(reader._columns("predictions"))
    # this version's rows only: its training is the reference, and a canary's or a former champion's
    # scores are another model's (their own reports: name@version)
    others = dict(
        reader.db.sql(f"SELECT _version, count(*) FROM predictions WHERE {span} GROUP BY _version").fetchall()
    )
    where = f"WHERE {span} AND _version = {int(ref.version)}"
    bins, expected = [], {}
    for feat in pre.features:
        if feat.name in present:
            bins.append((feat.name, bin_sql(feat, reference["features"][feat.name])))
            expected[feat.name] = np.asarray(reference["features"][feat.name]["shares"])
    score_edges = reference["score"]["edges"]
    bins.append(("score", numeric_bins(score_sql(pre), score_edges)))
    expected["score"] = np.asarray(reference["score"]["shares"])
    periods, counts = bin_counts(reader, [sql for _, sql in bins], [len(expected[n]) for n, _ in bins], by, where)
    report = Report(ref.name, ref.version, periods, [], {}, {}, [], [], score_edges)
    report.other_versions = {int(v): int(n) for v, n in sorted(others.items()) if v != ref.version}
    report.rows = counts[-1].sum(axis=1).tolist()
    totals = {}
    for j, (name, _) in enumerate(bins):
        report.psi[name] = [population_stability(c, expected[name]) for c in counts[j]]
        report.noise[name] = [psi_noise(expected[name], int(c.sum())) for c in counts[j]]
        totals[name] = counts[j].sum(axis=0)
        if pre.kinds.get(name) == "numeric":
            report.missing[name] = [float(c[-1] / max(c.sum(), 1)) for c in counts[j]]
    whole = totals["score"]
    report.score_shares = (whole / whole.sum()).tolist() if whole.sum() else []  # none, not all zero
    report.score_reference = expected["score"].tolist()
    report.training = {"test": ref.metrics.get("test"), "positive_rate": ref.metrics.get("positive_rate")}
    if reader.has_feedback:
        live_by_period(reader, pre, f"date_trunc('{PERIODS[by]}', _at)", where, report)
    return report


def bin_counts(
    reader: LogReader, bins: list[str], sizes: list[int], by: str, where: str
) -> tuple[list[str], list[np.ndarray]]:
    """The periods and, per bin expression, its counts per (period, bin): one scan, a grouping set each."""
    picked = ", ".join(f"{sql}::INTEGER AS b{j}" for j, sql in enumerate(bins))
    names = ", ".join(f"b{j}" for j in range(len(bins)))
    sets = ", ".join(f"(period, b{j})" for j in range(len(bins)))
    found = reader.db.sql(
        f"SELECT period, {names}, count(*) FROM "
        f"(SELECT strftime(date_trunc('{PERIODS[by]}', _at), '%Y-%m-%d %H:%M') AS period, {picked} "
        f"FROM predictions {where}) GROUP BY GROUPING SETS ({sets})"
    ).fetchall()
    periods = sorted({row[0] for row in found})
    at = {p: i for i, p in enumerate(periods)}
    counts = [np.zeros((len(periods), size), np.int64) for size in sizes]
    for row in found:
        j = next(j for j, b in enumerate(row[1:-1]) if b is not None)  # the one field of this grouping set
        counts[j][at[row[0]], min(row[1 + j], sizes[j] - 1)] += row[-1]
    return periods, counts


def live_by_period(reader: LogReader, pre: Preprocess, period: str, where: str, report: Report) -> None:
    """The live metrics of each period's labelled predictions (and the whole range's calibration)."""
    outputs_sql = {"binary": "_probability", "multiclass": "_probabilities", "regression": "_value"}[pre.task]
    table = reader.table(
        f"SELECT strftime({period}, '%Y-%m-%d %H:%M') AS period, {outputs_sql}, _outcome FROM labelled {where} ORDER BY _at"
    )
    if not table.num_rows:
        return
    outputs, truth = outputs_of(pre, table), truth_of(pre, table.column("_outcome").to_pylist())
    periods = np.asarray(table.column("period").to_pylist())
    for name in dict.fromkeys(periods.tolist()):
        rows = periods == name
        report.live.append({"period": name, **metrics_of(pre, outputs[rows], truth[rows])})
    if pre.task == "binary":
        report.calibration = calibration(truth == 1, outputs[:, 1].astype(np.float64))


def bin_sql(feat: NumericFeature | CategoricalFeature, reference: dict[str, Any]) -> str:
    """A feature's bin, as service/drift.py counts it: numeric deciles (missing last), or the level's code."""
    if isinstance(feat, CategoricalFeature):
        levels = ", ".join("'" + v.replace("'", "''") + "'" for v in feat.vocab_)
        return f"coalesce(list_position([{levels}]::VARCHAR[], {quoted(feat.name)}), 0)"
    return numeric_bins(quoted(feat.name), reference["edges"], missing=True)


def numeric_bins(value: str, edges: list[float], missing: bool = False) -> str:
    """The count of edges at or below a value (numpy's searchsorted, side right); NaN or NULL after the last."""
    found = " + ".join(f"({value} >= {float(e)!r})::INTEGER" for e in edges) or "0"
    if not missing:
        return f"({found})"
    return f"CASE WHEN {value} IS NULL OR isnan({value}) THEN {len(edges) + 1} ELSE {found} END"


def score_sql(pre: Preprocess) -> str:
    """The watched score (service/drift.py's score_of) from the log's output columns."""
    if pre.task == "binary":
        return "_probability::DOUBLE"
    return "list_max(_probabilities)::DOUBLE" if pre.task == "multiclass" else "_value::DOUBLE"


SINCE_UNITS = {"m": ("minutes", 1), "h": ("hours", 60), "d": ("days", 1440), "w": ("weeks", 10080)}  # in minutes
WHOLE_LOG_MINUTES = 10_000 * 525_960  # a span over 10,000 years reads the whole log (DuckDB overflows far past it)


def interval(since: str) -> str | None:
    """`30d`, `12h`, `2w`, `90m` (minutes) → a DuckDB interval; None for a span longer than any log."""
    number, unit = since[:-1], since[-1:]
    if unit not in SINCE_UNITS or not (number.isascii() and number.isdigit()):
        raise ValueError(f"--since takes a whole number and a unit, m (minutes), h, d or w, such as 30d, not {since!r}")
    digits = number.lstrip("0")
    if not digits:
        raise ValueError(f"--since {since}: a span of 0 holds no rows; name a span of at least 1{unit}")
    if len(digits) > 12:  # far past the whole log, and past what int() reads beyond 4,300 digits
        return None
    name, minutes = SINCE_UNITS[unit]
    return f"{int(digits)} {name}" if int(digits) * minutes <= WHOLE_LOG_MINUTES else None
