"""Shared fixtures.

Integration tests (marked ``integration``) talk to a real Neo4j server: the one named
by ``NEO4J_URI`` if set, else a project-local Neo4j started for this test session
under a temporary home on free ports and stopped at the end. Each test that asks for
``graph_client`` gets an emptied database with the schema in place. Ray tests share
one local Ray session (``ray_session``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gnnrec.graph.client import GraphClient
from gnnrec.graph.schema import clear_database, ensure_schema
from gnnrec.graph.server import LocalNeo4j, free_port
from gnnrec.graph.settings import Neo4jSettings, gnnrec_home


@pytest.fixture(scope="session")
def local_neo4j(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNeo4j | None]:
    """The local server started for this test session (None when NEO4J_URI is set)."""
    if os.environ.get("NEO4J_URI"):
        yield None
        return
    home = tmp_path_factory.mktemp("gnnrec-home")
    # Reuse the jar cache of the project's own home so tests need no second download.
    os.environ.setdefault("GNNREC_NEO4J_LIB", str(gnnrec_home() / "neo4j-lib"))
    server = LocalNeo4j(home=Path(home), bolt_port=free_port(), http_port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def neo4j_settings(local_neo4j: LocalNeo4j | None) -> Neo4jSettings:
    if local_neo4j is None:
        return Neo4jSettings.resolve()
    return Neo4jSettings(uri=local_neo4j.bolt_uri, user="neo4j", password=local_neo4j.password())


@pytest.fixture
def neo4j_env(neo4j_settings: Neo4jSettings, monkeypatch: pytest.MonkeyPatch) -> Neo4jSettings:
    """Point CLI commands run in-process (``gnnrec.cli.main``) at the test server."""
    monkeypatch.setenv("NEO4J_URI", neo4j_settings.uri)
    monkeypatch.setenv("NEO4J_USER", neo4j_settings.user)
    monkeypatch.setenv("NEO4J_PASSWORD", neo4j_settings.password)
    return neo4j_settings


@pytest.fixture(scope="session")
def neo4j(neo4j_settings: Neo4jSettings) -> Iterator[GraphClient]:
    """A client to the real test server (session-wide)."""
    client = GraphClient(neo4j_settings)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def graph_client(neo4j: GraphClient) -> GraphClient:
    """The real server with an empty database and the schema in place."""
    clear_database(neo4j)
    ensure_schema(neo4j)
    return neo4j


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole test run (2 CPUs, no dashboard)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


SEED_GRAPH = """
UNWIND range(0, 29) AS u
CREATE (:User {id: 'u' + toString(u), age: 20 + u % 7,
               gender: CASE u % 2 WHEN 0 THEN 'F' ELSE 'M' END})
WITH count(*) AS users
UNWIND range(0, 19) AS i
CREATE (:Item {id: 'i' + toString(i), year: 1990 + i})
WITH count(*) AS items
UNWIND range(0, 4) AS t
CREATE (:Tag {name: 't' + toString(t)})
WITH count(*) AS tags
MATCH (u:User), (i:Item)
WITH u, i, toInteger(substring(u.id, 1)) AS un, toInteger(substring(i.id, 1)) AS inum
WHERE (un * 7 + inum * 3) % 5 = 0
CREATE (u)-[:INTERACTED {weight: toFloat(un + inum + 1), ts: 1000 + un * 20 + inum}]->(i)
WITH count(*) AS rels
MATCH (a:User), (b:User)
WITH a, b, toInteger(substring(a.id, 1)) AS x, toInteger(substring(b.id, 1)) AS y
WHERE x < y AND (x + y) % 9 = 0
CREATE (a)-[:FRIEND]->(b)
WITH count(*) AS friends
MATCH (i:Item), (t:Tag)
WITH i, t, toInteger(substring(i.id, 1)) AS x, toInteger(substring(t.name, 1)) AS y
WHERE x % 5 = y OR (x + y) % 4 = 0
CREATE (i)-[:HAS_TAG {weight: toFloat(x + 1)}]->(t)
"""


@pytest.fixture
def seeded_graph(graph_client: GraphClient) -> GraphClient:
    """A small deterministic graph: 30 users, 20 items, 5 tags, interactions,
    friendships and tags, with user and item attributes."""
    graph_client.write(SEED_GRAPH)
    return graph_client
