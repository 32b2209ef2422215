"""Cypher for loading, forgetting and counting: every statement the ingest path runs.

All statements are parameterised (``UNWIND $rows AS row ... MERGE``); no id, name or
attribute value is ever formatted into Cypher text, so ids containing quotes,
braces, backticks or Cypher keywords are stored verbatim.

Write order for a bulk load: nodes first (``merge_users``, ``merge_items``,
``merge_tags``: MERGE on the constrained key), then relationships, which MATCH both
ends by their constrained key (an index seek) and MERGE the relationship:

* ``INTERACTED`` is merged on (user, item); ``weight`` and ``ts`` are *set*, so a
  later load of the same pair replaces them and re-running a load changes nothing.
* ``FRIEND`` is stored once per unordered pair, directed from the smaller id to the
  larger (string order); the MERGE is undirected so an existing pair in either
  direction is found and never doubled. Query it undirected: ``(a)-[:FRIEND]-(b)``.
* ``HAS_TAG`` is merged on (item, tag) with ``weight`` set.
* ``TAGGED`` (a user put a tag on an item: user-generated tags) is merged on
  (user, item, tag), the tag's name as the ``tag`` property. The ``HAS_TAG`` weight of
  an (item, tag) pair that users tagged is then the number of its ``TAGGED`` events:
  ``count_taggings`` recounts the items of a load, and forgetting a user recounts (or
  removes) the pairs that user tagged, so no trace of their tagging stays in the counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from gnnrec.graph.client import GraphClient, Progress, Record
from gnnrec.graph.forgotten import MERGE_TOMBSTONE, tombstone_params

NODE_LABELS = ("User", "Item", "Tag")
RELATIONSHIP_TYPES = ("INTERACTED", "FRIEND", "HAS_TAG", "TAGGED")

MERGE_USERS = """
UNWIND $rows AS row
MERGE (u:User {id: row.id})
SET u += row.props
"""

MERGE_ITEMS = """
UNWIND $rows AS row
MERGE (i:Item {id: row.id})
SET i += row.props
"""

MERGE_TAGS = """
UNWIND $rows AS row
MERGE (:Tag {name: row.name})
"""

MERGE_INTERACTIONS = """
UNWIND $rows AS row
MATCH (u:User {id: row.user})
MATCH (i:Item {id: row.item})
MERGE (u)-[r:INTERACTED]->(i)
SET r.weight = row.weight, r.ts = row.ts
"""

MERGE_FRIENDSHIPS = """
UNWIND $rows AS row
MATCH (a:User {id: row.a})
MATCH (b:User {id: row.b})
MERGE (a)-[:FRIEND]-(b)
"""

MERGE_ITEM_TAGS = """
UNWIND $rows AS row
MATCH (i:Item {id: row.item})
MATCH (t:Tag {name: row.tag})
MERGE (i)-[r:HAS_TAG]->(t)
SET r.weight = row.weight
"""

# Events grouped by (user, item) inside the batch: one lookup of both nodes per pair
# rather than per event (LastFM: 186k events on 71k pairs).
MERGE_TAGGINGS = """
UNWIND $rows AS row
WITH row.user AS user, row.item AS item, collect(row.tag) AS tags
MATCH (u:User {id: user})
MATCH (i:Item {id: item})
UNWIND tags AS tag
MERGE (u)-[:TAGGED {tag: tag}]->(i)
"""

# HAS_TAG weight = number of TAGGED events, for every tag users put on the items.
COUNT_TAGGINGS = """
UNWIND $rows AS row
MATCH (:User)-[e:TAGGED]->(i:Item {id: row.item})
WITH i, e.tag AS name, count(e) AS n
MATCH (t:Tag {name: name})
MERGE (i)-[r:HAS_TAG]->(t)
SET r.weight = n
"""

# The same for given (item, tag) pairs; a pair left with no event loses its HAS_TAG.
RECOUNT_TAG_PAIRS = """
UNWIND $rows AS row
MATCH (i:Item {id: row.item})-[r:HAS_TAG]->(:Tag {name: row.tag})
OPTIONAL MATCH (:User)-[e:TAGGED {tag: row.tag}]->(i)
WITH r, count(e) AS n
CALL (r, n) { WITH r, n WHERE n > 0 SET r.weight = n }
CALL (r, n) { WITH r, n WHERE n = 0 DELETE r }
"""

USER_TAGGINGS = """
MATCH (:User {id: $id})-[e:TAGGED]->(i:Item)
RETURN DISTINCT i.id AS item, e.tag AS tag
"""

# The naive path: one interaction, its two nodes, one transaction (benchmarks, feedback).
RECORD_INTERACTION = """
MERGE (u:User {id: $user})
MERGE (i:Item {id: $item})
MERGE (u)-[r:INTERACTED]->(i)
SET r.weight = $weight, r.ts = $ts
"""

EXISTING_USERS = """
UNWIND $ids AS id
MATCH (u:User {id: id})
RETURN u.id AS id
"""

FORGET_USER = """
MATCH (u:User {id: $id})
OPTIONAL MATCH (u)-[r]-()
WITH u, type(r) AS type, count(r) AS n
WITH u, collect(CASE WHEN type IS NULL THEN null ELSE [type, n] END) AS rels
DETACH DELETE u
RETURN rels
"""

GRAPH_COUNTS = "CALL db.stats.retrieve('GRAPH COUNTS') YIELD data RETURN data"

# Fallback where db.stats.retrieve is not allowed (e.g. a restricted role).
LABEL_COUNTS = """
CALL db.labels() YIELD label
CALL (label) { MATCH (n:$(label)) RETURN count(n) AS n }
RETURN label, n
"""

TYPE_COUNTS = """
CALL db.relationshipTypes() YIELD relationshipType AS type
CALL (type) { MATCH ()-[r:$(type)]->() RETURN count(r) AS n }
RETURN type, n
"""


def merge_users(
    client: GraphClient, rows: Iterable[Record], batch_size: int = 5_000,
    progress: Progress | None = None,
) -> int:
    """MERGE ``(:User {id: row.id})`` and set ``row.props`` (a map, may be empty)."""
    return client.write_batches(MERGE_USERS, rows, batch_size, progress)


def merge_items(
    client: GraphClient, rows: Iterable[Record], batch_size: int = 5_000,
    progress: Progress | None = None,
) -> int:
    """MERGE ``(:Item {id: row.id})`` and set ``row.props`` (a map, may be empty)."""
    return client.write_batches(MERGE_ITEMS, rows, batch_size, progress)


def merge_tags(
    client: GraphClient, rows: Iterable[Record], batch_size: int = 5_000,
    progress: Progress | None = None,
) -> int:
    """MERGE ``(:Tag {name: row.name})``."""
    return client.write_batches(MERGE_TAGS, rows, batch_size, progress)


def merge_interactions(
    client: GraphClient, rows: Iterable[Record], batch_size: int = 5_000,
    progress: Progress | None = None,
) -> int:
    """MERGE ``(user)-[:INTERACTED]->(item)`` per ``{user, item, weight, ts}`` row.

    Both nodes must exist (MATCH): create them first with :func:`merge_users` /
    :func:`merge_items`. ``weight`` and ``ts`` replace earlier values.
    """
    return client.write_batches(MERGE_INTERACTIONS, rows, batch_size, progress)


def merge_friendships(
    client: GraphClient, rows: Iterable[Record], batch_size: int = 5_000,
    progress: Progress | None = None,
) -> int:
    """MERGE one ``FRIEND`` relationship per ``{a, b}`` row (pass ``a < b``; undirected)."""
    return client.write_batches(MERGE_FRIENDSHIPS, rows, batch_size, progress)


def merge_item_tags(
    client: GraphClient, rows: Iterable[Record], batch_size: int = 5_000,
    progress: Progress | None = None,
) -> int:
    """MERGE ``(item)-[:HAS_TAG {weight}]->(tag)`` per ``{item, tag, weight}`` row."""
    return client.write_batches(MERGE_ITEM_TAGS, rows, batch_size, progress)


def merge_taggings(
    client: GraphClient, rows: Iterable[Record], batch_size: int = 5_000,
    progress: Progress | None = None,
) -> int:
    """MERGE ``(user)-[:TAGGED {tag}]->(item)`` per ``{user, item, tag}`` row (nodes exist)."""
    return client.write_batches(MERGE_TAGGINGS, rows, batch_size, progress)


def count_taggings(
    client: GraphClient, rows: Iterable[Record], batch_size: int = 5_000,
    progress: Progress | None = None,
) -> int:
    """Per ``{item}`` row: each tag users put on it gets ``HAS_TAG {weight: events}``."""
    return client.write_batches(COUNT_TAGGINGS, rows, batch_size, progress)


def record_interaction(
    client: GraphClient, user: str, item: str, weight: float = 1.0, ts: int | None = None
) -> None:
    """One interaction in its own transaction, creating the nodes if needed (slow path)."""
    client.write(RECORD_INTERACTION, {"user": user, "item": item, "weight": weight, "ts": ts})


def existing_user_ids(
    client: GraphClient, ids: Sequence[str], batch_size: int = 50_000
) -> set[str]:
    """The subset of ``ids`` that are ``User`` nodes in the database."""
    found: set[str] = set()
    for start in range(0, len(ids), batch_size):
        chunk = list(ids[start:start + batch_size])
        found.update(row["id"] for row in client.read(EXISTING_USERS, {"ids": chunk}))
    return found


def forget_user(client: GraphClient, user_id: str, key: bytes | None) -> dict[str, int] | None:
    """Delete the user and all its relationships in one transaction.

    The ``HAS_TAG`` weights of the (item, tag) pairs the user tagged are recounted in
    the same transaction (a pair only they tagged loses its ``HAS_TAG``), and with a
    ``key`` the user's tombstone is written in it too (:mod:`gnnrec.graph.forgotten`:
    what keeps them out of serving, export and ingest). Returns the number of deleted
    relationships by type, or ``None`` when no user has this id (nothing is deleted,
    no tombstone written).
    """
    def work(tx: Any) -> list[Record]:
        tagged = tx.run(USER_TAGGINGS, {"id": user_id}).data()
        rows = tx.run(FORGET_USER, {"id": user_id}).data()
        if tagged:
            tx.run(RECOUNT_TAG_PAIRS, {"rows": tagged}).consume()
        if rows and key is not None:
            tx.run(MERGE_TOMBSTONE, tombstone_params(user_id, key)).consume()
        return rows

    with client.session() as session:
        rows = session.execute_write(work)
    if not rows:
        return None
    return {str(rel_type): int(n) for rel_type, n in rows[0]["rels"]}


def graph_stats(client: GraphClient) -> dict[str, dict[str, int]]:
    """Node counts by label and relationship counts by type (from the count store), and
    the forget tombstones apart (``{"tombstones": {"Forgotten": n}}``: not graph nodes).

    The project's labels and types are always present (0 when absent).
    """
    nodes: dict[str, int] = dict.fromkeys(NODE_LABELS, 0)
    rels: dict[str, int] = dict.fromkeys(RELATIONSHIP_TYPES, 0)
    try:
        data: dict[str, Any] = client.read(GRAPH_COUNTS)[0]["data"]
    except Exception:  # noqa: BLE001 - procedure denied or absent: count per label
        for row in client.read(LABEL_COUNTS):
            nodes[str(row["label"])] = int(row["n"])
        for row in client.read(TYPE_COUNTS):
            rels[str(row["type"])] = int(row["n"])
    else:
        for entry in data["nodes"]:
            if "label" in entry:
                nodes[str(entry["label"])] = int(entry["count"])
        for entry in data["relationships"]:
            if set(entry) == {"relationshipType", "count"}:
                rels[str(entry["relationshipType"])] = int(entry["count"])
    tombstones = {"Forgotten": nodes.pop("Forgotten", 0)}
    return {"nodes": nodes, "relationships": rels, "tombstones": tombstones}
