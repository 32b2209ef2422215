"""Graph schema: labels, relationship types and the uniqueness constraints.

    (:User {id})-[:INTERACTED {weight, ts}]->(:Item {id, ...attributes})
                                    online feedback also has ``received`` (Neo4j ms), on
                                    INTERACTED, FRIEND and the users POST /users made
    (:User)-[:FRIEND]->(:User)      one relationship per unordered pair, queried undirected
    (:Item)-[:HAS_TAG {weight}]->(:Tag {name})
    (:User)-[:TAGGED {tag}]->(:Item)   one per tagging event (user-generated tags); the
                                       HAS_TAG weight of a pair users tagged counts them
    (:User)-[:RECOMMENDED {score, rank, model, run}]->(:Item)   written back by a run
    (:Forgotten {key, key_id, at})   a forgotten user's tombstone (gnnrec.graph.forgotten)
"""

from __future__ import annotations

from gnnrec.graph.client import GraphClient

CONSTRAINTS = (
    "CREATE CONSTRAINT user_id IF NOT EXISTS FOR (u:User) REQUIRE u.id IS UNIQUE",
    "CREATE CONSTRAINT item_id IF NOT EXISTS FOR (i:Item) REQUIRE i.id IS UNIQUE",
    "CREATE CONSTRAINT tag_name IF NOT EXISTS FOR (t:Tag) REQUIRE t.name IS UNIQUE",
    "CREATE CONSTRAINT forgotten_key IF NOT EXISTS FOR (f:Forgotten) REQUIRE f.key IS UNIQUE",
    "CREATE INDEX forgotten_at IF NOT EXISTS FOR (f:Forgotten) ON (f.at)",
    # online feedback, replayed by serving after a reload (gnnrec.graph.serving)
    "CREATE INDEX interacted_received IF NOT EXISTS FOR ()-[r:INTERACTED]-() ON (r.received)",
    "CREATE INDEX user_received IF NOT EXISTS FOR (u:User) ON (u.received)",
)


def ensure_schema(client: GraphClient) -> None:
    """Create the uniqueness constraints (idempotent) and wait for their indexes."""
    for statement in CONSTRAINTS:
        client.run_auto(statement)
    client.run_auto("CALL db.awaitIndexes(300)")


def clear_database(client: GraphClient, batch_size: int = 10_000,
                   keep_forgotten: bool = False) -> None:
    """Delete every relationship, then every node, in batches (tests and benchmarks);
    ``keep_forgotten`` keeps the forget tombstones (``gnnrec neo4j reset``).

    Relationships go first so that one batch never holds a dense node's whole
    neighbourhood (``DETACH DELETE`` of 10k users of ML-1M overflows a 1 GB heap).
    """
    client.run_auto(
        "MATCH ()-[r]->() CALL (r) { DELETE r } IN TRANSACTIONS OF $size ROWS",
        {"size": batch_size},
    )
    client.run_auto(
        "MATCH (n) WHERE NOT ($keep AND n:Forgotten) "
        "CALL (n) { DELETE n } IN TRANSACTIONS OF $size ROWS",
        {"size": batch_size, "keep": keep_forgotten},
    )
