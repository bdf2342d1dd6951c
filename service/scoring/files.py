"""Where rows come from and go to: CSV (plain or gzip, any delimiter and encoding), Parquet, JSON
lines and Excel, files or streams, as Arrow batches; header names stripped as training strips them.

Rows the CSV reader cannot split, and records over RECORD_LIMIT, go back in place, never dropped.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import gzip
import io
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from service.features import Reading, parse_number, shown, stripped
from service.protocols.base import keys_twice, maybe_twice

Format = Literal["csv", "csv.gz", "parquet", "jsonl", "excel"]
FORMATS_TEXT = ".csv (or .txt, .tsv), .csv.gz, .parquet, .jsonl (JSON lines) and .xlsx/.xls"
SEPARATORS = (",", ";", "\t", "|")
EXCEL_SUFFIXES = (".xlsx", ".xlsm", ".xls", ".xlsb", ".ods")  # what python-calamine reads
HEADER_PROBE = 1 << 16
UTF8_WINDOW = 64  # bytes from the first beyond ASCII that decide whether a file kept in a code page is UTF-8
RECORD_LIMIT = 1 << 20  # bytes in one CSV record; reads are at least twice this, so a record's end is one read away
LIMIT_TEXT = "1 MiB"
_OVER_LIMIT = "\x00tabserve: record over the limit, bytes="  # the NUL keeps it apart from CSV text
_SHORT = RECORD_LIMIT // 2  # a newline in every window this long: no line in it is over the limit
_QUOTE, _LF, _CR = 34, 10, 13
_NOT_A_QUOTE = 0  # what `_prev` holds after a quote that did not close a quoted field
ROW = "_tabserve_row"  # 1-based input row number (header not counted)
UNPARSED = "_tabserve_unparsed"  # why the reader could not split the row; null for good rows


class ScoringError(ValueError):
    """The input cannot be scored at all (e.g. a missing column)."""


def format_of(path: Path) -> Format:
    name = path.name.lower()
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    if name.endswith(".gz"):
        return "csv.gz"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(EXCEL_SUFFIXES):
        return "excel"
    if name.endswith((".csv", ".txt", ".tsv")) or "." not in name:
        return "csv"
    raise ScoringError(f"{path}: unknown format; supported: {FORMATS_TEXT}")


# what `open_sink` (and the Ray engine) write: CSV is always comma-separated, so no `.tsv`
OUTPUT_FORMATS_TEXT = ".csv (or .txt), .csv.gz, .parquet, or - for CSV on stdout"


def output_format_of(path: Path) -> Format:
    """The format an output is written in, by its extension; ScoringError for one tabserve does not write."""
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    plain = name.removesuffix(".gz")
    if plain.endswith((".csv", ".txt")) or "." not in plain.lstrip("."):  # no extension (`/dev/stdout`): CSV
        return "csv" if plain == name else "csv.gz"
    raise ScoringError(f"{path}: not an output format; tabserve writes {OUTPUT_FORMATS_TEXT}")


PROBE_ROWS = 20  # the first data rows, read to tell a header one field short or a title above it
PROBE_BYTES = 1 << 22  # the scorer reads at most this far for them


def first_rows(text: str, sep: str, whole: bool = True) -> list[list[str]]:
    """CSV text's first line and up to PROBE_ROWS rows below it; not `whole` (a sample of a stream),
    the last row read may be cut short and is left out. A row that does not parse ends them (a field
    over the csv module's limit; the readers report it themselves)."""
    rows: list[list[str]] = []
    try:
        for row in csv.reader(io.StringIO(text), delimiter=sep):
            rows.append(row)
            if len(rows) == PROBE_ROWS + 2:  # the one past them started: the ones before it are whole
                break
    except csv.Error:
        pass
    if not whole and len(rows) < PROBE_ROWS + 2:
        rows = rows[:-1]
    return rows[: PROBE_ROWS + 1]


def header_for_rows(header: list[str], rows: list[list[str]]) -> list[str]:
    """The header, with a blank name added where each of the first data rows has one field more: last
    where that field is empty in each (a delimiter closing every line), else first (R's `write.table`
    writes row names without a name) when two rows or more show it, unless the first row reads as
    names over the values below it (then line 1 is a title). A blank name is read as any blank header
    cell is. A blank last name where each row has one field less (a delimiter closing the header
    line alone) is dropped."""
    rows = rows[:PROBE_ROWS]
    while rows and not rows[-1]:  # blank lines at the end of a short file (one between: not a table)
        rows = rows[:-1]
    if rows and len(header) > 1 and not header[-1].strip() and all(len(row) == len(header) - 1 for row in rows):
        return header[:-1]
    if not rows or any(len(row) != len(header) + 1 for row in rows):
        return header
    if all(not row[-1].strip() for row in rows):
        return [*header, ""]
    if len(rows) == 1:  # row names or a stray delimiter: one row cannot tell, its field count is reported
        return header
    return header if names_above_values(rows[0], rows[1:]) else ["", *header]


def names_above_values(row: list[str], below: list[list[str]]) -> bool:
    """Whether `row` reads as a header over `below`: in some column it is not a number, and every
    value below it is (as training reads numbers: `$1,200`, `12%`)."""

    def number(cell: str) -> bool:
        try:
            parse_number(cell)
        except ValueError:
            return False
        return True

    for j, cell in enumerate(row):
        values = [r[j].strip() for r in below if j < len(r) and r[j].strip()]
        if values and not number(cell.strip()) and all(number(v) for v in values):
            return True
    return False


def sniff_sep(header: str, prefer: str = ",") -> str:
    """The delimiter that splits a header line into the most fields (`prefer` on a tie)."""
    counts = {sep: _fields(header, sep) for sep in SEPARATORS}
    best = max(counts.values())
    return prefer if counts.get(prefer, 0) == best else max(SEPARATORS, key=lambda sep: counts[sep])


def _fields(header: str, sep: str) -> int:
    try:
        return len(next(csv.reader([header], delimiter=sep), []))
    except csv.Error:  # a field over the csv module's limit: the header's own reading says so
        return 0


def bom_encoding(head: bytes) -> str | None:
    """UTF-16 or UTF-32 when the bytes begin with its byte-order mark (Excel's "Unicode Text" export
    is UTF-16): its NUL bytes read as no text at all, and its header as no column the model has."""
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return None


def marked_encoding(head: bytes) -> str | None:
    """The encoding a byte-order mark names, UTF-8's too (what `choose_encoding` and a named encoding yield to)."""
    return bom_encoding(head) or ("utf-8" if head.startswith(codecs.BOM_UTF8) else None)


def choose_encoding(head: bytes, preferred: str = "utf-8") -> str:
    """A file's encoding from its first bytes: the one its byte-order mark names (UTF-8's too); else the bundle's
    (`preferred`) unless they say otherwise: UTF-8 when they hold UTF-8 beyond ASCII; a detected one
    (charset-normalizer) when many lines are not UTF-8. A stray bad byte here and there stays an error
    of its row, not a guess for the file."""
    if marked := marked_encoding(head):
        return marked  # a UTF-8 mark over a stray byte that is not: the mark, not the bundle's code page
    if codecs.lookup(preferred).name.startswith(("utf-16", "utf-32")) and b"\x00" not in head:
        preferred = "utf-8"  # a model trained on a UTF-16 file scoring one saved as UTF-8 (no NUL bytes)
    lines = head.splitlines()[:-1] or head.splitlines()  # the last may be cut mid-character
    bad = sum(1 for line in lines if not is_utf8(line))
    if bad == 0:
        return preferred if head.isascii() else "utf-8"
    if codecs.lookup(preferred).name != "utf-8":
        return preferred
    return detect_encoding(head) if bad >= max(3, len(lines) // 10) else preferred


def reads_as(values: list[bytes], encoding: str) -> list[str] | None:
    """The values as `encoding` reads them; None when it cannot read one."""
    try:
        return [value.decode(encoding) for value in values]
    except UnicodeDecodeError:
        return None


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def detect_encoding(data: bytes) -> str:
    """The most likely encoding of bytes that are not UTF-8 (charset-normalizer), cp1252 if unsure."""
    from charset_normalizer import from_bytes

    found = from_bytes(data)
    best = found.best()
    if best is None:
        return "cp1252"
    # NOTE: on a few accented words single-byte code pages tie (cp1250 reads `è` as `č`, cp775 `ü` as
    # `³`): a tie goes to cp1252, what Western exports are, also where the detector left it out of its
    # list; Latin-1 decodes any byte and means cp1252 there too
    western = [m for m in found if m.encoding == "cp1252"] or list(from_bytes(data, cp_isolation=["cp1252"]))
    if any(m.chaos <= best.chaos for m in western):
        return "cp1252"
    # among the others that read the bytes as cleanly and fit a language as well (within 0.02, as
    # the detector's own ranking; `да`, `нет` are Cyrillic in several), the more common code page
    tied = [m for m in found if m.chaos <= best.chaos]
    fit = max(m.coherence for m in tied)
    name = min((m for m in tied if m.coherence >= fit - 0.02), key=lambda m: _rank(m.encoding)).encoding
    name = codecs.lookup(name).name
    return "cp1252" if name in ("iso8859-1", "latin-1", "iso8859-15") else name


# the code pages business files are written in, most common first: Windows' (Western, Cyrillic,
# Central European, Greek, Turkish, Baltic, Hebrew, Arabic, Vietnamese, Thai), then KOI8-R
COMMON_CODE_PAGES = (
    *("cp1252", "cp1251", "cp1250", "cp1253", "cp1254", "cp1257", "cp1255", "cp1256", "cp1258"),
    *("cp874", "koi8-r"),
)


def _rank(encoding: str) -> int:
    return next((i for i, c in enumerate(COMMON_CODE_PAGES) if _same(c, encoding)), len(COMMON_CODE_PAGES))


def guessed_encoding_note(data: bytes, guessed: str, shown: int = 3) -> str:
    """What the guess reads the file's most frequent words that are not ASCII as, and how the common
    code pages the detector rates as clean read them where they differ: a few short words do not
    settle it (`м`, `ж` in cp1251 are `ì`, `æ` in cp1252), and a training file's levels become the
    model's vocabulary, so the user is shown the words to check."""
    from charset_normalizer import from_bytes

    counts = Counter(re.findall(r"\w*[^\x00-\x7f]\w*", data.decode(guessed, errors="replace")))
    words = [word for word, _ in counts.most_common(shown)]
    note = f"not UTF-8; its encoding was guessed: {guessed}, reading " + ", ".join(map(repr, words))
    others = []
    found = from_bytes(data, cp_isolation=list(COMMON_CODE_PAGES), threshold=1.0)
    chaos = next((m.chaos for m in found if _same(m.encoding, guessed)), 0.0)
    for match in sorted(found, key=lambda m: _rank(m.encoding)):
        read = [w.encode(guessed, errors="replace").decode(match.encoding, errors="replace") for w in words]
        if match.chaos <= chaos and read != words:  # as clean to the detector, yet other text
            others.append(f"{match.encoding} reads " + ", ".join(map(repr, read)))
    if others:
        note += " (as cleanly, " + "; ".join(others[:2]) + ")"
    return note + ": pass --encoding if that is wrong, or save the file as UTF-8"


def _single_byte(encoding: str) -> bool:
    """Whether `encoding` reads ASCII as ASCII and every other byte alone as one character (cp1252,
    cp1251, KOI8-R…; not UTF-16, GB18030 or Shift-JIS, whose lead bytes wait for the next)."""
    try:
        if bytes(range(128)).decode(encoding) != bytes(range(128)).decode("ascii"):
            return False
    except UnicodeDecodeError:
        return False
    decoder = codecs.getincrementaldecoder(encoding)("replace")
    return all(len(decoder.decode(bytes([b]))) == 1 for b in range(128, 256))


def _same(a: str, b: str) -> bool:
    return codecs.lookup(a).name == codecs.lookup(b).name


class _Transcoded:
    """A byte stream in another encoding, read as UTF-8 (what Arrow's CSV reader takes).

    `tentative`: the encoding, a single-byte code page, was kept over an ASCII start (the training
    file's), which says nothing of it; the first bytes beyond ASCII decide as they would have in the
    head: valid UTF-8, and the rest is passed through as UTF-8 (the bytes before were ASCII, which both
    read alike). A multi-byte encoding (GB18030: `职员` is valid UTF-8 too) is kept."""

    def __init__(self, head: bytes, rest: Any, encoding: str, name: str, tentative: bool = False) -> None:
        self._head, self._rest, self._name = head, rest, name
        self._decoder = codecs.getincrementaldecoder(encoding)("strict")
        self.encoding = encoding
        self._tentative = tentative
        self.switched = False  # the tentative encoding was given up for UTF-8

    def read(self, size: int = -1) -> bytes:
        data, self._head = self._head, b""
        if not data:
            data = self._rest.read(size) or b""
        if self.switched:
            return data
        if self._tentative and not data.isascii():
            self._tentative = False
            data += self._rest.read(3) or b""  # a character the read cut is completed (UTF-8's take ≤ 4 bytes)
            first = re.search(rb"[\x80-\xff]", data).start()  # type: ignore[union-attr]
            try:  # the first bytes beyond ASCII, not the block: a stray byte further on is its row's error
                text = codecs.getincrementaldecoder("utf-8")("strict").decode(data[first : first + UTF8_WINDOW])
            except UnicodeDecodeError:
                text = ""
            if not text.isascii():  # a whole character beyond ASCII, and UTF-8 up to the window's end
                self.switched = True
                return data
        try:
            return self._decoder.decode(data, final=not data).encode("utf-8")
        except UnicodeDecodeError as exc:
            raise ScoringError(f"{self._name} is not valid {self.encoding} ({exc.reason}); pass --encoding") from None


class Source(Protocol):
    """Record batches of a file or stream, in input order."""

    columns: list[str]

    def type_of(self, column: str) -> pa.DataType: ...

    def batches(self, wanted: list[str]) -> Iterator[pa.RecordBatch]: ...

    def take_invalid(self) -> list[tuple[int, str]]: ...

    def position(self) -> int: ...

    def close(self) -> None: ...


class _Records:
    """A CSV body as Arrow buffers of whole records, their ends found as Arrow's parser finds them; a
    record over RECORD_LIMIT is dropped as read, a marker row with one field too many in its place."""

    def __init__(self, head: bytes, rest: Any, columns: int, sep: str = ",") -> None:
        self._rest, self._unread = rest, head
        self._sep = ord(sep)
        self._marker_end = sep.encode() * columns + b"\n"
        self._held = b""  # the start of a record whose end is not read yet
        self._quoted = False  # whether the bytes scanned so far end inside a quoted field
        self._prev = _LF  # the byte before the next one scanned
        self._dropped = 0  # bytes of an over-long record dropped so far (0: none is being dropped)
        self.unclosed = False  # the input ended inside a quoted field: its last record holds the rest

    def blocks(self, size: int) -> Iterator[pa.Buffer]:
        while data := self._take(size):
            pieces = self._drop(data) if self._dropped else self._pass(data)
            if pieces:
                yield _arrow_buffer(pieces)
        self.unclosed = self._quoted
        tail = self._marker(self._dropped) if self._dropped else self._held
        if tail:
            yield _arrow_buffer([tail])

    def _take(self, size: int) -> bytes:
        if self._unread:
            data, self._unread = self._unread[:size], self._unread[size:]
            return data
        return self._rest.read(size) or b""

    def _pass(self, data: bytes) -> list[Any]:
        """The whole records of held + data; the rest is held, or dropped once over the limit."""
        if self._plain(data):
            last = data.rfind(b"\n")
            self._prev = data[-1]
        else:
            ends = self._ends(data)
            lengths = np.diff(ends, prepend=-1 - len(self._held)) - 1
            over = np.flatnonzero(lengths > RECORD_LIMIT)
            if over.size:
                return self._cut(data, ends, int(over[0]), int(lengths[over[0]]))
            last = int(ends[-1]) if ends.size else -1
        pieces = [self._held, memoryview(data)[: last + 1]] if last >= 0 else []
        self._held = data[last + 1 :] if last >= 0 else self._held + data
        if len(self._held) > RECORD_LIMIT:
            self._dropped, self._held = len(self._held), b""
        return pieces

    def _plain(self, data: bytes) -> bool:
        """The fast path: no quote, and a newline in every `_SHORT` bytes, so every record is short."""
        if self._quoted or b'"' in data:
            return False
        first = data.find(b"\n", 0, RECORD_LIMIT - len(self._held) + 1)
        return first >= 0 and all(
            data.find(b"\n", at, at + _SHORT) >= 0 for at in range(first + 1, len(data) - _SHORT, _SHORT)
        )

    def _cut(self, data: bytes, ends: np.ndarray, index: int, length: int) -> list[Any]:
        """The records before the over-long one, then its marker; what follows is read again."""
        start = int(ends[index - 1]) + 1 if index else 0
        pieces = [self._held, memoryview(data)[:start]] if index else []
        self._unread = data[int(ends[index]) + 1 :] + self._unread
        self._held, self._quoted, self._prev = b"", False, _LF
        return [*pieces, self._marker(length)]

    def _drop(self, data: bytes) -> list[Any]:
        ends = self._ends(data)
        if not ends.size:
            self._dropped += len(data)
            return []
        self._unread = data[int(ends[0]) + 1 :] + self._unread
        self._quoted, self._prev = False, _LF
        return [self._marker(self._dropped + int(ends[0]))]

    def _marker(self, length: int) -> bytes:
        self._dropped = 0
        return f"{_OVER_LIMIT}{length}".encode() + self._marker_end

    def _ends(self, data: bytes) -> np.ndarray:
        """The line breaks in `data` that end a record; the quote state moves to its end."""
        arr = np.frombuffer(data, np.uint8)
        toggles = self._toggles(data, arr)
        breaks = np.flatnonzero((arr == _LF) | (arr == _CR) if b"\r" in data else arr == _LF)
        inside = (np.searchsorted(toggles, breaks) + self._quoted) % 2 == 1
        quoted_after = bool((len(toggles) + self._quoted) % 2)
        closed_last = data[-1] == _QUOTE and not quoted_after and len(toggles) and toggles[-1] == len(data) - 1
        self._prev = _NOT_A_QUOTE if data[-1] == _QUOTE and not closed_last else data[-1]
        self._quoted = quoted_after
        ends: np.ndarray = breaks[~inside]
        return ends

    def _toggles(self, data: bytes, arr: np.ndarray) -> np.ndarray:
        """The quotes that open or close a quoted field (a doubled quote: both)."""
        quotes = np.flatnonzero(arr == _QUOTE)
        opening = quotes[1 if self._quoted else 0 :: 2]
        if not opening.size:
            return quotes
        before = arr[opening - 1]  # at 0 this wraps to the last byte; the byte before is `_prev`
        if opening[0] == 0:
            before[0] = self._prev
        at_start = (before == self._sep) | (before == _LF) | (before == _CR) | (before == _QUOTE)
        if at_start.all():  # every quote pairs as Arrow pairs it (the usual case)
            return quotes
        return np.array(self._toggles_exact(data, quotes.tolist()), dtype=np.int64)

    def _toggles_exact(self, data: bytes, quotes: list[int]) -> list[int]:
        """As `_toggles`, one quote at a time: a quote inside an unquoted field is a plain character."""
        toggles: list[int] = []
        quoted = self._quoted
        for q in quotes:
            before = data[q - 1] if q else self._prev
            closed_just_before = before == _QUOTE and (q == 0 or (toggles and toggles[-1] == q - 1))
            if quoted or before in (self._sep, _LF, _CR) or closed_just_before:
                toggles.append(q)
                quoted = not quoted
        return toggles


def _arrow_buffer(pieces: list[Any]) -> pa.Buffer:
    """The pieces copied into a buffer Arrow owns: an Arrow thread holding a Python object at exit
    aborts the process."""
    buffer = pa.allocate_buffer(sum(len(piece) for piece in pieces))
    with memoryview(buffer) as raw, raw.cast("B") as view:
        at = 0
        for piece in pieces:
            view[at : at + len(piece)] = piece
            at += len(piece)
    return buffer


class CsvSource:
    """A decompressed CSV stream, every column as text, parsed by a synchronous `read_csv` per block
    (Arrow's streaming reader reads far ahead on threads that call back into Python)."""

    def __init__(
        self,
        stream: Any,
        raw: Any = None,
        chunk_rows: int = 16_384,
        name: str = "input",
        reading: Reading | None = None,
    ) -> None:
        self._raw = raw if raw is not None else stream
        reading = reading or Reading()
        head = _header(stream, name)
        given = reading.encoding_given and not marked_encoding(head)  # a byte-order mark says more than a flag
        self.encoding = reading.encoding if given else choose_encoding(head, reading.encoding)
        self._transcoded: _Transcoded | None = None
        if codecs.lookup(self.encoding).name != "utf-8":
            kept = not given and head.isascii() and _single_byte(self.encoding)
            stream = self._transcoded = _Transcoded(head, stream, self.encoding, name, tentative=kept)
            head = _header(stream, name)
        first = head.splitlines()[0]
        header = first.decode("utf-8-sig", errors="replace")
        self.sep = sniff_sep(header, reading.sep)
        try:
            names = next(csv.reader([header], delimiter=self.sep), [])
        except csv.Error as exc:
            raise ScoringError(f"{name}: the header line cannot be read ({exc})") from None
        head, whole = _with_first_rows(stream, head)
        body = head[len(first) :]
        body = body[2:] if body.startswith(b"\r\n") else body[1:]
        rows = first_rows(head.decode("utf-8-sig", errors="replace"), self.sep, whole)[1:]
        self.columns = stripped(header_for_rows(names, rows))
        self._records = _Records(body, stream, len(self.columns), self.sep)
        # reads of about chunk_rows rows, never under twice the record limit (batches are cut to chunk_rows)
        line = max(len(head) / max(head.count(b"\n"), 1), 16.0)
        self._block = int(min(max(chunk_rows * line, 2 * RECORD_LIMIT), 1 << 26))
        self._chunk = chunk_rows
        self._invalid: list[tuple[int, str]] = []
        self._rows_before = self._block_invalid = 0  # data rows before this block; invalid ones in it

    def type_of(self, column: str) -> pa.DataType:
        return pa.string()

    @property
    def read_as_utf8(self) -> str | None:
        """The encoding given up for UTF-8 past an ASCII start (the training file's), or None."""
        return self._transcoded.encoding if self._transcoded and self._transcoded.switched else None

    @property
    def unclosed_quote(self) -> bool:
        """Whether the file ended inside a quoted field: a quote never closed read the rest of it into
        its row (whose field count may even come out right), so those rows are in no output."""
        return self._records.unclosed

    def _on_invalid(self, row: pcsv.InvalidRow) -> str:
        # `number` counts the block's rows from 1 (known as each block is parsed serially)
        index = self._rows_before + row.number - 1 if row.number is not None else -1
        reason, text = f"expected {row.expected_columns} fields, got {row.actual_columns}", row.text
        length = text.startswith(_OVER_LIMIT) and text[len(_OVER_LIMIT) :].split(",", 1)[0]
        if length and length.isdigit():  # the marker `_Records` put in place of an over-long record
            reason, text = f"the record is {int(length):,} bytes, over the {LIMIT_TEXT} limit for one record", ""
        self._invalid.append((index, f"{reason}\0{text}"))
        self._block_invalid += 1
        return "skip"

    def batches(self, wanted: list[str]) -> Iterator[pa.RecordBatch]:
        parse = pcsv.ParseOptions(delimiter=self.sep, newlines_in_values=True, invalid_row_handler=self._on_invalid)
        convert = pcsv.ConvertOptions(
            column_types={c: pa.string() for c in wanted},
            include_columns=wanted,
            check_utf8=False,  # the scorer reports rows that are not UTF-8, not the whole file
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        for block in self._records.blocks(self._block):
            read = pcsv.ReadOptions(use_threads=False, column_names=self.columns, block_size=block.size + 1)
            self._block_invalid = 0
            table = pcsv.read_csv(
                pa.BufferReader(block), read_options=read, parse_options=parse, convert_options=convert
            )
            self._rows_before += table.num_rows + self._block_invalid
            # about chunk_rows per batch, evenly, not a full one and a sliver (each has a fixed cost)
            pieces = max(1, round(table.num_rows / self._chunk))
            yield from table.to_batches(max_chunksize=-(-table.num_rows // pieces) or 1)

    def take_invalid(self) -> list[tuple[int, str]]:
        """Rows skipped since the last call: (0-based data row, 'reason\\0raw text')."""
        got, self._invalid = self._invalid, []
        return got

    def position(self) -> int:
        try:
            return int(self._raw.tell())
        except (OSError, ValueError, AttributeError):
            return 0

    def close(self) -> None:
        self._raw.close()


def _with_first_rows(stream: Any, head: bytes) -> tuple[bytes, bool]:
    """`head` read on until it holds the first PROBE_ROWS rows and one more line (or PROBE_BYTES);
    whether it holds the whole stream."""
    parts, size, lines = [head], len(head), head.count(b"\n")
    while lines <= PROBE_ROWS + 1 and size < PROBE_BYTES:
        more = stream.read(HEADER_PROBE)
        if not more:
            return b"".join(parts), True
        parts.append(more)
        size, lines = size + len(more), lines + more.count(b"\n")
    return b"".join(parts), False


def _header(stream: Any, name: str) -> bytes:
    """A CSV stream's first bytes, through its header line; at most RECORD_LIMIT."""
    parts: list[bytes] = []
    size = 0
    while size <= RECORD_LIMIT and not any(b"\n" in p or b"\r" in p for p in parts[-1:]):
        more = stream.read(min(HEADER_PROBE, RECORD_LIMIT + 1 - size))
        if not more:
            break
        parts.append(more)
        size += len(more)
    head = b"".join(parts)
    if not head.strip():
        raise ScoringError(f"{name} is empty")
    if len(head.splitlines()[0]) > RECORD_LIMIT:
        raise ScoringError(
            f"{name}: the header line is over the {LIMIT_TEXT} limit for one record (or has no line break)"
        )
    return head


class ParquetSource:
    def __init__(self, path: Path | pa.NativeFile, chunk_rows: int = 16_384) -> None:
        self._file = pq.ParquetFile(path)
        self._schema = self._file.schema_arrow
        self._names = dict(zip(stripped(self._schema.names), self._schema.names, strict=True))
        self.columns = stripped(self._schema.names)
        self._chunk, self._done = chunk_rows, 0
        self._size = path.stat().st_size if isinstance(path, Path) else int(path.size())
        self._rows = max(self._file.metadata.num_rows, 1)

    def type_of(self, column: str) -> pa.DataType:
        return self._schema.field(self._names.get(column, column)).type

    def batches(self, wanted: list[str]) -> Iterator[pa.RecordBatch]:
        for batch in self._file.iter_batches(batch_size=self._chunk, columns=[self._names.get(c, c) for c in wanted]):
            self._done += batch.num_rows
            yield batch.rename_columns(wanted)

    def take_invalid(self) -> list[tuple[int, str]]:
        return []

    def position(self) -> int:
        return int(self._size * self._done // self._rows)

    def close(self) -> None:
        self._file.close()


class TableSource:
    """A whole table read at once (JSON lines, Excel: formats without a streaming reader), in blocks;
    `invalid`: the (row, why) of records that could not be read, put back in place by `numbered`."""

    def __init__(
        self,
        table: pa.Table,
        chunk_rows: int = 16_384,
        size: int = 0,
        invalid: list[tuple[int, str]] | None = None,
        twice: list[tuple[int, int, int, list[tuple[str, bool]]]] | None = None,
    ) -> None:
        self._table = table.rename_columns(stripped(table.column_names))
        self.columns = list(self._table.column_names)
        self._chunk, self._done, self._size, self._rows = chunk_rows, 0, size, max(table.num_rows, 1)
        self._invalid = list(invalid or [])
        self._twice = twice or []

    def type_of(self, column: str) -> pa.DataType:
        return self._table.schema.field(column).type

    def batches(self, wanted: list[str]) -> Iterator[pa.RecordBatch]:
        table = self._table.select(wanted)
        read = set(wanted)  # a key given twice fails its record where it is read (an ignored one is ignored)
        failed = {
            row: (place, line, hit)
            for row, place, line, keys in self._twice
            if (hit := [(k, nested) for k, nested in keys if k in read])
        }
        if failed:
            self._invalid = sorted(
                self._invalid
                + [
                    (place, f"line {line}: {twice_text(*hit[0])}: which value is meant is a guess")
                    for place, line, hit in failed.values()
                ]
            )
            table = table.filter(pa.array([row not in failed for row in range(table.num_rows)]))
            self._rows = max(table.num_rows, 1)
        for batch in table.to_batches(max_chunksize=self._chunk):
            self._done += batch.num_rows
            yield batch

    def take_invalid(self) -> list[tuple[int, str]]:
        taken, self._invalid = self._invalid, []
        return taken

    def position(self) -> int:
        return int(self._size * self._done // self._rows)

    def close(self) -> None:
        self._table = self._table.slice(0, 0)


def twice_text(field: str, nested: bool) -> str:
    return f"field {shown(field)} " + ("holds a key given twice" if nested else "is given twice")


@dataclass
class JsonLines:
    """A JSON-lines file read record by record: the records as a table, the lines that are no JSON
    object (their place among all records, why), and the records that give a key twice (their row in
    the table, their place, line number, and each field given twice or holding an object that gives a
    key twice): whether that matters depends on the field."""

    table: pa.Table
    invalid: list[tuple[int, str]]
    twice: list[tuple[int, int, int, list[tuple[str, bool]]]]


def read_jsonl(path: Path | str, decimal: str = ".") -> JsonLines:
    """A JSON-lines file (one object per line), each line decoded as `/predict` decodes a record (not
    by Arrow's reader, which refuses a whole file for a column of numbers and text or one broken line,
    and keeps one value of a key given twice without a word). A column of one JSON type is typed as
    Arrow would; one of mixed types holds each value's text (`_json_text`). A blank line is no record."""
    columns: dict[str, list[Any]] = {}
    invalid: list[tuple[int, str]] = []
    twice: list[tuple[int, int, int, list[tuple[str, bool]]]] = []
    read = 0  # records in the table
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if number == 1:
                line = line.removeprefix(codecs.BOM_UTF8)  # Windows tools write one
            if not line.strip():
                continue
            try:
                record = msgspec.json.decode(line)
            except (msgspec.DecodeError, RecursionError) as exc:
                record = exc
            if not isinstance(record, dict):
                why = f"{record}" if isinstance(record, Exception) else f"a JSON {type(record).__name__}"
                if not read and not invalid:  # the first line decides whether this is JSON lines at all
                    raise ScoringError(
                        f"{path} is not readable JSON lines (one object per line): line {number}: {why}"
                    ) from None
                invalid.append((read + len(invalid), f"line {number} is not a JSON object: {why}"))
                continue
            if maybe_twice(line, record):  # a field given twice, or one holding an object with a key twice
                keys = list(
                    dict.fromkeys((str(where[0]), True) if where else (key, False) for where, key in keys_twice(line))
                )
                if keys:
                    twice.append((read, read + len(invalid), number, keys))
            for name, value in record.items():
                values = columns.get(name)
                if values is None:  # a field first seen here: missing in the records before
                    values = columns[name] = [None] * read
                values.append(value)
            read += 1
            for values in columns.values():
                if len(values) < read:  # a field this record lacks
                    values.append(None)
    table = pa.table({name: _json_column(values, decimal) for name, values in columns.items()})
    return JsonLines(table, invalid, twice)


def _json_column(values: list[Any], decimal: str) -> pa.Array:
    """One JSON-lines column: typed as Arrow infers it, or, where its values mix types (numbers and
    text; true beside numbers, which Arrow would read as 1) or a number fits no Arrow type, each value
    as its text, which the feature readers take as they take a CSV's cells."""
    kinds = {type(v) for v in values if v is not None}
    if not (bool in kinds and len(kinds) > 1):
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass
    return pa.array([None if v is None else _json_text(v, decimal) for v in values], pa.string())


def _json_text(value: Any, decimal: str) -> str:
    """A value's text as `features.category_key` makes it (JSON 2.0 and CSV "2" name one level); a
    fraction with the file's decimal mark, so that a numeric feature reads the number the JSON held."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else fraction_text(value, decimal)
    if isinstance(value, dict | list):
        return msgspec.json.encode(value).decode()
    return str(value)


def fraction_text(value: float, decimal: str) -> str:
    """A fraction's text with the file's decimal mark, never an exponent (which a decimal-comma reader
    refuses): `1.234` read with a comma mark would be 1234."""
    return repr(value) if decimal == "." else np.format_float_positional(value, trim="-").replace(".", decimal)


def read_excel(path: Path | str, decimal: str = ".") -> pa.Table:
    """An Excel workbook's first sheet (python-calamine), first row the header, every cell as its text
    (whole numbers without `.0`, fractions with `decimal` as their mark, dates in ISO form): what the
    same sheet saved as CSV would hold."""
    from python_calamine import CalamineError, CalamineWorkbook

    try:
        rows = CalamineWorkbook.from_path(str(path)).get_sheet_by_index(0).to_python(skip_empty_area=True)
    except (CalamineError, OSError, ValueError) as exc:
        raise ScoringError(f"{path} is not a readable Excel workbook: {exc}") from None
    if not rows:
        raise ScoringError(f"{path}: the first sheet is empty")
    filled = [sum(_cell_text(c).strip() != "" for c in row) for row in rows[: PROBE_ROWS + 1]]
    start = next(i for i, n in enumerate(filled) if 2 * n > max(filled))
    if start:  # a report's title (and blank rows) above the table: its header would be the title
        raise ScoringError(
            f"{path}: the first sheet's first filled row has {filled[0]} filled cell(s) but the table below it "
            f"has {max(filled)} (from {start} row(s) further down): is there a title above the header? The "
            "header must be the first row: remove the rows above it"
        )
    header = [_cell_text(c) for c in rows[0]]
    width = len(header)
    # a blank row between the data is no record, as a blank line in a CSV is none
    body = [r for r in rows[1:] if any(_cell_text(c) for c in r)]
    columns = [[_cell_text(r[j], decimal) if j < len(r) else "" for r in body] for j in range(width)]
    return pa.table([pa.array(c, pa.string()) for c in columns], names=header)


def _cell_text(value: Any, decimal: str = ".") -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else fraction_text(value, decimal)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ") if value.time() != dt.time() else value.date().isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def open_source(path: Path, chunk_rows: int = 16_384, reading: Reading | None = None) -> Source:
    """A file's rows; a CSV read as `reading` says (the bundle's: delimiter, decimal, encoding)."""
    fmt = format_of(path)
    if fmt == "parquet":
        return ParquetSource(path, chunk_rows)
    if fmt == "jsonl":
        lines = read_jsonl(path, (reading or Reading()).decimal)
        return TableSource(lines.table, chunk_rows, path.stat().st_size, lines.invalid, lines.twice)
    if fmt == "excel":
        return TableSource(read_excel(path, (reading or Reading()).decimal), chunk_rows, path.stat().st_size)
    raw = pa.OSFile(str(path), "rb")
    stream = pa.CompressedInputStream(raw, "gzip") if fmt == "csv.gz" else raw
    return CsvSource(stream, raw, chunk_rows, name=str(path), reading=reading)


def open_stream(
    stream: IO[bytes], chunk_rows: int = 16_384, name: str = "stdin", reading: Reading | None = None
) -> CsvSource:
    """A CSV source on a binary stream (stdin); gzip is told by its first bytes."""
    buffered: Any = stream if hasattr(stream, "peek") else io.BufferedReader(stream)
    if buffered.peek(2)[:2] == b"\x1f\x8b":
        return CsvSource(gzip.GzipFile(fileobj=buffered, mode="rb"), buffered, chunk_rows, name=name, reading=reading)
    return CsvSource(buffered, buffered, chunk_rows, name=name, reading=reading)


def numbered(source: Source, wanted: list[str]) -> Iterator[pa.RecordBatch]:
    """The source's batches with ROW and UNPARSED, the rows the reader skipped put back in place."""
    pending: list[tuple[int, str]] = []
    next_row = 0
    header = list(source.columns)
    sep = getattr(source, "sep", ",")
    for batch in source.batches(wanted):
        pending += source.take_invalid()
        n = batch.num_rows
        skipped: list[tuple[int, str]] = []
        while pending and pending[0][0] < next_row + n + len(skipped):
            skipped.append(pending.pop(0))
        yield _with_rows(batch, next_row, skipped, header, sep)
        next_row += n + len(skipped)
    pending += source.take_invalid()
    if pending:  # unparsable rows after the last good one
        empty = pa.RecordBatch.from_pylist([], schema=pa.schema([(c, source.type_of(c)) for c in wanted]))
        yield _with_rows(empty, next_row, [(next_row + i, why) for i, (_, why) in enumerate(pending)], header, sep)


def _with_rows(
    batch: pa.RecordBatch, first: int, skipped: list[tuple[int, str]], header: list[str], sep: str = ","
) -> pa.RecordBatch:
    n = batch.num_rows
    rows = np.arange(first + 1, first + n + len(skipped) + 1, dtype=np.int64)
    if not skipped:
        return _append(batch, rows, pa.nulls(n, pa.string()))
    bad = {position for position, _ in skipped}
    good_rows = rows[~np.isin(rows - 1, list(bad))]
    parts, start = [], 0
    for position, why in skipped:
        cut = int(np.searchsorted(good_rows, position + 1))
        if cut > start:
            parts.append(
                _append(batch.slice(start, cut - start), good_rows[start:cut], pa.nulls(cut - start, pa.string()))
            )
        start = cut
        reason, _, text = why.partition("\0")
        parts.append(_unparsed(batch.schema, header, text, position + 1, reason, sep))
    if start < n:
        parts.append(_append(batch.slice(start), good_rows[start:], pa.nulls(n - start, pa.string())))
    return pa.Table.from_batches(parts).combine_chunks().to_batches()[0]


def _append(batch: pa.RecordBatch, rows: np.ndarray, unparsed: pa.Array) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [*batch.columns, pa.array(rows, pa.int64()), unparsed], names=[*batch.schema.names, ROW, UNPARSED]
    )


def _unparsed(schema: pa.Schema, header: list[str], text: str, row: int, reason: str, sep: str) -> pa.RecordBatch:
    """One row the reader skipped: its fields where they can be told apart, and why."""
    try:
        fields = next(csv.reader([text], delimiter=sep), [])
    except csv.Error:  # a field over the csv module's limit: the cells stay empty, the reason says why
        fields = []
    cells = []
    for name in schema.names:
        at = header.index(name) if name in header else -1
        cells.append(fields[at] if 0 <= at < len(fields) else "")
    arrays = [
        pa.array([cell], pa.string()) if pa.types.is_string(schema.field(i).type) else pa.nulls(1, schema.field(i).type)
        for i, cell in enumerate(cells)
    ]
    return _append(pa.RecordBatch.from_arrays(arrays, schema=schema), np.array([row]), pa.array([reason], pa.string()))


class Sink(Protocol):
    """Scored batches out, in order."""

    def write(self, batch: pa.RecordBatch) -> None: ...

    def close(self) -> None: ...


def csv_write_options() -> pcsv.WriteOptions:
    """How every engine writes CSV (strings quoted, nulls empty)."""
    return pcsv.WriteOptions(quoting_style="needed")


class CsvSink:
    def __init__(self, target: str | IO[bytes] | pa.NativeFile, schema: pa.Schema, gzip: bool = False) -> None:
        self._out = pa.CompressedOutputStream(target, "gzip") if gzip else target
        self._writer = pcsv.CSVWriter(self._out, schema, write_options=csv_write_options())

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def close(self) -> None:
        self._writer.close()
        if isinstance(self._out, pa.CompressedOutputStream):
            self._out.close()


class ParquetSink:
    def __init__(self, target: str, schema: pa.Schema) -> None:
        self._writer = pq.ParquetWriter(target, schema)

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def close(self) -> None:
        self._writer.close()


def check_writable(schema: pa.Schema, fmt: Format) -> None:
    """Refuse, before any work, kept columns the output format cannot hold (CSV has no lists)."""
    nested = [f"{f.name} ({f.type})" for f in schema if pa.types.is_nested(f.type)]
    if nested and fmt != "parquet":
        raise ScoringError(
            f"kept column(s) holding lists or structs, which CSV cannot write: {', '.join(nested)}; "
            "write .parquet, or keep other columns"
        )


def open_sink(path: Path, schema: pa.Schema, fmt: Format) -> Sink:
    check_writable(schema, fmt)
    if fmt == "parquet":
        return ParquetSink(str(path), schema)
    return CsvSink(str(path), schema, gzip=fmt == "csv.gz")
