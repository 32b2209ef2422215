"""Forgetting holds in Neo4j, in export and in ingest (the real Neo4j, the CLI end to end).

``gnnrec forget U`` deletes U and leaves a tombstone, a keyed hash of the id
(:mod:`gnnrec.graph.forgotten`); serving replicas, reloads and restarts are checked in
``test_serve_sync.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from gnnrec.cli import main
from gnnrec.graph.client import GraphClient
from gnnrec.graph.load import existing_user_ids, graph_stats
from gnnrec.ingest.validate import FORGOTTEN_USER
from gnnrec.privacy import load_key, pseudonym

pytestmark = pytest.mark.integration

RATINGS = "user,item,weight\nann,i1,1\nann,i2,2\nbob,i1,1\ncat,i3,1\nbob,i3,4\n"


@pytest.fixture
def cli(graph_client: GraphClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The CLI on the test server with a temporary home (and so its own key); the home."""
    settings = graph_client.settings
    for key, value in (("NEO4J_URI", settings.uri), ("NEO4J_USER", settings.user),
                       ("NEO4J_PASSWORD", settings.password),
                       ("NEO4J_DATABASE", settings.database)):
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GNNREC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GNNREC_KEY_FILE", raising=False)
    return tmp_path / "home"


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def ratings(tmp_path: Path) -> Path:
    path = tmp_path / "ratings.csv"
    path.write_text(RATINGS)
    return path


def _ingest(capsys: pytest.CaptureFixture[str], ratings: Path, *extra: str
            ) -> tuple[int, str, str]:
    return _cli(capsys, "ingest", "--no-progress", "--interactions", str(ratings), *extra)


def _users(client: GraphClient) -> set[str]:
    return {r["id"] for r in client.read("MATCH (u:User) RETURN u.id AS id")}


def test_forget_leaves_a_tombstone_without_the_id(
    cli: Path, graph_client: GraphClient, tmp_path: Path, ratings: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _ingest(capsys, ratings)[0] == 0
    code, out, err = _cli(capsys, "forget", "ann")
    assert code == 0 and json.loads(out)["deleted"]["relationships"] == {"INTERACTED": 2}
    assert "tombstone" in err
    rows = graph_client.read("MATCH (f:Forgotten) RETURN properties(f) AS p")
    key = load_key(cli / "pseudonym.key", create=False)
    assert [r["p"]["key"] for r in rows] == [pseudonym("ann", key)]
    assert "ann" not in json.dumps(graph_client.read("MATCH (n) RETURN properties(n) AS p"))
    stats = graph_stats(graph_client)
    assert stats["tombstones"] == {"Forgotten": 1} and stats["nodes"]["User"] == 2
    # a user never forgotten leaves nothing: the second forget of ann is an error
    assert _cli(capsys, "forget", "ann")[0] == 2
    assert graph_client.read("MATCH (f:Forgotten) RETURN count(f) AS n") == [{"n": 1}]


def test_reingest_of_the_same_file_does_not_bring_a_forgotten_user_back(
    cli: Path, graph_client: GraphClient, tmp_path: Path, ratings: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    social = tmp_path / "friends.csv"
    social.write_text("user,friend\nann,bob\nbob,cat\n")
    first = ["ingest", "--no-progress", "--interactions", str(ratings), "--social", str(social)]
    assert _cli(capsys, *first)[0] == 0
    assert _cli(capsys, "forget", "ann")[0] == 0
    rejects = tmp_path / "rejects.csv"
    code, out, err = _cli(capsys, *first, "--reject-file", str(rejects))
    summary = json.loads(out)
    assert code == 0 and summary["read"] == summary["loaded"] + summary["rejected"]
    assert summary["rejected"] == 3  # ann's two ratings and her friendship
    assert summary["sources"]["interactions"]["reasons"] == {FORGOTTEN_USER: 2}
    table = pd.read_csv(rejects)
    assert table["row"].tolist() == [1, 2, 1] and set(table["reason"]) == {FORGOTTEN_USER}
    assert "ann" not in _users(graph_client) and _users(graph_client) == {"bob", "cat"}

    # the same with --pseudonymize: the tombstone names the stored pseudonym
    assert _ingest(capsys, ratings, "--pseudonymize", "--allow-forgotten")[0] == 0
    assert _cli(capsys, "forget", "bob", "--pseudonymize")[0] == 0
    code, out, _ = _ingest(capsys, ratings, "--pseudonymize", "--reject-file",
                           str(tmp_path / "r2.csv"))
    assert code == 0 and json.loads(out)["rejected"] == 2  # bob's two ratings
    key = load_key(cli / "pseudonym.key", create=False)
    assert pseudonym("bob", key) not in _users(graph_client)

    # --allow-forgotten loads the user again and removes the tombstone
    code, out, err = _cli(capsys, *first, "--allow-forgotten")
    assert code == 0 and json.loads(out)["rejected"] == 0 and "loaded again" in err
    assert existing_user_ids(graph_client, ["ann"]) == {"ann"}
    assert graph_client.read("MATCH (f:Forgotten) RETURN count(f) AS n") == [{"n": 1}]  # bob's


def test_export_never_exports_a_forgotten_user(
    cli: Path, graph_client: GraphClient, tmp_path: Path, ratings: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _ingest(capsys, ratings)[0] == 0
    assert _cli(capsys, "forget", "cat")[0] == 0
    # a path gnnrec does not guard (a Cypher client) writes the user again
    graph_client.write("MERGE (u:User {id: 'cat'}) SET u.age = 30 "
                       "MERGE (i:Item {id: 'i1'}) MERGE (u)-[:INTERACTED {weight: 1.0}]->(i) "
                       "MERGE (b:User {id: 'bob'}) MERGE (u)-[:FRIEND]->(b)")
    out_file = tmp_path / "g.pt"
    code, out, _ = _cli(capsys, "export", "--out", str(out_file), "--no-progress")
    summary = json.loads(out)
    assert code == 0 and summary["users"] == 2 and summary["interactions"] == 4
    assert {"label": "User", "count": 1,
            "reason": "a forget tombstone names it (gnnrec forget): never exported"
            } in summary["skipped_nodes"]
    assert {r["relationship"]: r["count"] for r in summary["skipped_relationships"]} == {
        "INTERACTED": 1, "FRIEND": 1}
    from gnnrec.gnn.graph_file import load_graph

    data = load_graph(out_file)
    assert sorted(data["user"].ext_id) == ["ann", "bob"]

    # another key cannot recognise the tombstone: export refuses instead of letting cat out
    other = tmp_path / "other.key"
    load_key(other)
    code, _, err = _cli(capsys, "export", "--out", str(tmp_path / "h.pt"), "--no-progress",
                        "--key-file", str(other))
    assert code == 2 and "another key" in err and not (tmp_path / "h.pt").exists()


def test_reset_keeps_the_tombstones(
    cli: Path, graph_client: GraphClient, tmp_path: Path, ratings: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _ingest(capsys, ratings)[0] == 0
    assert _cli(capsys, "forget", "bob")[0] == 0
    code, out, _ = _cli(capsys, "neo4j", "reset", "--yes")
    assert code == 0 and "1 forget tombstones kept" in out
    code, out, _ = _ingest(capsys, ratings)
    assert code == 0 and json.loads(out)["rejected"] == 2
    assert _users(graph_client) == {"ann", "cat"}
    code, out, _ = _cli(capsys, "neo4j", "reset", "--yes", "--drop-tombstones")
    assert code == 0 and graph_client.read("MATCH (n) RETURN count(n) AS n") == [{"n": 0}]
