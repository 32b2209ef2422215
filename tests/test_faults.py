"""Fault tests (small; ``experiments/reliability.py`` runs the same cases large).

A Neo4j of its own (it gets killed), with a 16 MiB transaction memory limit:

* kill -9 Neo4j in the middle of ``gnnrec ingest``: the CLI says so in one line (exit 2);
  after a restart the same ingest completes it, with exact counts and no duplicate;
* kill -9 the ingest CLI mid-load, re-run: exact counts;
* kill -9 Neo4j in a burst of feedback writes: every acknowledged write is in Neo4j after
  the restart, once; while it is down reads are served and writes answer 503 with nothing
  folded in; after the restart writes are taken again;
* ``gnnrec neo4j reset`` empties a graph whose one-transaction DETACH DELETE exceeds the
  transaction memory.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gnnrec.graph.client import GraphClient
from gnnrec.graph.schema import clear_database, ensure_schema
from gnnrec.graph.server import LocalNeo4j

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `experiments` is a folder at the root, not an installed package
    sys.path.insert(0, str(ROOT))
from experiments.reliability import (  # noqa: E402
    START_TIMEOUT,
    env_of,
    fault_server,
    feedback_case,
    ingest_case,
    interactions_csv,
    make_feedback_run,
    settings_of,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNeo4j]:
    if os.environ.get("NEO4J_URI"):
        pytest.skip("fault tests kill the server: they need the local one they start")
    neo = fault_server(tmp_path_factory.mktemp("faults-home"),
                       {"db.memory.transaction.max": "16m"})
    neo.start(timeout=START_TIMEOUT)
    try:
        yield neo
    finally:
        neo.stop()


@pytest.fixture
def client(server: LocalNeo4j) -> Iterator[GraphClient]:
    if server.pid() is None:
        server.start(timeout=START_TIMEOUT)
    c = GraphClient(settings_of(server))
    clear_database(c, batch_size=1_000)  # 10,000 rows outgrow the 16 MiB limit
    ensure_schema(c)
    try:
        yield c
    finally:
        c.close()


@pytest.mark.parametrize("fault", ["neo4j", "cli"])
def test_kill_mid_ingest_then_rerun(fault: str, server: LocalNeo4j, client: GraphClient,
                                    tmp_path: Path) -> None:
    path, pairs, users = interactions_csv(tmp_path / "i.csv", 20_000, seed=1)
    row = ingest_case(server, path, pairs, users, fault, batch_size=500)
    assert 0 < row["committed_at_fault"] < pairs
    if fault == "neo4j":  # the CLI said what happened, in one line, exit code 2
        assert row["fault_exit_code"] == 2 and row["fault_message_lines"] == 1
    assert row["writes_acknowledged"] == row["writes_found"] == pairs
    assert row["users_found"] == users
    assert row["duplicates"] == row["rejects"] == row["lost"] == 0


def test_kill_neo4j_in_a_feedback_burst(server: LocalNeo4j, client: GraphClient,
                                        tmp_path: Path) -> None:
    row = feedback_case(server, make_feedback_run(tmp_path / "run"), writes=90,
                        concurrency=8, kill_after=30)
    assert row["writes_acknowledged"] >= 30 and row["writes_refused_503"] > 0
    assert row["writes_acknowledged"] + row["writes_refused_503"] == 90
    assert row["lost"] == row["duplicates"] == row["refused_folded_in"] == 0
    assert row["writes_found"] == row["writes_acknowledged"]
    assert row["reads_served_while_down"] and row["write_refused_while_down"]
    assert row["writes_taken_after_restart"]


def test_reset_empties_a_graph_too_big_for_one_transaction(
    server: LocalNeo4j, client: GraphClient, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from neo4j.exceptions import Neo4jError

    from gnnrec.cli import main

    client.run_auto("UNWIND range(1, 20000) AS n CALL (n) { CREATE (:User {id: toString(n)})"
                    "-[:INTERACTED]->(:Item {id: toString(n)}) } IN TRANSACTIONS OF 500 ROWS")
    with pytest.raises(Neo4jError, match="memory"):  # the premise: one transaction fails
        client.run_auto("MATCH (n) DETACH DELETE n")
    for key, value in env_of(server).items():
        if key.startswith("NEO4J_"):
            monkeypatch.setenv(key, value)
    assert main(["neo4j", "reset", "--yes", "--batch-size", "1000"]) == 0
    assert "40,000 nodes and 20,000 relationships" in capsys.readouterr().out
    assert client.read("MATCH (n) RETURN count(n) AS n") == [{"n": 0}]
