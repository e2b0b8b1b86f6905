"""CSV (plain, gzip or zipped; with or without a header), read by Arrow in chunks with the exact line
where each row starts.

Lines end at \\n, \\r\\n or a lone \\r (as pyarrow reads them); a final newline at EOF ends the last row,
it does not start a new one. Quoted values may hold delimiters and line breaks (Shopify's order
notes): such a record is read as one row, on the line where it starts. A quote left open for
``RECORD_MAX_LINES`` lines or to the end of the file, or whose record would not hold the header's
number of values, quarantines its first line, and the lines after it are read on their own.
"""

from __future__ import annotations

import atexit
import csv
import gc
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from learners.data.mapping import SourceMapping
from learners.data.readers import (
    READ_ERRORS,
    RawChunk,
    cannot_read,
    check_columns,
    is_utf8,
    open_binary,
    quarantine_table,
    text_of,
)
from learners.data.schema import QUARANTINE

CSV_BLOCK_BYTES = 8 << 20
RECORD_MAX_LINES = 1000
"""The most lines one quoted value may span; a quote open longer is a broken line, not a value."""
OPEN_QUOTE = "open quote"
"""``_LineBlocks._broken``'s answer for a line whose quoted value goes on past it."""
NEWLINE_IN_VALUE = "\x1e"
"""Stands for a line break inside a quoted value while Arrow reads the record as one line."""


class _LineBlocks:
    """A file-like object for pyarrow that hands out whole records only, one per line.

    It normalises line ends to \\n, joins the lines of a record whose quoted value spans them into one
    (``NEWLINE_IN_VALUE`` for each break, remembered in ``joined``), and blanks out lines pyarrow must
    not parse (empty lines, invalid UTF-8, quoting that never closes), remembering them so the reader
    can quarantine them with the right reason. Its line numbers count records; ``physical`` turns
    them into the file's lines.
    """

    def __init__(self, stream: IO[bytes], path: Path, delimiter: str, first_line: int = 1):
        self.stream = stream
        self.path = path
        self.delimiter = delimiter
        self.next_line = first_line
        self.carry = b""
        self.eof = False
        self.flagged: dict[int, tuple[str, str]] = {}
        self.joined: list[tuple[int, int]] = []
        """(record line, lines it spans past its first) of each record joined from several lines."""
        self.columns: int | None = None
        """The header's number of values, which a record joined from several lines must hold."""
        self.closed = False
        self.position = 0

    def _fill(self, nbytes: int) -> bytes:
        """Up to about nbytes of whole lines (the last line of the file may lack its newline)."""
        data = self.carry
        while not self.eof:
            try:
                more = self.stream.read(max(nbytes, 1 << 16))
            except READ_ERRORS as err:
                raise cannot_read(self.path, err) from None
            if not more:
                self.eof = True
                break
            data += more
            cut = data.rfind(b"\n")
            if cut >= 0 and len(data) >= nbytes:
                self.carry = data[cut + 1 :]
                return data[: cut + 1]
        self.carry = b""
        return data

    def readline(self) -> bytes | None:
        """The first line (the header), without its line end; None for an empty file."""
        data = self._fill(1 << 16)
        while b"\n" not in data and b"\r" not in data and not self.eof:
            data += self._fill(1 << 16)
        if not data:
            return None
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        head, _, rest = data.partition(b"\n")
        self.carry = rest + self.carry
        self.next_line += 1
        return head

    def read(self, nbytes: int = -1) -> bytes:
        size = CSV_BLOCK_BYTES if nbytes is None or nbytes < 0 else nbytes
        block = self._fill(size)
        while True:
            if b"\r" in block:
                block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if not block:
                break
            screened, pending = self._screen(block)
            if not pending:
                block = screened
                break
            if screened:  # the record that continues past this block comes with the next
                self.carry = pending + self.carry
                block = screened
                break
            block = pending + self._fill(size)  # nothing whole yet: read on
        self.position += len(block)
        return block

    def _screen(self, block: bytes) -> tuple[bytes, bytes]:
        """The block's records (lines joined where a quoted value spans them; lines pyarrow must not
        parse blanked out and remembered), and the bytes of a record the block ends inside of, left
        for the next read; counts records."""
        try:
            block.decode("utf-8")
            valid_utf8 = True
        except UnicodeDecodeError:
            valid_utf8 = False
        if valid_utf8 and not block.startswith(b"\n") and b"\n\n" not in block and b'"' not in block:
            self.next_line += block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
            return block, b""
        ends = block.endswith(b"\n")
        lines = block.split(b"\n")
        if ends:
            lines.pop()
        for i, line in enumerate(lines):
            reason = self._broken(line, valid_utf8)
            if reason == OPEN_QUOTE:  # rare: the slower walk that joins records takes over
                return self._records(lines, i, valid_utf8, ends)
            if reason is not None:
                self.flagged[self.next_line + i] = (reason, text_of(line))
                lines[i] = b""
        self.next_line += len(lines)
        return _joined(lines, ends), b""

    def _broken(self, line: bytes, valid_utf8: bool) -> str | None:
        """Why pyarrow must not parse a line, ``OPEN_QUOTE`` where its quoting does not close, or None."""
        if not line:
            return "empty line"
        if not valid_utf8 and not is_utf8(line):
            return "line is not valid UTF-8 text"
        if b'"' in line and self._fields(line) is None:
            return OPEN_QUOTE
        return None

    def _records(self, lines: list[bytes], start: int, valid_utf8: bool, ends: bool) -> tuple[bytes, bytes]:
        """``_screen`` from line ``start`` on (the lines before it screened), joining the lines of a
        record whose quoted value spans them."""
        out = lines[:start]
        i = start
        while i < len(lines):
            line, number = lines[i], self.next_line + len(out)
            reason = self._broken(line, valid_utf8)
            if reason == OPEN_QUOTE:
                last = self._record_end(lines, i)
                more = not (self.eof and not self.carry)
                if last is None and len(lines) - i < RECORD_MAX_LINES and more:
                    self.next_line += len(out)
                    return _joined(out, True), b"\n".join(lines[i:]) + (b"\n" if ends else b"")
                if last is not None and last >= 0:
                    out.append(NEWLINE_IN_VALUE.encode().join(lines[i : last + 1]))
                    self.joined.append((number, last - i))
                    i = last + 1
                    continue
                reason = (
                    f"a quoted value does not close within {RECORD_MAX_LINES} lines or by the end of the"
                    " file (a stray quote?)"
                )
            if reason is not None:
                self.flagged[number] = (reason, text_of(line))
                line = b""
            out.append(line)
            i += 1
        self.next_line += len(out)
        return _joined(out, ends), b""

    def _record_end(self, lines: list[bytes], first: int) -> int | None:
        """The line that closes the quoted value opened on line ``first`` (an even count of quotes so
        far, the record then parsing as CSV with the header's number of values); -1 where the lines
        cannot make one record (not UTF-8, not CSV once the quotes pair up, or another number of
        values: stray quotes in broken lines, which must not swallow the good lines between them);
        None where no line of the block closes it."""
        quotes = lines[first].count(b'"')
        for j in range(first + 1, min(len(lines), first + RECORD_MAX_LINES)):
            if not is_utf8(lines[j]):
                return -1
            quotes += lines[j].count(b'"')
            if quotes % 2 == 0:
                values = self._fields(b"\n".join(lines[first : j + 1]))
                fits = values is not None and (self.columns is None or values == self.columns)
                return j if fits else -1
        return None

    def physical(self, lines: np.ndarray) -> np.ndarray:
        """The file's line of each record line (records joined from several lines shift the later)."""
        if not self.joined or not len(lines):
            return lines
        starts = np.fromiter((start for start, _ in self.joined), np.int64)
        shift = np.cumsum(np.fromiter((extra for _, extra in self.joined), np.int64))
        before = np.searchsorted(starts, lines, side="left")
        return lines + np.where(before > 0, shift[np.maximum(before - 1, 0)], 0)

    def _fields(self, record: bytes) -> int | None:
        """How many values a record holds, None where its quoting is broken (on one line: a quoted
        value that does not close there)."""
        try:
            rows = list(csv.reader([record.decode("utf-8")], delimiter=self.delimiter, strict=True))
        except (UnicodeDecodeError, csv.Error):
            return None
        return len(rows[0]) if rows else 0

    def tell(self) -> int:
        return self.position

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


def _joined(lines: list[bytes], ends: bool) -> bytes:
    return b"\n".join(lines) + (b"\n" if ends and lines else b"")


def _csv_delimiter(path: Path, mapping: SourceMapping) -> str:
    if mapping.csv.delimiter is not None:
        return mapping.csv.delimiter
    return "\t" if ".tsv" in [s.lower() for s in path.suffixes] else ","


def _header_names(path: Path, header: bytes, delimiter: str) -> list[str]:
    try:
        text = header.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError:
        raise ValueError(
            f"{path}: line 1 (header) is not valid UTF-8 text; fix: save the file as UTF-8"
        ) from None
    return next(csv.reader([text], delimiter=delimiter))


_HELD_BY_ARROW: weakref.WeakSet[object] = weakref.WeakSet()
"""The Python objects an Arrow CSV reader may still hold: its line blocks and invalid-row handler."""
RELEASE_WAIT_S = 5.0
"""The longest the exit waits for Arrow to let go of them."""


@atexit.register
def _let_arrow_release_readers() -> None:
    """Arrow's CSV reader reads our line blocks ahead on its I/O threads, and the last of them to finish
    can drop the reader, which needs the GIL to let go of its Python objects (a gdb backtrace: the
    invalid-row handler, released by ``StreamingReaderImpl``'s destructor on a pool thread). If that
    comes after the interpreter began to shut down, the process aborts ("terminate called without an
    active exception": 1 run in 10 of `prepare --check` on two files, and 1 in 12 to 30 of a draft
    that stops at a second file's header on a busy machine, where a fixed 50 ms pause was too short).
    So the exit waits, while Python is still whole, until Arrow has let go of every one of them."""
    if not _HELD_BY_ARROW:  # no CSV read, or every reader already let go: no collection at exit
        return
    gc.collect()
    deadline = time.monotonic() + RELEASE_WAIT_S
    while _HELD_BY_ARROW and time.monotonic() < deadline:
        time.sleep(0.005)
        gc.collect()


def read_csv(path: Path, file_index: int, mapping: SourceMapping) -> Iterator[RawChunk]:
    """Stream a CSV file (plain, gzip or zipped) in chunks with the line where each row starts."""
    delimiter = _csv_delimiter(path, mapping)
    stream = open_binary(path)
    try:
        blocks = _LineBlocks(stream, path, delimiter)
        _HELD_BY_ARROW.add(blocks)
        if mapping.csv.header:
            header = blocks.readline()
            if header is None:
                return
            names = _header_names(path, header, delimiter)
            check_columns(path, "line 1 (header)", names, mapping, delimiter)
        else:
            names = list(mapping.csv.columns or ())
        blocks.columns = len(names)
        yield from _csv_chunks(path, file_index, blocks, names, delimiter, blocks.next_line - 1)
    finally:
        stream.close()


def _csv_chunks(
    path: Path, file_index: int, blocks: _LineBlocks, names: list[str], delimiter: str, offset: int
) -> Iterator[RawChunk]:
    skipped: dict[int, tuple[str, str]] = {}
    expected = len(names)

    def on_invalid(row: pacsv.InvalidRow) -> str:
        if row.actual_columns < expected:
            why = f"too few columns: expected {expected}, found {row.actual_columns} (line truncated?)"
        else:
            why = f"too many columns: expected {expected}, found {row.actual_columns} (unquoted delimiter in a value?)"
        skipped[row.number + offset] = (why, row.text)
        return "skip"

    _HELD_BY_ARROW.add(on_invalid)

    try:
        reader = pacsv.open_csv(
            blocks,
            read_options=pacsv.ReadOptions(column_names=names, use_threads=False, block_size=CSV_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, invalid_row_handler=on_invalid, ignore_empty_lines=False
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as err:
        if "Empty CSV file" in str(err):
            yield from _flush_skipped(path, file_index, skipped, blocks, offset + 1)
            return
        raise cannot_read(path, err) from None
    cursor = offset + 1
    file = str(path)
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except pa.ArrowException as err:
            raise cannot_read(path, err) from None
        table = pa.Table.from_batches([batch])
        lines = _row_lines(cursor, table.num_rows, skipped)
        end = int(lines[-1]) + 1 if len(lines) else cursor
        chunk = _split_flagged(table, lines, blocks.flagged, file, file_index, delimiter)
        bad = sorted(k for k in skipped if k < end)
        extra = quarantine_table(
            file, bad, [None] * len(bad), [skipped[k][0] for k in bad], [skipped.pop(k)[1] for k in bad]
        )
        chunk.quarantine = pa.concat_tables([chunk.quarantine, extra]).sort_by("line")
        cursor = end
        yield _as_written(chunk, blocks)
    yield from _flush_skipped(path, file_index, skipped, blocks, cursor)


def _flush_skipped(
    path: Path, file_index: int, skipped: dict[int, tuple[str, str]], blocks: _LineBlocks, cursor: int
) -> Iterator[RawChunk]:
    """Rejected rows after the last batch (e.g. a truncated final line) and flagged lines pyarrow never returned."""
    rest = sorted(skipped)
    reasons = {k: skipped[k] for k in rest}
    reasons.update({k: v for k, v in blocks.flagged.items() if k >= cursor})
    if not reasons:
        return
    keys = sorted(reasons)
    table = quarantine_table(
        str(path), keys, [None] * len(keys), [reasons[k][0] for k in keys], [reasons[k][1] for k in keys]
    )
    empty = pa.table({}, schema=pa.schema([]))
    chunk = RawChunk(
        table=empty, lines=np.zeros(0, np.int64), quarantine=table, file=str(path), file_index=file_index
    )
    yield _as_written(chunk, blocks)


def _as_written(chunk: RawChunk, blocks: _LineBlocks) -> RawChunk:
    """The chunk with the file's own line numbers and the line breaks back inside quoted values."""
    if not blocks.joined:
        return chunk
    chunk.lines = blocks.physical(chunk.lines)
    q = chunk.quarantine
    line, raw = q.schema.get_field_index("line"), q.schema.get_field_index("raw")
    q = q.set_column(line, QUARANTINE.field("line"), pa.array(blocks.physical(q["line"].to_numpy())))
    raw_text = pc.replace_substring(q["raw"], NEWLINE_IN_VALUE, "\n")
    chunk.quarantine = q.set_column(raw, QUARANTINE.field("raw"), raw_text)
    chunk.table = pa.table(
        {
            name: pc.replace_substring(chunk.table[name], NEWLINE_IN_VALUE, "\n")
            for name in chunk.table.column_names
        }
    )
    return chunk


def _row_lines(cursor: int, n: int, skipped: dict[int, tuple[str, str]]) -> np.ndarray:
    """Physical lines of n parsed rows starting at cursor, jumping over lines pyarrow rejected."""
    holes = np.fromiter((k - cursor for k in skipped if k >= cursor), np.int64)
    if not len(holes):
        return np.arange(cursor, cursor + n, dtype=np.int64)
    span = n + len(holes)
    keep = np.ones(span, bool)
    keep[holes[holes < span]] = False
    return np.flatnonzero(keep)[:n].astype(np.int64) + cursor


def _split_flagged(
    table: pa.Table,
    lines: np.ndarray,
    flagged: dict[int, tuple[str, str]],
    file: str,
    file_index: int,
    delimiter: str,
) -> RawChunk:
    """Move rows of flagged lines (empty, invalid UTF-8, broken quoting) to the quarantine."""
    mask = (
        np.isin(lines, np.fromiter(flagged, np.int64))
        if flagged and len(lines)
        else np.zeros(len(lines), bool)
    )
    if not mask.any():
        return RawChunk(table, lines, quarantine_table(file, [], [], [], []), file, file_index, delimiter)
    hit = [int(k) for k in lines[mask]]
    reasons = [flagged.pop(k) for k in hit]
    quarantine = quarantine_table(
        file, hit, [None] * len(hit), [r[0] for r in reasons], [r[1] for r in reasons]
    )
    keep = pa.array(~mask)
    return RawChunk(table.filter(keep), lines[~mask], quarantine, file, file_index, delimiter)
