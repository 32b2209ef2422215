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
