"""Write a run's recommendations and embeddings back into Neo4j for Cypher.

    (:User)-[:RECOMMENDED {score, rank, model, run}]->(:Item)
    (:User|:Item {gnnrec_embedding: [float], gnnrec_run: str})

The recommendations of one run replace that run's previous ones; other runs'
recommendations stay, so Cypher can compare models. Embeddings are one property per
node (the latest write-back wins) with a vector index on items for similarity search.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from gnnrec.graph.client import GraphClient, Progress

_DELETE_RUN = (
    "MATCH ()-[r:RECOMMENDED {run: $run}]->() "
    "CALL (r) { DELETE r } IN TRANSACTIONS OF 10000 ROWS"
)
_WRITE_RECS = (
    "UNWIND $rows AS row "
    "MATCH (u:User {id: row.user}) "
    "UNWIND row.recs AS rec "
    "MATCH (i:Item {id: rec.item}) "
    "CREATE (u)-[:RECOMMENDED {score: rec.score, rank: rec.rank, model: $model, run: $run}]->(i)"
)
_WRITE_EMBEDDINGS = {
    "User": "UNWIND $rows AS row MATCH (n:User {id: row.id}) "
            "SET n.gnnrec_embedding = row.emb, n.gnnrec_run = $run",
    "Item": "UNWIND $rows AS row MATCH (n:Item {id: row.id}) "
            "SET n.gnnrec_embedding = row.emb, n.gnnrec_run = $run",
}
_INDEX_DIMS = (
    "SHOW INDEXES YIELD name, options WHERE name = 'item_embedding' "
    "RETURN options.indexConfig['vector.dimensions'] AS dims"
)
_DROP_INDEX = "DROP INDEX item_embedding IF EXISTS"
_CREATE_INDEX = (
    "CREATE VECTOR INDEX item_embedding IF NOT EXISTS FOR (i:Item) ON i.gnnrec_embedding "
    "OPTIONS {indexConfig: {`vector.dimensions`: $dims, `vector.similarity_function`: 'cosine'}}"
)


def _rec_rows(
    user_ids: Sequence[str], item_ids: Sequence[str], top_items: np.ndarray, top_scores: np.ndarray
) -> Iterator[dict[str, Any]]:
    for row, user in enumerate(user_ids):
        recs = [
            {"item": item_ids[i], "score": float(s), "rank": rank + 1}
            for rank, (i, s) in enumerate(zip(top_items[row], top_scores[row], strict=True))
        ]
        yield {"user": user, "recs": recs}


def write_recommendations(
    client: GraphClient,
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    top_items: np.ndarray,
    top_scores: np.ndarray,
    model: str,
    run: str,
    batch_size: int = 1_000,
    progress: Progress | None = None,
) -> int:
    """Replace run ``run``'s RECOMMENDED edges by the given top-k.

    ``top_items`` [U, k] are item indices into ``item_ids``, row u for ``user_ids[u]``;
    ``top_scores`` [U, k]. Returns the number of relationships written; ``progress``
    is called with the number of users of each batch written.
    """
    client.run_auto(_DELETE_RUN, {"run": run})
    rows = _rec_rows(user_ids, item_ids, top_items, top_scores)
    client.write_batches(_WRITE_RECS, rows, batch_size=batch_size, progress=progress,
                         model=model, run=run)
    return int(top_items.size)


def write_embeddings(
    client: GraphClient,
    label: str,
    ids: Sequence[str],
    embeddings: np.ndarray,
    run: str,
    batch_size: int = 2_000,
    progress: Progress | None = None,
) -> int:
    """Store ``embeddings[n]`` on node ``ids[n]`` of ``label`` ('User' or 'Item')."""
    rows = ({"id": i, "emb": e.tolist()} for i, e in zip(ids, embeddings, strict=True))
    written = client.write_batches(_WRITE_EMBEDDINGS[label], rows, batch_size=batch_size,
                                   progress=progress, run=run)
    if label == "Item":
        dims = int(embeddings.shape[1])
        current = client.read(_INDEX_DIMS)
        if current and current[0]["dims"] != dims:
            client.run_auto(_DROP_INDEX)
        client.run_auto(_CREATE_INDEX, {"dims": dims})
    return written


def writeback(
    client: GraphClient,
    run: str,
    model: str,
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    top_items: np.ndarray,
    top_scores: np.ndarray,
    user_emb: np.ndarray | None = None,
    item_emb: np.ndarray | None = None,
    batch_size: int = 1_000,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Recommendations, then (optionally) embeddings; returns a JSON-able summary.

    ``progress`` is called with the rows of each batch written: one per user for the
    recommendations, then one per user and per item for the embeddings.
    """
    start = time.perf_counter()
    recs = write_recommendations(client, user_ids, item_ids, top_items, top_scores, model, run,
                                 batch_size=batch_size, progress=progress)
    summary: dict[str, Any] = {"run": run, "model": model, "recommended": recs}
    if user_emb is not None and item_emb is not None:
        summary["user_embeddings"] = write_embeddings(client, "User", user_ids, user_emb, run,
                                                      progress=progress)
        summary["item_embeddings"] = write_embeddings(client, "Item", item_ids, item_emb, run,
                                                      progress=progress)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary
