"""``gnnrec cypher``: parameters, read-only default, --write, table and JSON output."""

from __future__ import annotations

import json

import pytest

from gnnrec.cli import main
from gnnrec.graph.cli import format_table, parse_param
from gnnrec.graph.client import GraphClient
from gnnrec.graph.settings import Neo4jSettings


def test_parse_param_types() -> None:
    assert parse_param("user=42") == ("user", "42")  # ids are text by default
    assert parse_param("k:int=5") == ("k", 5)
    assert parse_param("w:float=0.5") == ("w", 0.5)
    assert parse_param("on:bool=true") == ("on", True)
    assert parse_param("ids:json=[1, 2]") == ("ids", [1, 2])
    assert parse_param("q=a=b") == ("q", "a=b")


@pytest.mark.parametrize("bad", ["novalue", "=x", "k:int=five", "k:complex=1"])
def test_parse_param_rejects(bad: str) -> None:
    from gnnrec.errors import GnnrecError

    with pytest.raises(GnnrecError):
        parse_param(bad)


def test_format_table() -> None:
    text = format_table([{"a": "x", "b": [1, 2]}, {"a": "longer", "b": None}])
    lines = text.splitlines()
    assert lines[0].split() == ["a", "b"]
    assert "[1, 2]" in text and lines[-1] == "(2 rows)"
    assert format_table([]) == "(no rows)"


@pytest.mark.integration
def test_cypher_read_write_and_json(
    graph_client: GraphClient, neo4j_env: Neo4jSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    weird = "x'}) DETACH DELETE n //"
    # A write without --write is refused by the read transaction.
    assert main(["cypher", "CREATE (:User {id: $id})", "-p", f"id={weird}"]) == 2
    assert "--write" in capsys.readouterr().err
    assert main(["cypher", "CREATE (:User {id: $id})", "-p", f"id={weird}", "--write"]) == 0
    capsys.readouterr()
    assert main(["cypher", "MATCH (u:User) RETURN u.id AS id", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"id": weird}]
    query = "MATCH (u:User {id: $id}) RETURN count(u) AS n"
    assert main(["cypher", query, "-p", f"id={weird}"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[2].strip() == "1"


# -- read-only means read-only; --write means auto-commit (issue 21, items 7 and 8) -------------
@pytest.mark.integration
@pytest.mark.parametrize("query", [
    "TERMINATE TRANSACTIONS 'neo4j-transaction-999999'",
    "ALTER CURRENT USER SET PASSWORD FROM 'a' TO 'bcdefghij'",
    "CALL db.clearQueryCaches()",
    "LOAD CSV FROM 'file:///nothing.csv' AS row RETURN row",
    "CREATE (:User {id: 'x'})",
])
def test_read_only_mode_refuses_before_running(
    query: str, graph_client: GraphClient, neo4j_env: Neo4jSettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["cypher", query]) == 2
    err = capsys.readouterr().err
    assert "--write" in err and len(err.strip().splitlines()) == 1, err
    assert "refused" in err or "write" in err


@pytest.mark.integration
def test_load_csv_from_a_url_never_leaves_the_machine(
    graph_client: GraphClient, neo4j_env: Neo4jSettings, local_neo4j: object,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import http.server
    import threading

    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"a,b\n1,2\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/x.csv"
    try:
        query = "LOAD CSV FROM $url AS row RETURN row"
        assert main(["cypher", query, "-p", f"url={url}"]) == 2  # read-only: refused
        assert "LOAD CSV" in capsys.readouterr().err
        if local_neo4j is not None:  # the local server refuses URLs even with --write
            assert main(["cypher", query, "-p", f"url={url}", "--write"]) == 2
            assert "blocked" in capsys.readouterr().err
            assert hits == []
    finally:
        server.shutdown()


@pytest.mark.integration
def test_read_only_mode_still_reads(graph_client: GraphClient, neo4j_env: Neo4jSettings,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    graph_client.write("CREATE (:User {id: 'r1'})")
    for query in ("MATCH (u:User) RETURN u.id AS id", "PROFILE MATCH (u:User) RETURN u.id AS id",
                  "CYPHER 5 MATCH (u:User) RETURN u.id AS id", "SHOW TRANSACTIONS YIELD status",
                  "CALL db.labels() YIELD label RETURN label"):
        assert main(["cypher", query, "--json"]) == 0, capsys.readouterr().err
        capsys.readouterr()


@pytest.mark.integration
def test_write_runs_in_auto_commit_so_call_in_transactions_works(
    graph_client: GraphClient, neo4j_env: Neo4jSettings, capsys: pytest.CaptureFixture[str],
) -> None:
    query = ("UNWIND range(1, 250) AS n CALL (n) { CREATE (:Item {id: toString(n)}) } "
             "IN TRANSACTIONS OF 100 ROWS")
    assert main(["cypher", query, "--write"]) == 0, capsys.readouterr().err
    assert graph_client.read("MATCH (i:Item) RETURN count(i) AS n") == [{"n": 250}]


@pytest.mark.integration
def test_neo4j_reset_asks_first(graph_client: GraphClient, neo4j_env: Neo4jSettings,
                                monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    import io

    graph_client.write("UNWIND range(1, 50) AS n CREATE (:User {id: toString(n)})"
                       "-[:INTERACTED]->(:Item {id: toString(n)})")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no terminal, no --yes: refused
    assert main(["neo4j", "reset"]) == 2
    assert "--yes" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("no\n"))
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    assert main(["neo4j", "reset"]) == 2
    assert graph_client.read("MATCH (n) RETURN count(n) AS n") == [{"n": 100}]
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    assert main(["neo4j", "reset"]) == 0
    assert graph_client.read("MATCH (n) RETURN count(n) AS n") == [{"n": 0}]
    out = capsys.readouterr().out
    assert "100 nodes" in out and "50 relationships" in out
