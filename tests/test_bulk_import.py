"""``gnnrec ingest --bulk``: Neo4j's offline importer behind the ingest pipeline's checks.

Unit tests (no server) cover the importer's file format; the integration tests run the
real ``neo4j-admin database import full`` on a local server of their own (it is stopped
and started by the import) and check that the bulk path builds exactly the graph the
MERGE path builds from the same files, refuses a non-empty database and an external
server, and leaves an empty, running database when the importer fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from gnnrec.cli import main
from gnnrec.graph.bulk import (
    ARRAY_DELIMITER,
    BulkImportError,
    ImportFiles,
    bulk_load,
    import_args,
    property_column,
)
from gnnrec.graph.client import GraphClient
from gnnrec.graph.server import LocalNeo4j, free_port
from gnnrec.graph.settings import Neo4jSettings, gnnrec_home
from gnnrec.ingest.pipeline import IngestOptions, ingest
from gnnrec.ingest.readers import sources_from_files

WEIRD_IDS = ['x\'}) DETACH DELETE n //', '"quoted", with comma', "two\nlines", "0042",
             "ünïcødé 用户 🎧", " padded ", "a\\b", "semi;colon"]


# -- the file format (no server) ------------------------------------------------------
def test_property_columns_get_the_importers_types() -> None:
    assert property_column("n", pd.Series([1, None], dtype="Int64"))[0] == "n:long"
    assert property_column("x", pd.Series([1.5, np.nan]))[0] == "x:double"
    assert property_column("b", pd.Series([True, False]))[0] == "b:boolean"
    header, values = property_column("s", pd.Series(["a", None], dtype=object))
    assert header == "s" and values.to_pylist() == ["a", None]
    header, values = property_column("l", pd.Series([["a", "b"], None], dtype=object))
    assert header == "l:string[]" and values.to_pylist() == [f"a{ARRAY_DELIMITER}b", None]
    header, values = property_column("f", pd.Series([np.inf, 1.0]))
    assert header == "f:double" and values.to_pylist() == ["Infinity", "1.0"]
    header, values = property_column("t", pd.Series(pd.to_datetime(["2020-01-01"], utc=True)))
    assert header == "t:datetime" and values.to_pylist() == ["2020-01-01T00:00:00+00:00"]
    with pytest.raises(BulkImportError, match="':'"):
        property_column("a:b", pd.Series([1]))
    with pytest.raises(BulkImportError, match="'d'.*without --bulk"):
        property_column("d", pd.Series([{"k": 1}], dtype=object))


def test_files_and_arguments(tmp_path: Path) -> None:
    files = ImportFiles(tmp_path)
    users = files.nodes("User", "id", np.array(["a", "b\nc"], dtype=object),
                        pd.DataFrame({"age": pd.Series([3, None], dtype="Int64")}))
    rels = files.relationships("FRIEND", ("User", ["a"]), ("User", ["b\nc"]))
    assert users.rows == 2 and users.multiline and rels.multiline
    assert users.path.read_text().splitlines()[0] == '"id:ID(User)","age:long"'
    assert files.counts() == {"User": 2, "FRIEND": 1}
    args = import_args(files.files, "neo4j", tmp_path / "r")
    assert args[:3] == ["database", "import", "full"] and args[-1] == "neo4j"
    assert f"--nodes=User={users.path}" in args and "--bad-tolerance=0" in args
    assert f"--multiline-fields={users.path},{rels.path}" in args


def test_external_server_is_refused_before_reading(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("NEO4J_URI", "bolt://db.example:7687")
    code = main(["ingest", "--bulk", "--no-progress", "--interactions",
                 str(tmp_path / "missing.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "NEO4J_URI" in err and "without --bulk" in err
    assert "missing.csv" not in err  # refused before the files were read


# -- the real importer --------------------------------------------------------------
def _sources(tmp_path: Path) -> dict[str, Path]:
    """Files with every kind of source, odd ids, attributes, taggings and bad rows."""
    w = WEIRD_IDS
    inter = pd.DataFrame({
        "user": [w[0], w[1], w[2], w[2], "u1", "", "u2", w[3], w[4], w[5], w[6], w[7], "u1"],
        "item": ["i1", w[1], "i2", "i2", w[2], "i1", "i1", "i3", w[4], "i1", "i2", "i3", "i9"],
        "weight": ["1", "2.5", "1", "2", "4", "1", "abc", "3", "1", "1", "2", "5", "1"],
        "timestamp": ["1700000000", "", "2020-01-01", "1600000000", "5", "", "", "7", "8",
                      "9", "10", "11", "12"],
    })
    users = pd.DataFrame({"user": ["u1", "u2", w[0], "u3"], "age": ["31", "", "45", "20"],
                          "zip": ["01002", "75001", "", "10115"],
                          "score": ["0.5", "1.25", "", "2"]})
    items = pd.DataFrame({"item": ["i1", "i2", "i3", w[1], "i4"],
                          "year": ["1999", "2001", "", "1980", "2010"],
                          "tags": ["rock|pop", "pop", "", "jazz|rock|jazz", "new"]})
    social = pd.DataFrame({"user": ["u1", "u2", "u3", w[2]], "friend": ["u2", "u1", "u3", w[6]]})
    taggings = pd.DataFrame({"user": ["u1", "u2", "u1", w[0]], "item": ["i1", "i1", "i1", "i5"],
                             "tag": ["rock", "rock", "mine", "odd tag"]})
    paths = {}
    for name, frame in (("interactions", inter), ("users", users), ("items", items),
                        ("social", social), ("taggings", taggings)):
        paths[name] = tmp_path / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    return paths


def _dump(client: GraphClient) -> tuple[list[Any], list[Any]]:
    """Every node and relationship with its properties, in a canonical order."""
    nodes = client.read("MATCH (n) RETURN labels(n) AS l, properties(n) AS p")
    rels = client.read("MATCH (a)-[r]->(b) RETURN type(r) AS t, coalesce(a.id, a.name) AS a, "
                       "coalesce(b.id, b.name) AS b, properties(r) AS p")
    key = lambda row: json.dumps(row, sort_keys=True, default=str)  # noqa: E731
    return sorted(nodes, key=key), sorted(rels, key=key)


@pytest.fixture(scope="module")
def bulk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNeo4j]:
    """A local server of this module's own: the bulk import stops and starts it."""
    home = Path(tmp_path_factory.mktemp("bulk-home"))
    os.environ.setdefault("GNNREC_NEO4J_LIB", str(gnnrec_home() / "neo4j-lib"))
    server = LocalNeo4j(home=home, bolt_port=free_port(), http_port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _client(server: LocalNeo4j) -> GraphClient:
    return GraphClient(Neo4jSettings(server.bolt_uri, "neo4j", server.password()))


@pytest.mark.integration
def test_failed_import_leaves_an_empty_running_database(
    bulk_server: LocalNeo4j, tmp_path: Path
) -> None:
    files = ImportFiles(tmp_path / "files")
    files.nodes("User", "id", ["u1"])
    files.relationships("FRIEND", ("User", ["u1"]), ("User", ["nobody"]))  # a missing node
    with pytest.raises(BulkImportError, match="import failed.*left empty"):
        bulk_load(bulk_server, files)
    assert bulk_server.pid() is not None
    with _client(bulk_server) as client:
        assert client.read("MATCH (n) RETURN count(n) AS n") == [{"n": 0}]


@pytest.mark.integration
def test_bulk_builds_the_graph_the_merge_path_builds(
    bulk_server: LocalNeo4j, graph_client: GraphClient, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    paths = _sources(tmp_path)
    argv = [f"--{kind}={path}" for kind, path in paths.items()]
    merge = ingest(graph_client, sources_from_files(**paths),
                   IngestOptions(reject_file=tmp_path / "merge-rejects.csv"))

    monkeypatch.delenv("NEO4J_URI", raising=False)
    monkeypatch.setenv("GNNREC_HOME", str(bulk_server.home))
    code = main(["ingest", "--bulk", "--no-progress", *argv,
                 "--reject-file", str(tmp_path / "bulk-rejects.csv")])
    out = capsys.readouterr().out
    assert code == 0
    bulk = json.loads(out)
    for key in ("read", "loaded", "rejected", "sources"):
        assert bulk[key] == merge[key], key
    assert bulk["read"] == bulk["loaded"] + bulk["rejected"] and bulk["rejected"] == 3
    assert (pd.read_csv(tmp_path / "bulk-rejects.csv").equals(
        pd.read_csv(tmp_path / "merge-rejects.csv")))
    assert bulk["bulk"]["multiline_files"]  # the id with a line break
    assert bulk_server.pid() is not None  # running again
    with _client(bulk_server) as client:
        assert _dump(client) == _dump(graph_client)
        constraints = {r["name"] for r in client.read("SHOW CONSTRAINTS YIELD name")}
    assert {"user_id", "item_id", "tag_name"} <= constraints

    # a second bulk load is refused: the database is no longer empty
    code = main(["ingest", "--bulk", "--no-progress", f"--interactions={paths['interactions']}"])
    err = capsys.readouterr().err
    assert code == 2 and "only into an empty database" in err and "nothing was written" in err
    with _client(bulk_server) as client:
        assert _dump(client) == _dump(graph_client)

