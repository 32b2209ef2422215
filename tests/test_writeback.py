"""Export -> train -> write-back through the CLI against the real Neo4j."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gnnrec.cli import main
from gnnrec.graph.client import GraphClient
from gnnrec.graph.settings import Neo4jSettings

pytestmark = pytest.mark.integration


def _json_out(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_writeback_replaces_its_run_and_keeps_others(
    seeded_graph: GraphClient, neo4j_env: Neo4jSettings, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    graph_file = tmp_path / "g.pt"
    assert main(["export", "--out", str(graph_file)]) == 0
    capsys.readouterr()
    trained = {}
    for model in ("mf", "pop"):
        trained[model] = tmp_path / "runs" / model
        assert main(["train", "--model", model, "--graph", str(graph_file), "--out",
                     str(trained[model]), "--epochs", "2", "--no-progress", "--threads", "1"]) == 0
    capsys.readouterr()
    # A run ships alone: moved to another place, with the graph file gone, it writes back.
    shutil.move(tmp_path / "runs", tmp_path / "shipped")
    graph_file.unlink()
    runs = {model: tmp_path / "shipped" / model for model in trained}
    users = seeded_graph.read("MATCH (u:User) RETURN count(u) AS n")[0]["n"]

    for _ in range(2):  # the second write-back replaces the first, it does not add to it
        assert main(["writeback", "--run", str(runs["mf"]), "--k", "3"]) == 0
        assert _json_out(capsys)["recommended"] == users * 3
    assert main(["writeback", "--run", str(runs["pop"]), "--k", "2"]) == 0
    capsys.readouterr()

    counts = seeded_graph.read(
        "MATCH (:User)-[r:RECOMMENDED]->(:Item) RETURN r.run AS run, r.model AS model, "
        "count(r) AS n, min(r.rank) AS lo, max(r.rank) AS hi ORDER BY run"
    )
    assert counts == [
        {"run": "mf", "model": "mf", "n": users * 3, "lo": 1, "hi": 3},
        {"run": "pop", "model": "pop", "n": users * 2, "lo": 1, "hi": 2},
    ]
    # Never recommends what the user already interacted with.
    seen = seeded_graph.read(
        "MATCH (u:User)-[:RECOMMENDED]->(i:Item) WHERE (u)-[:INTERACTED]->(i) RETURN count(*) AS n"
    )
    assert seen == [{"n": 0}]
    # Ranks follow scores, and CLI recommend agrees with what was written back.
    assert main(["recommend", "u3", "-k", "3", "--run", str(runs["mf"]), "--json"]) == 0
    cli_recs = json.loads(capsys.readouterr().out)
    written = seeded_graph.read(
        "MATCH (:User {id: 'u3'})-[r:RECOMMENDED {run: 'mf'}]->(i:Item) "
        "RETURN i.id AS item, r.score AS score ORDER BY r.rank"
    )
    recs = cli_recs["items"]
    assert [r["item"] for r in recs] == [w["item"] for w in written]
    assert [w["score"] for w in written] == sorted((w["score"] for w in written), reverse=True)
    # Embeddings as properties, with a vector index for similarity search in Cypher.
    emb = seeded_graph.read(
        "MATCH (i:Item) WHERE i.gnnrec_embedding IS NOT NULL "
        "RETURN count(i) AS n, min(size(i.gnnrec_embedding)) AS d"
    )[0]
    assert emb["n"] == 20 and emb["d"] > 0
    similar = seeded_graph.read(
        "MATCH (i:Item {id: 'i1'}) CALL db.index.vector.queryNodes('item_embedding', 3, "
        "i.gnnrec_embedding) YIELD node RETURN collect(node.id) AS ids"
    )[0]["ids"]
    assert "i1" in similar
