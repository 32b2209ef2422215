"""Initial bulk load with Neo4j's own offline importer (``neo4j-admin database import full``).

The importer writes a new store directly from CSV files, far faster than transactions,
but only into an empty database and only while the server is stopped. This module owns
the importer's side of ``gnnrec ingest --bulk``:

* :class:`ImportFiles` writes node and relationship files in the importer's CSV format
  (``id:ID(User)``, ``:START_ID(User)``, typed property columns such as ``weight:double``;
  RFC 4180 quoting, so ids are stored verbatim; values with line breaks are declared as
  multi-line fields of their file only);
* :func:`bulk_load` stops the local server, runs the importer on the database with
  ``--overwrite-destination`` (the caller has checked it is empty), starts the server
  again, creates the uniqueness constraints and checks that the database holds exactly
  the rows of the files. When the importer fails, the half-written store is removed, the
  server is started on an empty database and the error carries the importer's output.

The importer (``org.neo4j.importer.ImportCommand``, artifact ``org.neo4j:neo4j-import-tool``)
comes with the server's own jars (a dependency of ``org.neo4j:neo4j``), and is run through
``org.neo4j.cli.AdminTool`` like ``neo4j-admin`` would run it.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from pandas.api import types as ptypes

from gnnrec.errors import GnnrecError
from gnnrec.graph.client import GraphClient
from gnnrec.graph.load import graph_stats
from gnnrec.graph.schema import ensure_schema
from gnnrec.graph.server import LocalNeo4j

# Between the elements of a list-valued property (ASCII unit separator: never in text).
ARRAY_DELIMITER = "\x1f"
_COUNT_NODES = "MATCH (n) RETURN count(n) AS n"


class BulkImportError(GnnrecError):
    """The offline import cannot run, or Neo4j's importer failed."""


@dataclass(frozen=True)
class ImportFile:
    """One CSV file for the importer: ``rows`` nodes of ``name`` (a label) or
    relationships of ``name`` (a type); ``multiline`` when a value holds a line break."""

    path: Path
    entity: Literal["nodes", "relationships"]
    name: str
    rows: int
    multiline: bool


def count_nodes(client: GraphClient) -> int:
    """Nodes in the database, whatever their labels (from the count store)."""
    return int(client.read(_COUNT_NODES)[0]["n"])


# -- property columns ---------------------------------------------------------------
def _strings(values: Any) -> pa.Array:
    return pa.array(values, type=pa.string(), from_pandas=True)


def _has_line_break(array: pa.Array) -> bool:
    if pa.types.is_list(array.type):
        array = pc.list_flatten(array)
    if not pa.types.is_string(array.type) or len(array) == 0:
        return False
    return bool(pc.any(pc.match_substring(array, "\n")).as_py()
                or pc.any(pc.match_substring(array, "\r")).as_py())


def _iso(values: pd.Series) -> pa.Array:
    text = values.map(lambda v: v.isoformat(), na_action="ignore")
    return _strings(text.astype(object).where(values.notna(), None).to_numpy())


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (
        isinstance(value, float) and value != value)


_ARRAY_TYPES = {"string": "string[]", "integer": "long[]", "floating": "double[]",
                "mixed-integer-float": "double[]", "boolean": "boolean[]"}


def _list_column(name: str, values: pd.Series, where: str) -> tuple[str, pa.Array]:
    """A column of lists as one of the importer's array types (one delimited text cell)."""
    cells: list[list[Any] | None] = []
    for value in values.tolist():
        if isinstance(value, list | tuple | np.ndarray):
            cells.append(list(value))
        elif _missing(value):
            cells.append(None)
        else:
            raise BulkImportError(f"{where}: property {name!r} mixes lists and single values, "
                                  "which the bulk import cannot write; load it without --bulk")
    flat = pd.Series([x for cell in cells if cell is not None for x in cell], dtype=object)
    kind = pd.api.types.infer_dtype(flat, skipna=False) if len(flat) else "string"
    if kind not in _ARRAY_TYPES:
        raise BulkImportError(f"{where}: property {name!r} holds lists of {kind} values, which "
                              "the bulk import cannot write; load it without --bulk")
    if kind == "string" and flat.str.contains(ARRAY_DELIMITER, regex=False).any():
        raise BulkImportError(f"{where}: property {name!r} holds text with the character "
                              "U+001F, which the bulk import uses between list elements")

    def text(x: Any) -> str:
        return ("true" if x else "false") if kind == "boolean" else _number_text(x)

    joined = [None if cell is None else ARRAY_DELIMITER.join(map(text, cell)) for cell in cells]
    return f"{name}:{_ARRAY_TYPES[kind]}", _strings(joined)


def _number_text(x: Any) -> str:
    if isinstance(x, float | np.floating) and np.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"  # what Java's Double.parseDouble reads
    return str(x)


def _doubles(values: Any) -> pa.Array:
    array = np.asarray(values, dtype=np.float64)
    if np.isinf(array).any():  # the CSV writer's "inf" is not a number for the importer
        return _strings([None if np.isnan(x) else _number_text(x) for x in array.tolist()])
    return pa.array(array, type=pa.float64(), from_pandas=True)


def property_column(name: str, values: pd.Series, where: str = "") -> tuple[str, pa.Array]:
    """``(header, values)`` of one property column; missing values are not stored.

    Integers are ``long``, floats ``double``, booleans ``boolean``, text ``string``,
    time zone-aware times ``datetime`` and naive ones ``localdatetime`` (what the
    transactional ingest stores for the same values), lists the matching array type.
    """
    if ":" in name:
        raise BulkImportError(f"{where}: column {name!r} cannot be a property in a bulk import "
                              "(the importer's header reads ':' as the start of a type); "
                              "rename it or load without --bulk")
    dtype = values.dtype
    if ptypes.is_bool_dtype(dtype):
        return f"{name}:boolean", pa.array(values, type=pa.bool_(), from_pandas=True)
    if ptypes.is_integer_dtype(dtype):
        return f"{name}:long", pa.array(values, type=pa.int64(), from_pandas=True)
    if ptypes.is_float_dtype(dtype):
        return f"{name}:double", _doubles(values.to_numpy(dtype=np.float64, na_value=np.nan))
    if ptypes.is_datetime64_any_dtype(dtype):
        zoned = getattr(values.dt, "tz", None) is not None
        return f"{name}:{'datetime' if zoned else 'localdatetime'}", _iso(values)
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind in ("string", "empty"):
        return name, _strings(values.to_numpy(dtype=object))
    cells = [None if _missing(v) else v for v in values.tolist()]
    if kind == "boolean":
        return f"{name}:boolean", pa.array(cells, type=pa.bool_())
    if kind == "integer":
        return f"{name}:long", pa.array(cells, type=pa.int64())
    if kind in ("floating", "mixed-integer-float"):
        return f"{name}:double", _doubles([np.nan if v is None else v for v in cells])
    if kind == "datetime":
        series = pd.to_datetime(values)
        return property_column(name, series, where)
    if values.map(lambda v: isinstance(v, list | tuple | np.ndarray)).any():
        return _list_column(name, values, where)
    raise BulkImportError(f"{where}: property {name!r} holds {kind} values, which the bulk "
                          "import cannot write; load it without --bulk")


# -- files ------------------------------------------------------------------------
class ImportFiles:
    """The importer's CSV files, written into ``folder`` (one file per call)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files: list[ImportFile] = []

    def _write(self, entity: Literal["nodes", "relationships"], name: str,
               columns: dict[str, pa.Array]) -> ImportFile:
        table = pa.table(columns)
        path = self.folder / f"{entity}-{len(self.files):02d}-{name}.csv"
        pcsv.write_csv(table, path)
        multiline = any(_has_line_break(col) for col in table.columns)
        file = ImportFile(path, entity, name, table.num_rows, multiline)
        self.files.append(file)
        return file

    def nodes(self, label: str, key: str, ids: Any,
              attributes: pd.DataFrame | None = None) -> ImportFile:
        """``label`` nodes keyed by ``key`` (stored as a text property) with attributes."""
        columns = {f"{key}:ID({label})": _strings(ids)}
        if attributes is not None:
            for col in attributes.columns:
                header, array = property_column(str(col), attributes[col].reset_index(drop=True),
                                                f"{label} nodes")
                columns[header] = array
        return self._write("nodes", label, columns)

    def relationships(self, rel_type: str, start: tuple[str, Any], end: tuple[str, Any],
                      properties: dict[str, pd.Series] | None = None) -> ImportFile:
        """``rel_type`` relationships from ``start = (label, ids)`` to ``end = (label, ids)``."""
        columns = {f":START_ID({start[0]})": _strings(start[1]),
                   f":END_ID({end[0]})": _strings(end[1])}
        for name, values in (properties or {}).items():
            header, array = property_column(name, values.reset_index(drop=True), rel_type)
            columns[header] = array
        return self._write("relationships", rel_type, columns)

    def counts(self) -> dict[str, int]:
        """Rows per label and relationship type over all files."""
        out: dict[str, int] = {}
        for f in self.files:
            out[f.name] = out.get(f.name, 0) + f.rows
        return out


# -- running the importer ---------------------------------------------------------
def import_args(files: list[ImportFile], database: str, report: Path) -> list[str]:
    """The ``neo4j-admin database import full`` arguments for ``files``."""
    args = ["database", "import", "full", "--overwrite-destination=true",
            "--bad-tolerance=0", "--skip-bad-relationships=false",
            "--skip-duplicate-nodes=false", "--id-type=string",
            f"--array-delimiter=U+{ord(ARRAY_DELIMITER):04X}",
            f"--max-off-heap-memory={os.environ.get('GNNREC_IMPORT_MEMORY', '2g')}"]
    multiline = [str(f.path) for f in files if f.multiline]
    if multiline:
        args += ["--multiline-fields-format=v2", f"--multiline-fields={','.join(multiline)}"]
    args += [f"--{f.entity}={f.name}={f.path}" for f in files]
    # a single-valued option between the (variadic) file lists and the database name
    return [*args, f"--report-file={report}", database]


def _expected(files: ImportFiles) -> dict[str, dict[str, int]]:
    nodes: dict[str, int] = {}
    rels: dict[str, int] = {}
    for f in files.files:
        part = nodes if f.entity == "nodes" else rels
        part[f.name] = part.get(f.name, 0) + f.rows
    return {"nodes": nodes, "relationships": rels}


def bulk_load(server: LocalNeo4j, files: ImportFiles, database: str = "neo4j") -> dict[str, Any]:
    """Stop ``server``, import ``files`` into ``database``, start it, create the schema.

    The database must be empty (the caller checks it while the server runs). Returns
    ``{"timings": {...}, "importer": {...}}``; raises :class:`BulkImportError` with the
    importer's output when it fails, after restarting the server on an empty database.
    """
    from gnnrec.graph.settings import Neo4jSettings

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    server.stop()
    timings["stop_server"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = files.folder / "import.report"
    proc = server.admin(*import_args(files.files, database, report),
                        heap=os.environ.get("GNNREC_IMPORT_HEAP", "1g"))
    timings["import"] = time.perf_counter() - t0
    failed = proc.returncode != 0
    if failed:  # the store may be half written: start again from an empty database
        for folder in server.database_dirs(database):
            shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    server.start()
    timings["start_server"] = time.perf_counter() - t0
    if failed:
        bad = report.read_text(errors="replace")[-2000:] if report.exists() else ""
        output = (proc.stdout[-3000:] + proc.stderr[-3000:]).strip()
        raise BulkImportError(f"neo4j-admin database import failed (exit {proc.returncode}); "
                              f"the database was left empty and the server restarted.\n"
                              f"{output}\n{bad}".rstrip())
    settings = Neo4jSettings(server.bolt_uri, "neo4j", server.password(), database)
    with GraphClient(settings) as client:
        t0 = time.perf_counter()
        ensure_schema(client)
        timings["schema"] = time.perf_counter() - t0
        stats = graph_stats(client)
    expected = _expected(files)
    for part in ("nodes", "relationships"):
        held = {**stats[part], **stats["tombstones"]} if part == "nodes" else stats[part]
        for name, n in expected[part].items():
            if held.get(name, 0) != n:
                raise BulkImportError(
                    f"the import wrote {held.get(name, 0):,} {name} {part} but the "
                    f"files hold {n:,}; see {report}")
    summary = {"nodes": sum(expected["nodes"].values()),
               "relationships": sum(expected["relationships"].values()),
               "multiline_files": [f.path.name for f in files.files if f.multiline]}
    return {"timings": timings, "importer": summary}
