"""Delayed labels: outcomes sent against the ids of logged predictions, stored beside the log as
`<root>/<model>/feedback/date=YYYY-MM-DD/*.parquet` (id columns, `_outcome`, `_target`, `_at`).

An outcome joins the latest prediction of its id logged before it; a later outcome for the same id
replaces an earlier one. That one rule serves the live window, `tabserve monitor` and the export.
"""

from __future__ import annotations

import csv
import fcntl
import io
import itertools
import logging
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from monitoring.log import LogLocation, day_of, logged_parts, text_of, write_whole
from service.errors import InputError
from service.features import (
    Preprocess,
    Reading,
    category_key,
    missing_outcomes,
    named_twice,
    parse_number,
    plain_number,
    stripped,
)
from service.protocols.base import EVERY_FIELD, parse_json
from service.scoring.files import LIMIT_TEXT, CsvSource, ScoringError, bom_encoding, sniff_sep

FEEDBACK = "feedback"
MAX_RECORDS = 100_000  # per request or file chunk: a bound on what one call holds in memory
COMPACT_FILES = 64  # a day's feedback files beyond which they are merged into one (`compact`)
MERGED_FILES = 8  # a day's merged files at which the next merge takes them in too: the day's file count is bounded
MERGED = "merged-"
READ_TRIES = 5  # listings of a day a reader tries while other workers merge it: each merge is rare
logger = logging.getLogger("tabserve.feedback")
_files = itertools.count()
_tag = secrets.token_hex(4)


@dataclass
class Labelled:
    """A prediction found in the log with the outcome that came back for it."""

    key: tuple[str, ...]
    version: int
    outputs: np.ndarray  # the model's outputs for the record, as the ONNX graph gave them
    outcome: str


@dataclass
class Stored:
    """What one submission did: rows stored, the predictions they label, the records refused, and the
    records that repeated an earlier record's id and outcome (stored once, by the earlier one)."""

    stored: int
    labelled: list[Labelled] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)


def records_of(body: bytes, media_type: str, limit: int | None = MAX_RECORDS) -> list[dict[str, Any]]:
    """Feedback records from a JSON body (`{"records": [...]}`) or a CSV one (a header, then rows);
    at most `limit` (a request's bound; the CLI submits a file in chunks)."""
    if media_type == "text/csv":
        records: Any = csv_records(body)
    elif media_type == "application/json":
        # a BOM, as Windows tools write; a key given twice refused by record (the last value won)
        doc = parse_json(body.removeprefix(b"\xef\xbb\xbf"), EVERY_FIELD)
        records = doc.get("records") if isinstance(doc, dict) else None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise InputError("malformed", 'body must be a JSON object with a "records" list of objects')
    else:
        raise InputError("malformed", f"Content-Type must be application/json or text/csv, not {media_type!r}")
    if not records:
        raise InputError("invalid", "no feedback records")
    if limit is not None and len(records) > limit:
        raise InputError("too_large", f"{len(records)} records in one call; the limit is {limit}")
    return list(records)


class NotUtf8(InputError):
    """A CSV that is not UTF-8; `bom` names the encoding its byte-order mark says (UTF-16), if any."""

    def __init__(self, where: str, bom: str | None = None) -> None:
        super().__init__("malformed", f"the CSV is not UTF-8 ({where}): save it as UTF-8")
        self.where, self.bom = where, bom


def csv_records(body: bytes) -> list[dict[str, Any]]:
    """A CSV's rows, every column as text (an id such as 007 or a label such as True stays as sent),
    under its header's names stripped (`customerID ` is `customerID`, as training and scoring read them)."""
    if bom := bom_encoding(body[:4]):  # Excel's "Unicode Text": its NUL bytes are no header at all
        raise NotUtf8(f"its byte-order mark says {bom}", bom)
    # a line ends in \n, \r\n or a bare \r (old Mac exports): that header was a 500 from csv.reader
    lines = re.split(rb"\r\n?|\n", body, maxsplit=1)
    header = _utf8(lines[0], body).removeprefix("\ufeff")
    sep = sniff_sep(header)  # `;` or tab as spreadsheets export them, as scoring and training read them
    try:
        names = stripped(next(csv.reader([header], delimiter=sep), []))
    except csv.Error as exc:  # a NUL byte: a 500 from csv.reader
        raise InputError("malformed", f"malformed CSV header: {exc}") from None
    if not names:
        raise InputError("invalid", "the CSV is empty: no header, no feedback records")
    twice = named_twice(names)
    if twice:  # which of the two holds the id or the outcome is a guess: refused, as scoring does
        raise InputError("malformed", f"column(s) named more than once in the CSV header: {', '.join(twice)}")
    try:  # on threads; a body that fails is read again, on one, by `_ragged` to number its bad rows
        table = pacsv.read_csv(
            io.BytesIO(body),
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
            parse_options=pacsv.ParseOptions(delimiter=sep, newlines_in_values=True),  # a quoted line break, as scoring
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string())),
        )
    except pa.ArrowInvalid as exc:
        _utf8(body, body)  # first, whatever else fails: another encoding is what is wrong with such a body
        raise _read_again(body, sep) or InputError("malformed", f"malformed CSV: {exc}") from None
    if b'"' in body and (error := _read_again(body, sep, parsed=True)):  # pyarrow reads a quote never closed to the end
        raise error
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


OVER_LIMIT = f"over the {LIMIT_TEXT} limit for one record"  # how scoring's reader words a record too long
UNCLOSED = 'a quote (") opened in this row is never closed: the rest of the CSV was read into it'


def _read_again(body: bytes, sep: str, parsed: bool = False) -> InputError | None:
    """What `tabserve score`'s reader finds wrong in a CSV (rows it cannot split, a quote never closed), each a
    detail numbered as it numbers rows (data rows from 0 here, blank lines not counted; pyarrow's `Row #` was not).
    A body pyarrow `parsed` is not refused for a record over scoring's size limit: only scoring has one."""
    try:
        source = CsvSource(io.BytesIO(body), name="the CSV", reading=Reading(sep=sep))
        rows = sum(batch.num_rows for batch in source.batches(source.columns))
    except ScoringError:  # a header scoring's reader cannot read either: pyarrow's words are all there is
        return None
    invalid = source.take_invalid()
    details: dict[int, dict[str, Any]] = {
        r: {"record": r, "field": None, "message": w.partition("\0")[0]} for r, w in invalid
    }
    if parsed:
        details = {r: d for r, d in details.items() if OVER_LIMIT not in d["message"]}
    if source.unclosed_quote:  # the last row read holds the rest of the body: its one detail says so
        last = rows + len(invalid) - 1
        details[last] = {"record": last, "field": None, "message": UNCLOSED}
    if not details:  # what scoring's reader reads (a column of row names) this one did not
        return None
    found = sorted(details.values(), key=lambda d: d["record"])
    return InputError("malformed", f"malformed CSV: record {found[0]['record']}: {found[0]['message']}", found)


def _utf8(data: bytes, body: bytes) -> str:
    """`data` (the start of `body`) as text; NotUtf8 naming the line and byte where it is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = len(re.findall(rb"\r\n?|\n", body[: exc.start])) + 1
        raise NotUtf8(f"line {line} holds the byte 0x{body[exc.start]:02x}") from None


Place = Callable[[int], str]  # how a message names a record by its index: `record 3`, or a file's `row 4`


def in_record(index: int) -> str:
    return f"record {index}"


# what /predict says of such an id: it could never have been scored, so no outcome can match it
UNREADABLE_ID = "an id beyond 64 bits or nested this deep was never scored; send the id as a string"


@dataclass
class _First:
    """An id's first record in a submission: a later one with another outcome is refused, one with the
    same outcome shares its fate (stored once, or refused with it)."""

    record: int
    outcome: str
    refusal: dict[str, Any] | None = None


def _refuse_unless(partial: bool, refused: list[dict[str, Any]]) -> None:
    """Without `partial`, any refused record refuses the submission, named by the first."""
    if refused and not partial:
        first = refused[0]
        raise InputError("invalid", f"record {first['record']}, field '{first['field']}': {first['message']}", refused)


class Feedback:
    """One model's feedback: checked against its contract and its log, then stored."""

    def __init__(self, location: LogLocation, model: str, pre: Preprocess) -> None:
        self.location, self.model, self.pre = location, model, pre
        self.labels = {str(label) for label in pre.labels}
        # `yes` is `Yes`, as training merges labels that differ only in case; unless two labels do
        folded: dict[str, list[str]] = {}
        for label in self.labels:
            folded.setdefault(label.casefold(), []).append(label)
        self.folded = {key: found[0] for key, found in folded.items() if len(found) == 1}
        # `2.0` is the class `2`, as training merges a target's numbers of equal value (pandas writes
        # an integer column with gaps as floats)
        self.by_value = {number: label for label in self.labels if (number := plain_number(label)) is not None}

    def submit(
        self, records: list[dict[str, Any]], partial: bool = False, write: bool = True, place: Place = in_record
    ) -> Stored:
        """Store the outcomes of records whose ids were scored; with `partial`, the good ones of a
        submission that has bad ones (else nothing is stored and every bad record is named); without
        `write`, only say what would be stored. A message names another record as `place` words it."""
        done = self._chunk(records, 0, {}, place)
        _refuse_unless(partial, done.refused)
        if done.labelled and write:
            self._write([item.key for item in done.labelled], [item.outcome for item in done.labelled])
        return done

    def _chunk(
        self, records: list[dict[str, Any]], start: int, firsts: dict[tuple[str, ...], _First], place: Place
    ) -> Stored:
        """Records numbered from `start` in their submission checked, nothing stored; `firsts` holds the
        first record of each id in the submission so far, and is added to."""
        if not self.pre.id_columns:
            raise InputError(
                "invalid", f"{self.model} has no id column to match outcomes to predictions: train it with --id-column"
            )
        keys, outcomes, refused = self._checked(records)
        refused = [{**d, "record": start + d["record"]} for d in refused]
        column = self.pre.id_columns[0]
        new, repeats = [], []
        for i, key in enumerate(keys):
            if key is None:
                continue
            first = firsts.setdefault(key, _First(start + i, outcomes[i]))
            if first.record == start + i:
                new.append(i)
            elif first.outcome != outcomes[i]:  # one id, two outcomes in one submission: which is meant is a guess
                message = f"id {', '.join(key)} has another outcome in {place(first.record)} of this submission"
                refused.append(self._bad(start + i, column, message))
            else:
                repeats.append(i)
        found = self.latest({keys[i] for i in new})
        labelled = []
        for i in new:
            if keys[i] in found:
                labelled.append(Labelled(keys[i], *found[keys[i]], outcomes[i]))
                continue
            message = (
                f"id {', '.join(keys[i])} is not in the prediction log of {self.model} "
                "(never scored, or its request not logged: --log-sample)"
            )
            refusal = firsts[keys[i]].refusal = self._bad(start + i, column, message)
            refused.append(refusal)
        duplicates = []
        for i in repeats:  # the same outcome again (`yes` for `Yes` too): stored once, as the window counts it
            why = firsts[keys[i]].refusal  # or refused as its first copy was, never said "stored once"
            if why is None:
                duplicates.append(start + i)
            else:
                refused.append({**why, "record": start + i})
        refused.sort(key=lambda d: d["record"])
        return Stored(len(labelled), labelled, refused, duplicates)

    def submit_file(
        self, records: list[dict[str, Any]], partial: bool = False, chunk: int = MAX_RECORDS, place: Place = in_record
    ) -> Stored:
        """A file's outcomes, `chunk` records per call (a call's bound on memory): every chunk is checked
        before any is stored, and each id's first record is kept across chunks, so the answer is the one
        a single call would give whatever the chunk size. Records are numbered in the file."""
        firsts: dict[tuple[str, ...], _First] = {}
        refused, duplicates, good = [], [], []
        for start in range(0, len(records), chunk):
            part = self._chunk(records[start : start + chunk], start, firsts, place)
            refused += part.refused
            duplicates += part.duplicates
            good.append([(item.key, item.outcome) for item in part.labelled])  # not their outputs: a file's worth
        refused.sort(key=lambda d: d["record"])
        _refuse_unless(partial, refused)
        for pairs in filter(None, good):
            self._write([key for key, _ in pairs], [outcome for _, outcome in pairs])
        return Stored(sum(map(len, good)), [], refused, duplicates)

    def _checked(self, records: list[dict[str, Any]]) -> tuple[list[Any], list[str], list[dict[str, Any]]]:
        """Each record's id key and outcome text (None where the record is bad) and what is wrong."""
        keys: list[Any] = []
        outcomes: list[Any] = []
        refused = []
        target = self.pre.target
        for i, record in enumerate(records):
            key, outcome, problem = None, None, None
            ids, unreadable = self._ids(record)
            missing = [c for c, v in zip(self.pre.id_columns, ids, strict=True) if v is None]
            if unreadable:
                problem = self._bad(i, unreadable, UNREADABLE_ID)
            elif missing:
                problem = self._bad(i, missing[0], "the id column is missing")
            elif target not in record or record[target] is None:
                problem = self._bad(i, target, f"the outcome ({target}) is missing")
            else:
                outcome, why = self._outcome(record[target])
                problem = self._bad(i, target, why) if why else None
                key = tuple(ids) if not why else None
            if problem:
                refused.append(problem)
                key = None
            keys.append(key)
            outcomes.append(outcome)
        return keys, outcomes, refused

    def _ids(self, record: dict[str, Any]) -> tuple[list[str | None], str | None]:
        """A record's ids as the log writes them (empty is missing), and the first that has no such text."""
        ids: list[str | None] = []
        unreadable = None
        for column in self.pre.id_columns:
            try:
                ids.append(text_of(record.get(column)) or None)
            except TypeError:  # orjson: an integer beyond 64 bits, or nesting past its limit
                ids.append(None)
                unreadable = unreadable or column
        return ids, unreadable

    def _outcome(self, value: Any) -> tuple[str | None, str | None]:
        """An outcome as text, or why it cannot be one of this model's."""
        if self.pre.task == "regression":
            try:  # read as training read the target: `$1,200`, and `12,5` where the file's decimal mark is a comma
                number = parse_number(value, self.pre.read.decimal)
            except ValueError as exc:  # `expected a number, got 'abc'`, as scoring says it
                return None, str(exc)
            if math.isnan(number):
                return None, f"the outcome ({self.pre.target}) is missing"
            return repr(number), None
        try:
            key = category_key(value)
        except ValueError:
            key = None
        if key is None and isinstance(value, str):  # an empty or blank cell in a CSV
            return None, f"the outcome ({self.pre.target}) is missing"
        text = key
        if text is not None and text not in self.labels:
            text = self.folded.get(text.casefold())
        if text is None and key is not None and (as_number := plain_number(key)) is not None:
            text = self.by_value.get(as_number)
        if text is None and key is not None and missing_outcomes([key])[0]:  # `NA`, `?`: as training read its target
            return None, f"the outcome ({self.pre.target}) is missing"
        if text is None:
            return None, f"{value!r} is not a label of {self.model} (its labels: {', '.join(sorted(self.labels))})"
        return text, None

    @staticmethod
    def _bad(record: int, column: str, message: str) -> dict[str, Any]:
        return {"record": record, "field": column, "message": message}

    def latest(
        self, keys: set[tuple[str, ...]] | dict[tuple[str, ...], Any]
    ) -> dict[tuple[str, ...], tuple[int, np.ndarray]]:
        """The version and outputs of each key's latest logged prediction (given a dict, the latest
        logged at or before the key's time there)."""
        if not keys:
            return {}
        ids = self.pre.id_columns
        table = logged(self.location, self.model, ids, [k[0] for k in keys])
        if not table.num_rows:
            return {}
        later = [("_row", "ascending")] if "_row" in table.column_names else []  # a request's rows share `_at`
        table = table.sort_by([("_at", "ascending"), *later])
        outputs = outputs_of(self.pre, table)
        columns = [table.column(c).to_pylist() for c in ids]
        versions, ats = table.column("_version").to_pylist(), table.column("_at").to_pylist()
        until = keys if isinstance(keys, dict) else None
        found = {}
        for row, key in enumerate(zip(*columns, strict=True)):
            if key in keys and (until is None or ats[row] <= until[key]):  # later predictions overwrite earlier
                found[key] = (versions[row], outputs[row])
        return found

    def stored(self, limit: int) -> list[Labelled]:
        """The last `limit` outcomes stored (a later one for an id replaces an earlier), each with its
        prediction: what a restarted service's live window starts from. Days are read newest first
        until `limit` ids are found: a year of outcomes held in memory at start-up was not bounded."""
        ids, last = self.pre.id_columns, dict[tuple[str, ...], tuple[str, Any]]()
        folders = itertools.groupby(self.location.files(self.model, FEEDBACK), key=lambda f: f.rsplit("/", 1)[0])
        for day, files in reversed([(day, list(group)) for day, group in folders]):
            tables = self._day(day, files)
            if not tables:  # none, or a day that never read whole (logged)
                continue
            table = pa.concat_tables(tables, promote_options="permissive").select([*ids, "_outcome", "_at"])
            table = table.sort_by("_at")  # stable: file order on ties
            keys = zip(*(table.column(c).to_pylist() for c in ids), strict=True)
            rows = zip(keys, table.column("_outcome").to_pylist(), table.column("_at").to_pylist(), strict=True)
            for key, outcome, at in reversed(list(rows)):  # newest first: an id's first is its latest
                last.setdefault(key, (outcome, at))
            if len(last) >= limit:
                break
        wanted = dict(reversed(list(last.items())[:limit]))  # oldest first, as the window fills
        found = self.latest({key: at for key, (_, at) in wanted.items()})
        return [Labelled(key, *found[key], outcome) for key, (outcome, _) in wanted.items() if key in found]

    def _day(self, folder: str, files: list[str]) -> list[pa.Table] | None:
        """A day's feedback tables. A file gone since `files` was listed was merged by another worker (or set
        aside by another reader): the day is listed again and the files not yet read are read, so a merge
        need only be slower than a file's reading, not the day's. A merged file repeats rows already read,
        which `stored`'s rule (an id's latest outcome) reads once. None if the day never reads whole."""
        read: dict[str, pa.Table | None] = {}
        for _ in range(READ_TRIES):
            try:
                for path in files:
                    if path not in read:
                        read[path] = feedback_table(self.location, path, missing_ok=False)
                return [t for t in read.values() if t is not None]
            except FileNotFoundError:
                files = _listed(self.location, folder)
        logger.error(
            "the feedback files of %s changed under each of %d readings: that day is not read", folder, READ_TRIES
        )
        return None

    def _write(self, keys: list[tuple[str, ...]], outcomes: list[str]) -> None:
        now = time.time()
        columns = {c: pa.array([k[j] for k in keys], pa.string()) for j, c in enumerate(self.pre.id_columns)}
        columns["_outcome"] = pa.array(outcomes, pa.string())
        columns["_target"] = pa.array([self.pre.target] * len(keys), pa.string())
        columns["_at"] = pa.array(np.full(len(keys), int(now * 1e6), np.int64), pa.timestamp("us", tz="UTC"))
        folder = f"{self.location.root}/{self.model}/{FEEDBACK}/date={day_of(now)}"
        write_whole(self.location, pa.table(columns), folder, f"{_tag}-{int(now)}-{next(_files)}.parquet")
        if self.location.local:
            try:  # housekeeping: the outcomes are stored; a failed merge failing the call made clients store them twice
                compact(self.location, folder)
            except Exception:
                logger.exception("merging the feedback files of %s failed (the outcomes are stored)", folder)


def compact(location: LogLocation, folder: str) -> None:
    """A day's feedback files merged into one once there are more than COMPACT_FILES small ones (a client
    sending one outcome per call made a file each, which every reader lists and opens), together with the
    merged ones once there are MERGED_FILES of them: a day holds at most about COMPACT_FILES + MERGED_FILES
    files. A reader between the merged file's rename and the removals sees a row twice, which the rule
    "an id's latest outcome" reads once. One process merges at a time; the others go on."""
    small, _ = _day_files(folder)
    if len(small) <= COMPACT_FILES:
        return
    with open(Path(folder) / ".compact.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        small, merged = _day_files(folder)  # listed again: another process may have merged them just before
        if len(small) <= COMPACT_FILES:
            return
        # only the lock holder removes merged files
        sources = small + (merged if len(merged) >= MERGED_FILES else [])
        read = [(path, table) for path in sources if (table := feedback_table(location, str(path))) is not None]
        if not read:
            return
        table = pa.concat_tables([table for _, table in read], promote_options="permissive")
        write_whole(location, table.sort_by("_at"), folder, f"{MERGED}{_tag}-{int(time.time())}-{next(_files)}.parquet")
        for path, _ in read:
            path.unlink(missing_ok=True)


ASIDE = ".unreadable"  # a feedback file no reader can use is renamed `.<name>.unreadable`: in no reader's listing


def feedback_table(location: LogLocation, path: str, missing_ok: bool = True) -> pa.Table | None:
    """A feedback file's table in the types `_write` writes; None when it is gone (merged meanwhile; without
    `missing_ok`, FileNotFoundError), or unreadable or not of feedback's columns (`misfit`), then set aside."""
    try:
        table = pq.read_table(path, filesystem=location.fs)
    except FileNotFoundError:
        if not missing_ok:
            raise
        return None
    except pa.ArrowInvalid as exc:  # cut short by a full disk, or not Parquet at all
        set_aside(location, path, f"is not readable Parquet ({exc})")
        return None
    # anything else (the disk's or the user's fault, memory) is not the file's: nothing is moved
    why = misfit(table.schema)
    if why is None:
        try:
            return conformed(table)
        except pa.ArrowInvalid as exc:
            why = f"holds a value feedback cannot read ({exc})"
    set_aside(location, path, why)  # it cannot be merged with the day's others: no merge that day
    return None


def feedback_files(location: LogLocation, model: str) -> list[str]:
    """A model's feedback files whose footer reads and whose columns are feedback's (one this user cannot
    read is kept, for the reader to name); the others set aside."""
    kept = []
    for path in location.files(model, FEEDBACK):
        try:
            why = misfit(pq.read_schema(path, filesystem=location.fs))
        except FileNotFoundError:
            continue
        except pa.ArrowInvalid as exc:
            why = f"is not readable Parquet ({exc})"
        except OSError:  # one this user cannot read is kept, for the reader to name
            why = None
        if why:
            set_aside(location, path, why)
        else:
            kept.append(path)
    return kept


WRITTEN = {"_outcome": pa.string(), "_target": pa.string(), "_at": pa.timestamp("us", tz="UTC")}  # as `_write` does


def _text(kind: pa.DataType) -> bool:
    """Whether a column of this type is read as text (pandas writes `large_string`; others a dictionary)."""
    if pa.types.is_dictionary(kind):
        return _text(kind.value_type)
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind))


def misfit(schema: pa.Schema) -> str | None:
    """Why a feedback file's columns cannot be read as those `_write` writes (text ids, text `_outcome` and
    `_target`, `_at` a time with a zone, any unit); None if they can (`conformed` casts them)."""
    for name in WRITTEN:
        if name not in schema.names:
            return f"has no {name} column"
    kind = schema.field("_at").type
    if not (pa.types.is_timestamp(kind) and kind.tz):  # a time without a zone: which instant is a guess
        return f"holds _at as {kind}, not a time with a zone (timestamp[us, UTC]) as feedback writes it"
    if wrong := next((f for f in schema if f.name != "_at" and not _text(f.type)), None):
        what = f"the id {wrong.name}" if wrong.name not in WRITTEN else wrong.name
        return f"holds {what} as {wrong.type}, not text as feedback writes it"
    if len(schema.names) == len(WRITTEN):
        return "has no id column"
    return None


def conformed(table: pa.Table) -> pa.Table:
    """A table that `misfit` passed in the types `_write` writes; ArrowInvalid if a value will not cast."""
    types = [WRITTEN.get(name, pa.string()) for name in table.column_names]
    # below a microsecond is dropped, as `_write` keeps none (pandas writes nanoseconds)
    cast = [
        pc.cast(c, options=pc.CastOptions(k, allow_time_truncate=True))
        for c, k in zip(table.columns, types, strict=True)
    ]
    return pa.table(cast, names=table.column_names)


def set_aside(location: LogLocation, path: str, why: str) -> None:
    """A feedback file no reader can use renamed out of every reader's listing (`.<name>.unreadable` in its
    folder; never removed: it is the user's data), and logged by name."""
    folder, _, name = path.rpartition("/")
    aside = f"{folder}/.{name}{ASIDE}"
    for n in itertools.count(2):  # one set aside before under that name is kept too
        if location.fs.get_file_info(aside).type == pafs.FileType.NotFound:
            break
        aside = f"{folder}/.{name}.{n}{ASIDE}"
    try:
        location.fs.move(path, aside)
    except FileNotFoundError:  # another reader set it aside first
        return
    except OSError as exc:
        logger.error("feedback file %s %s and could not be set aside (%s): move it out of %s", path, why, exc, folder)
        return
    logger.error("feedback file %s %s: set aside as %s, read by nothing (docs/monitoring.md)", path, why, aside)


def _listed(location: LogLocation, folder: str) -> list[str]:
    """A day folder's feedback files, as `LogLocation.files` lists them."""
    infos = location.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.File and i.base_name.endswith(".parquet") and not i.base_name.startswith(".")
    )


def _day_files(folder: str) -> tuple[list[Path], list[Path]]:
    """A day's feedback files: those written by one call each, and those merged from them."""
    files = sorted(Path(folder).glob("*.parquet"))
    return [p for p in files if not p.name.startswith(MERGED)], [p for p in files if p.name.startswith(MERGED)]


def logged(location: LogLocation, model: str, ids: list[str], first_ids: list[str]) -> pa.Table:
    """A model's logged rows whose first id column is one of `first_ids` (Parquet files and live segments)."""
    wanted = pa.array(sorted(set(first_ids)), pa.string())

    def where(table: pa.Table) -> pa.Table:  # an empty table lacks the column
        return table.filter(ds.field(ids[0]).isin(wanted)) if ids[0] in table.column_names else table.slice(0, 0)

    segments, files = logged_parts(location, model, where)
    if not files and not location.segments(model):  # a mistyped --log read as 200 records "never scored"
        raise InputError("invalid", f"no prediction log for {model} under {location.root}: nothing scored into it yet")
    try:
        dataset = ds.dataset(files, format="parquet", filesystem=location.fs) if files else None
    except (pa.ArrowInvalid, OSError) as exc:
        raise unreadable(location, files, exc) from None
    names = {n for table in segments if table.num_columns for n in table.column_names}
    names |= set(dataset.schema.names) if dataset is not None else set()
    if missing := [c for c in ids if names and c not in names]:  # it was a 500 (or "never scored")
        raise InputError(
            "invalid",
            f"the prediction log of {model} holds no {missing[0]!r} (kept out of it with --log-exclude?): "
            "outcomes are matched to predictions by their ids",
        )
    parts = [table for table in segments if ids[0] in table.column_names]
    if dataset is not None:
        try:
            parts.append(dataset.to_table(filter=ds.field(ids[0]).isin(wanted)))
        except (pa.ArrowInvalid, OSError) as exc:
            raise unreadable(location, files, exc) from None
    if not parts:
        return pa.table({})
    return pa.concat_tables(parts, promote_options="permissive")


class LogUnreadable(OSError):
    """A file in the prediction log that is not readable Parquet: the server's fault, not the request's."""


def unreadable(location: LogLocation, files: list[str], exc: Exception) -> LogUnreadable:
    """The error naming the first of `files` whose footer cannot be read (else pyarrow's own words)."""
    for path in files:
        try:
            pq.read_metadata(path, filesystem=location.fs)
        except (pa.ArrowInvalid, OSError):
            break
    else:
        path = "a file"
    return LogUnreadable(
        f"the prediction log holds {path}, which is not readable Parquet ({exc}): nothing was stored; "
        "move that file out of the log and send the outcomes again"
    )


def outputs_of(pre: Preprocess, table: pa.Table) -> np.ndarray:
    """Model outputs (as the ONNX graph gives them) from a log table's output columns."""
    if pre.task == "regression":
        return np.asarray(table.column("_value").to_numpy()).reshape(-1, 1)
    if pre.task == "binary":
        p = table.column("_probability").to_numpy().astype(np.float32)
        return np.stack([1 - p, p], axis=1)
    flat = np.asarray(table.column("_probabilities").combine_chunks().flatten().to_numpy())
    return flat.reshape(-1, len(pre.labels))
