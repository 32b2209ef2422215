"""Readers: CSV / Parquet files and in-memory DataFrames become :class:`Source` objects.

CSV cells are read as strings (``dtype=str``, no NA guessing) so ids such as
``007``, ``NA``, ``null`` or ``1e5`` reach the graph exactly as written; numbers
and time stamps are parsed later, column by column, in :mod:`gnnrec.ingest.validate`.
Parquet keeps its own column types (ids are turned into strings there too).
"""

from __future__ import annotations

import contextlib
import csv
import io
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from gnnrec.ingest.errors import SourceFileError

SourceKind = Literal["interactions", "social", "items", "users", "taggings"]
SOURCE_KINDS: tuple[SourceKind, ...] = ("users", "items", "interactions", "social", "taggings")

_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz", ".tsv", ".tsv.gz", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parquet.gzip", ".parquet.gz", ".parquet.snappy")


@dataclass(frozen=True)
class Source:
    """One table to ingest: what it holds (``kind``), its rows, and where it came from.

    ``frame`` holds the original columns in their original order; the data row
    number reported in reject files is the 1-based position of a row in ``frame``.
    """

    kind: SourceKind
    frame: pd.DataFrame
    name: str
    malformed: dict[int, str] = field(default_factory=dict)  # row -> why the reader refused it

    @classmethod
    def from_frame(cls, kind: SourceKind, frame: pd.DataFrame, name: str = "") -> Source:
        """Wrap an in-memory DataFrame (its index is dropped; rows are numbered 1..n)."""
        if kind not in SOURCE_KINDS:
            raise ValueError(f"unknown source kind {kind!r}; expected one of {SOURCE_KINDS}")
        _refuse_repeated(name or f"<{kind} DataFrame>", [str(c) for c in frame.columns])
        return cls(kind, frame.reset_index(drop=True), name or f"<{kind} DataFrame>")


def file_format(path: Path) -> Literal["csv", "parquet"]:
    """``csv`` or ``parquet`` from the file name; anything else is a :class:`SourceFileError`."""
    name = path.name.lower()
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    raise SourceFileError(
        f"{path}: unknown file type; expected CSV ({', '.join(_CSV_SUFFIXES)}) "
        f"or Parquet ({', '.join(_PARQUET_SUFFIXES)})"
    )


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV (strings only, ``,`` or tab for ``.tsv``) or Parquet file.

    Raises :class:`SourceFileError` naming the file when it is missing, empty,
    not decodable as UTF-8 or malformed (the parser's line number is kept). Rows of a
    CSV whose field count differs from the header's are kept (see :func:`read_csv_file`;
    :func:`read_source` passes them on to validation as rejected rows).
    """
    return _read(Path(path))[0]


def _read(path: Path) -> tuple[pd.DataFrame, dict[int, str]]:
    if not path.exists():
        raise SourceFileError(f"{path}: file not found")
    if not path.is_file():
        raise SourceFileError(f"{path}: not a regular file")
    fmt = file_format(path)
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(path)
            _refuse_repeated(path, [str(c) for c in frame.columns])
            return frame, {}
        return read_csv_file(path, sep="\t" if ".tsv" in path.name.lower() else ",")
    except SourceFileError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise SourceFileError(f"{path}: the file is empty (no header row)") from exc
    except UnicodeDecodeError as exc:
        raise SourceFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except (OSError, ValueError, csv.Error, pd.errors.ParserError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceFileError(f"{path}: cannot read {fmt}: {first_line}") from exc
    except Exception as exc:  # pyarrow raises its own types for corrupt Parquet
        raise SourceFileError(f"{path}: cannot read {fmt}: {exc}") from exc


def _refuse_repeated(name: object, columns: list[str]) -> None:
    """A :class:`SourceFileError` naming the first column that appears more than once."""
    counts = Counter(columns)
    for column, n in counts.items():
        if n > 1:
            raise SourceFileError(f"{name}: column {column!r} appears {n} times in the header; "
                                  f"every column needs its own name")


@contextlib.contextmanager
def _csv_rows(path: Path, sep: str) -> Iterator[Iterator[list[str]]]:
    """The file's non-blank records as :mod:`csv` reads them (header first); blank lines
    are skipped, as pandas skips them."""
    from pandas.io.common import get_handle

    limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)
    try:
        with get_handle(path, "r", encoding="utf-8-sig", compression="infer") as handles:
            yield (r for r in csv.reader(handles.handle, delimiter=sep) if r)
    finally:
        csv.field_size_limit(limit)


def _scan_fields(path: Path, sep: str) -> tuple[list[str], dict[int, int]]:
    """The header and the data rows whose field count differs from it (row -> count)."""
    with _csv_rows(path, sep) as rows:
        header = next(rows, [])
        ragged = {row: len(fields) for row, fields in enumerate(rows, start=1)
                  if len(fields) != len(header)}
    return header, ragged


def read_csv_file(path: str | Path, sep: str = ",") -> tuple[pd.DataFrame, dict[int, str]]:
    """A CSV file as strings (:func:`read_csv_strings`) plus its malformed rows.

    A row with more or fewer fields than the header is kept in the frame (its first
    fields, padded with ``""``) and named in the second result (1-based data row ->
    reason), so validation rejects it with the others instead of failing the file. A
    header naming one column twice is a :class:`SourceFileError` naming the column.
    """
    header, ragged = _scan_fields(Path(path), sep)
    if not header:
        raise pd.errors.EmptyDataError("no header row")
    _refuse_repeated(path, header)
    if not ragged:
        return read_csv_strings(path, sep=sep), {}
    # The frame comes from the same reader as the scan, so that its rows are the rows the
    # reasons name (pandas' parser skips lines the csv module keeps, such as " ").
    width = len(header)
    with _csv_rows(Path(path), sep) as rows:
        next(rows)
        frame = pd.DataFrame([(r + [""] * width)[:width] for r in rows], columns=header,
                             dtype=str)
    reasons = {row: f"row has {n} fields, the header has {len(header)}"
               for row, n in ragged.items()}
    return frame, reasons


def read_csv_strings(source: str | Path | io.IOBase, sep: str = ",") -> pd.DataFrame:
    """Every cell as a string, empty cells as ``""``: nothing is guessed or converted."""
    return pd.read_csv(
        source,  # type: ignore[arg-type]
        sep=sep,
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        encoding="utf-8-sig",
    )


def read_source(kind: SourceKind, path: str | Path) -> Source:
    """Read one file as a :class:`Source` of the given kind (ragged CSV rows in ``malformed``)."""
    frame, malformed = _read(Path(path))
    return Source(kind, frame.reset_index(drop=True), str(path), malformed)


def sources_from_files(
    *,
    interactions: str | Path | None = None,
    social: str | Path | None = None,
    items: str | Path | None = None,
    users: str | Path | None = None,
    taggings: str | Path | None = None,
) -> list[Source]:
    """Read every given file; all are read (and so checked) before anything is written."""
    given: dict[SourceKind, str | Path | None] = {
        "users": users, "items": items, "interactions": interactions, "social": social,
        "taggings": taggings,
    }
    return [read_source(kind, path) for kind, path in given.items() if path is not None]


def read_atomic(opener: Callable[[], io.IOBase], name: str) -> pd.DataFrame:
    """Read a RecBole atomic file (tab-separated, header ``field:type``) as strings.

    The ``:type`` suffixes are dropped from the column names and a trailing
    carriage return (files written on Windows) is stripped from every cell.
    """
    try:
        with opener() as handle:
            frame = read_csv_strings(handle, sep="\t")
    except Exception as exc:
        raise SourceFileError(f"{name}: cannot read RecBole atomic file: {exc}") from exc
    frame.columns = [str(col).split(":", 1)[0].strip() for col in frame.columns]
    for col in frame.columns:
        frame[col] = frame[col].str.rstrip("\r")
    return frame
