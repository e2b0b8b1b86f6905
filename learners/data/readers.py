"""Streaming readers: Parquet here, CSV in csv_lines.py, JSON lines in json_lines.py; and what they
share: opening a file (plain, gzip, or a zip archive's one file), its format, the column check.

Each reader yields ``RawChunk``s: the structurally sound rows of a slice of one file as an Arrow table,
the exact 1-based physical line of every row, and the rows that are broken as text (wrong column count,
empty line, invalid UTF-8, broken quoting, bad JSON) already in the QUARANTINE schema. Invariant per
chunk: rows_read == table.num_rows + quarantine.num_rows. Memory stays bounded by the chunk size.
"""

from __future__ import annotations

import difflib
import gzip
import json
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from learners.data.mapping import SourceMapping
from learners.data.schema import QUARANTINE

PARQUET_BATCH_ROWS = 1 << 18
MISSING_WORDS = ("NA", "N/A", "null", "NULL", "None", "nan", "NaN", "\\N", "(not set)")
"""Texts that exports write for "no value" in an id column (R and pandas' NA, SQL's NULL, MySQL's \\N,
Google Analytics' (not set)): read as empty."""

# Known extensions -> format; each may also end in .gz.
EXTENSION_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
DELIMITERS = (",", "\t", ";", "|")
"""The CSV delimiters a header is checked for (and the mapping draft detects)."""
READ_ERRORS = (OSError, EOFError, zlib.error, pa.ArrowException)


@dataclass
class RawChunk:
    """Rows of one slice of a file before canonicalization."""

    table: pa.Table
    """The usable rows, one column per source column (text columns for CSV and JSONL)."""
    lines: np.ndarray
    """int64 1-based physical line (CSV/JSONL) or row (Parquet) of each table row."""
    quarantine: pa.Table
    """Rows of this slice already rejected by the reader (QUARANTINE schema)."""
    file: str
    """The file the rows come from."""
    file_index: int
    """Position of the file in the input list (the high bits of src_order)."""
    delimiter: str | None = None
    """CSV delimiter to rebuild a row's raw text; None means the raw text is shown as JSON."""

    @property
    def rows_read(self) -> int:
        """Data rows of this slice (usable + rejected)."""
        return self.table.num_rows + self.quarantine.num_rows


def file_format(path: Path, mapping_format: str | None = None) -> str | None:
    """The format of a file: the mapping's, else from its extension (inside ``.gz`` or ``.zip``, or a
    zip archive's one file's); None when unknown."""
    if mapping_format is not None:
        return mapping_format
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".zip"):
        suffixes = suffixes[:-1]
        if not suffixes and path.suffix.lower() == ".zip":
            try:
                suffixes = [Path(_zip_member_name(path)).suffix.lower()]
            except (OSError, ValueError, zipfile.BadZipFile):
                return None
    return EXTENSION_FORMATS.get(suffixes[-1]) if suffixes else None


def _zip_member_name(path: Path) -> str:
    """The one file a zip archive holds (Kaggle ships logs so); a workbook or several files cannot be
    read as one log."""
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/") and not n.startswith("__MACOSX/")]
    if "[Content_Types].xml" in names:
        raise ValueError(
            f"{path}: an Excel workbook, not a log file; fix: save each sheet as CSV (UTF-8) and pass those"
        )
    if len(names) != 1:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise ValueError(
            f"{path}: a zip archive of {len(names)} files ({shown}); fix: unzip it and pass the folder"
        )
    return names[0]


def quarantine_table(
    file: str, lines: list[int], columns: list[str | None], reasons: list[str], raws: list[str | None]
) -> pa.Table:
    """QUARANTINE rows from parallel lists."""
    return pa.table(
        {
            "file": pa.array([file] * len(lines), pa.string()),
            "line": pa.array(lines, pa.int64()),
            "column": pa.array(columns, pa.string()),
            "reason": pa.array(reasons, pa.string()),
            "raw": pa.array(raws, pa.string()),
        },
        schema=QUARANTINE,
    )


def cannot_read(path: Path, err: BaseException) -> ValueError:
    return ValueError(
        f"{path}: cannot read the file ({type(err).__name__}: {err}); fix: check that it exists, is readable and is not truncated or corrupt"
    )


def open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, unpacked from gzip or from a zip archive's one file."""
    try:
        with open(path, "rb") as probe:
            magic = probe.read(4)
        if magic[:2] == GZIP_MAGIC:
            return gzip.open(path, "rb")  # noqa: SIM115
        if magic == ZIP_MAGIC:
            return zipfile.ZipFile(path).open(_zip_member_name(path))  # noqa: SIM115
        return open(path, "rb")  # noqa: SIM115
    except (OSError, zipfile.BadZipFile) as err:
        raise cannot_read(path, err) from None


def text_of(line: bytes) -> str:
    return line.decode("utf-8", errors="backslashreplace")


def is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def other_delimiter(text: str, delimiter: str | None) -> str | None:
    """The delimiter of ``DELIMITERS`` other than ``delimiter`` that ``text`` (one unsplit row) holds
    most often, None when it holds none: what a row read with the wrong delimiter was split on."""
    counts = {d: text.count(d) for d in DELIMITERS if d != delimiter}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else None


def delimiter_fix(delimiter: str) -> str:
    """The mapping line that reads a file split on ``delimiter``."""
    return f"write csv: {{delimiter: {json.dumps(delimiter)}}} in the mapping"


SHOWN_COLUMNS = 30
"""Columns an error names of a file's header (an Adobe feed has 294; a data row read as one, more)."""


def check_columns(
    path: Path,
    where: str,
    available: list[str],
    mapping: SourceMapping,
    delimiter: str | None = None,
    fix: str = "correct the mapping or the file",
    columns: list[str] | None = None,
) -> None:
    """Stop at the first of ``columns`` (default: every column the mapping reads) not ``available``."""
    other = (
        other_delimiter(available[0], delimiter) if delimiter is not None and len(available) == 1 else None
    )
    if other is not None:
        fix = f"the header splits on {other!r}, not {delimiter!r}: {delimiter_fix(other)}"
    for column in mapping.columns_used() if columns is None else columns:
        if column not in available:
            close = difflib.get_close_matches(column, available, n=1)
            guess = f"did you mean '{close[0]}'? " if close else ""
            if "." in column and delimiter is not None:
                guess += "a dotted path reads nested JSON lines, not a CSV column; "
            shown = ", ".join(available[:SHOWN_COLUMNS]) or "(none)"
            if len(available) > SHOWN_COLUMNS:
                shown += f", ... ({len(available)} in all)"
            raise ValueError(
                f"{path}: {where} has no column '{column}' named by mapping {mapping.source}; "
                f"available columns: {shown}; fix: {guess}{fix}"
            )


def read_parquet(
    path: Path, file_index: int, mapping: SourceMapping, columns: list[str] | None = None
) -> Iterator[RawChunk]:
    """Stream a Parquet file in row batches of the mapped columns (or ``columns``); `line` is the 1-based row."""
    try:
        parquet = pq.ParquetFile(path)
    except READ_ERRORS as err:
        raise cannot_read(path, err) from None
    check_columns(path, "the Parquet schema", parquet.schema_arrow.names, mapping)
    start = 1
    empty = quarantine_table(str(path), [], [], [], [])
    wanted = mapping.columns_used() if columns is None else columns
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
            n = batch.num_rows
            yield RawChunk(
                pa.Table.from_batches([batch]),
                np.arange(start, start + n, dtype=np.int64),
                empty,
                str(path),
                file_index,
            )
            start += n
    except READ_ERRORS as err:
        raise cannot_read(path, err) from None


def read_raw(
    path: Path, file_index: int, mapping: SourceMapping, columns: list[str] | None = None
) -> Iterator[RawChunk]:
    """Stream one file by its format (the mapping's, else its extension; CSV when unknown).

    ``columns`` (Parquet and JSON lines) reads those source columns instead of the mapping's; a CSV
    table always holds every column of the file.
    """
    if not path.is_file():
        raise cannot_read(
            path,
            FileNotFoundError("no such file")
            if not path.exists()
            else IsADirectoryError("not a regular file"),
        )
    fmt = file_format(path, mapping.format) or "csv"
    if fmt == "parquet":
        return read_parquet(path, file_index, mapping, columns)
    if fmt == "jsonl":
        # Imported here: json_lines reads with this module's primitives (RawChunk, check_columns, ...).
        from learners.data.json_lines import read_jsonl

        return read_jsonl(path, file_index, mapping, columns)
    from learners.data.csv_lines import read_csv  # reads with this module's primitives too

    return read_csv(path, file_index, mapping)
