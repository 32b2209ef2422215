"""The Cypher the serving application runs: explanation paths, feedback writes, forgetting.

Writes reuse the ingest path's statements (:mod:`gnnrec.graph.load`: ``MERGE_USERS``,
``MERGE_ITEMS``, ``MERGE_INTERACTIONS``, ``MERGE_FRIENDSHIPS``, :func:`load.forget_user`)
or, on the latency-sensitive feedback path, the batched form of
``load.RECORD_INTERACTION``, so feedback lands exactly as an ingest of the same rows
would. Each write of the service is ONE explicit transaction, without the driver's retry
loop: when Neo4j is down the call fails at once, and either everything of a request is
committed or nothing is (the service folds a write into memory only after the commit).

Explanation queries order their rows by the contribution formulas of
``gnnrec.serve.explain`` (friends: fewer items first; co-interacting users:
``overlap / sqrt(deg(v) * deg(u))``; tags: most frequent in the user's history).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gnnrec.graph import load
from gnnrec.graph.client import GraphClient, Record
from gnnrec.graph.forgotten import refuse_forgotten

EXPLAIN_ENDS = """
OPTIONAL MATCH (u:User {id: $user})
OPTIONAL MATCH (i:Item {id: $item})
RETURN u IS NOT NULL AS user_found, i IS NOT NULL AS item_found,
       CASE WHEN u IS NULL THEN 0 ELSE COUNT { (u)-[:INTERACTED]->() } END AS user_items
"""

EXPLAIN_FRIENDS = """
MATCH (u:User {id: $user})-[:FRIEND]-(f:User)-[:INTERACTED]->(:Item {id: $item})
WITH DISTINCT f
WITH f, COUNT { (f)-[:INTERACTED]->() } AS items
RETURN f.id AS user, items
ORDER BY items ASC, user ASC
LIMIT $limit
"""

EXPLAIN_CO_USERS = """
MATCH (:Item {id: $item})<-[:INTERACTED]-(v:User)
WHERE v.id <> $user
MATCH (v)-[:INTERACTED]->(shared:Item)<-[:INTERACTED]-(:User {id: $user})
WITH v, count(DISTINCT shared) AS overlap
WITH v, overlap, COUNT { (v)-[:INTERACTED]->() } AS items
RETURN v.id AS user, overlap, items
ORDER BY toFloat(overlap) / sqrt(toFloat(items) * $user_items) DESC, user ASC
LIMIT $limit
"""

EXPLAIN_TAGS = """
MATCH (:Item {id: $item})-[:HAS_TAG]->(t:Tag)<-[:HAS_TAG]-(h:Item)
      <-[:INTERACTED]-(:User {id: $user})
WITH t, count(DISTINCT h) AS n
RETURN t.name AS tag, n
ORDER BY n DESC, tag ASC
LIMIT $limit
"""


# Online feedback carries ``received``: Neo4j's clock (epoch microseconds) when the write's
# transaction started, the same for everything one request wrote. A serving state loaded
# from a run replays what was received after the run's export (:func:`feedback_since`).
# Ingest writes carry none: they reach serving through the next export and training.
RECEIVED = ("(datetime.transaction().epochSeconds * 1000000 "
            "+ datetime.transaction().microsecond)")
NOW = ("RETURN datetime.realtime().epochSeconds * 1000000 "
       "+ datetime.realtime().microsecond AS now")

# The batched form of load.RECORD_INTERACTION (same semantics as an ingest of the rows:
# nodes MERGEd on their constrained key, weight and ts replaced). One statement, one
# round trip: about half the latency of the three separate ingest statements in one
# transaction, which matters on the feedback path.
RECORD_INTERACTIONS = """
UNWIND $rows AS row
MERGE (u:User {id: row.user})
MERGE (i:Item {id: row.item})
MERGE (u)-[r:INTERACTED]->(i)
SET r.weight = row.weight, r.ts = row.ts, r.received = """ + RECEIVED + """
"""

STAMP_NEW_USER = """
MATCH (u:User {id: $user})
SET u.received = """ + RECEIVED + """
WITH u
OPTIONAL MATCH (u)-[r:INTERACTED]->(i:Item) WHERE i.id IN $items
SET r.received = """ + RECEIVED + """
WITH DISTINCT u
OPTIONAL MATCH (u)-[f:FRIEND]-(v:User) WHERE v.id IN $friends
SET f.received = """ + RECEIVED + """
"""

FEEDBACK_INTERACTIONS = """
MATCH (u:User)-[r:INTERACTED]->(i:Item) WHERE r.received >= $since
RETURN r.received AS at, u.id AS user, i.id AS item
ORDER BY at, user, item
"""

FEEDBACK_USERS = """
MATCH (u:User) WHERE u.received >= $since
RETURN u.received AS at, u.id AS user,
       [(u)-[f:FRIEND]-(v:User) WHERE f.received = u.received | v.id] AS friends
ORDER BY at, user
"""


@dataclass(frozen=True)
class Feedback:
    """What Neo4j received through the serving API since some time, oldest first.

    ``interactions``: ``(received, user, item)``; ``new_users``: ``(received, user,
    friends)`` for the users ``POST /users`` created (their items are among the
    interactions with the same ``received``).
    """

    interactions: list[tuple[int, str, str]]
    new_users: list[tuple[int, str, list[str]]]


def neo4j_clock_us(client: GraphClient) -> int:
    """Neo4j's clock now, epoch microseconds (the unit of ``received``)."""
    return int(client.read(NOW)[0]["now"])


def feedback_since(client: GraphClient, since: int) -> Feedback:
    """The feedback received at or after ``since`` (Neo4j clock, epoch µs); one read
    transaction without the driver's retry loop (a down server fails at once)."""
    with client.session(default_access_mode="READ") as session:
        with session.begin_transaction() as tx:
            inter = tx.run(FEEDBACK_INTERACTIONS, {"since": since}).values()
            users = tx.run(FEEDBACK_USERS, {"since": since}).values()
    return Feedback([(int(at), str(u), str(i)) for at, u, i in inter],
                    [(int(at), str(u), [str(f) for f in friends]) for at, u, friends in users])


@dataclass(frozen=True)
class ExplainRows:
    """What :func:`explain_paths` found (lists already ordered and cut to ``limit``)."""

    user_found: bool
    item_found: bool
    user_items: int
    friends: list[tuple[str, int]]
    co_users: list[tuple[str, int, int]]
    tags: list[tuple[str, int]]


def explain_paths(client: GraphClient, user: str, item: str, limit: int = 10) -> ExplainRows:
    """Friends, co-interacting users and shared tags behind (user, item), one transaction."""
    params: dict[str, Any] = {"user": user, "item": item, "limit": limit}
    # One explicit read transaction: no driver retry loop, so a down server fails at once.
    with client.session(default_access_mode="READ") as session:
        with session.begin_transaction() as tx:
            def read(cypher: str, extra: dict[str, Any] | None = None) -> list[Record]:
                return tx.run(cypher, {**params, **(extra or {})}).data()

            ends = read(EXPLAIN_ENDS)[0]
            if not (ends["user_found"] and ends["item_found"]):
                return ExplainRows(bool(ends["user_found"]), bool(ends["item_found"]),
                                   int(ends["user_items"]), [], [], [])
            deg = int(ends["user_items"])
            friends = [(str(r["user"]), int(r["items"])) for r in read(EXPLAIN_FRIENDS)]
            co_users = [(str(r["user"]), int(r["overlap"]), int(r["items"]))
                        for r in read(EXPLAIN_CO_USERS, {"user_items": float(max(deg, 1))})]
            tags = [(str(r["tag"]), int(r["n"])) for r in read(EXPLAIN_TAGS)]
    return ExplainRows(True, True, deg, friends, co_users, tags)


def _in_one_transaction(client: GraphClient,
                        statements: Sequence[tuple[str, list[Record] | None]],
                        forgotten: Mapping[str, str] | None = None,
                        params: dict[str, Any] | None = None) -> None:
    """Run ``UNWIND $rows`` statements (with ``params``) in one explicit transaction (no
    retries), skipping those with no rows (``None``: a statement without ``$rows``, run
    once); first refuse the write when a tombstone names a user of ``forgotten``
    (``{key: user}``)."""
    with client.session() as session:
        with session.begin_transaction() as tx:
            refuse_forgotten(tx, forgotten or {})
            for cypher, rows in statements:
                if rows is None or rows:
                    tx.run(cypher, {**(params or {}), "rows": rows}).consume()
            tx.commit()


def write_interactions(client: GraphClient, rows: Sequence[Record],
                       forgotten: Mapping[str, str] | None = None) -> int:
    """MERGE users, items and ``INTERACTED {weight, ts}`` for ``{user, item, weight, ts}`` rows.

    One statement in one transaction (all or nothing). Pass one row per (user, item)
    pair: weight and ts replace earlier values, as in the ingest path. ``forgotten``:
    ``{tombstone key: user}`` of the rows' users; a tombstoned one refuses the whole
    write (:class:`~gnnrec.graph.forgotten.ForgottenUserError`). Returns the number of
    rows written.
    """
    _in_one_transaction(client, [(RECORD_INTERACTIONS, list(rows))], forgotten)
    return len(rows)


def create_user(client: GraphClient, user: str, items: Sequence[str], friends: Sequence[str],
                ts: int | None = None, weight: float = 1.0,
                forgotten: Mapping[str, str] | None = None) -> None:
    """MERGE a user with ``INTERACTED`` to existing-or-new ``items`` and ``FRIEND`` links.

    Friend users are MERGEd too (so the relationship always lands); one transaction,
    refused when a tombstone names the user or a friend (see :func:`write_interactions`).
    """
    pairs = [{"a": min(user, f), "b": max(user, f)} for f in dict.fromkeys(friends)]
    inter = [{"user": user, "item": i, "weight": weight, "ts": ts} for i in dict.fromkeys(items)]
    _in_one_transaction(client, [
        (load.MERGE_USERS, [{"id": u, "props": {}} for u in dict.fromkeys([user, *friends])]),
        (load.MERGE_ITEMS, [{"id": i, "props": {}} for i in dict.fromkeys(items)]),
        (load.MERGE_INTERACTIONS, inter),
        (load.MERGE_FRIENDSHIPS, pairs),
        (STAMP_NEW_USER, None),
    ], forgotten, {"user": user, "items": list(dict.fromkeys(items)),
                   "friends": list(dict.fromkeys(friends))})


def forget_user(client: GraphClient, user: str, key: bytes | None) -> dict[str, int] | None:
    """:func:`gnnrec.graph.load.forget_user` (with the tombstone) after a connectivity check.

    The check makes a down server fail at once instead of inside the driver's retry
    loop; the delete itself is one transaction. ``None`` when no such user.
    """
    client.driver.verify_connectivity()
    return load.forget_user(client, user, key)
