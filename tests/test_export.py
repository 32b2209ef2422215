"""Export from the real Neo4j to HeteroData: counts, id maps and edges equal what Neo4j holds."""

from __future__ import annotations

import pytest
import torch

from gnnrec.errors import GnnrecError
from gnnrec.graph.client import GraphClient
from gnnrec.graph.export import attributes_to_features, export_hetero

pytestmark = pytest.mark.integration



def _edge_set(data, edge_type, src, dst) -> set[tuple[str, str]]:  # noqa: ANN001
    ei = data[edge_type].edge_index
    return {(data[src].ext_id[a], data[dst].ext_id[b]) for a, b in ei.t().tolist()}


def test_export_round_trip(seeded_graph: GraphClient) -> None:
    graph_client = seeded_graph
    data, summary = export_hetero(graph_client, page_size=7)  # tiny pages: many round trips
    rows = graph_client.read(
        "MATCH (u:User)-[r:INTERACTED]->(i:Item) "
        "RETURN u.id AS u, i.id AS i, r.weight AS w, r.ts AS t"
    )
    assert summary["interactions"] == len(rows) > 0
    assert sorted(data["user"].ext_id) == sorted(f"u{n}" for n in range(30))
    assert sorted(data["item"].ext_id) == sorted(f"i{n}" for n in range(20))
    assert data["tag"].num_nodes == 5
    # Every exported interaction, with its weight and time, is one Neo4j holds.
    store = data["user", "interacts", "item"]
    exported = {
        (data["user"].ext_id[u], data["item"].ext_id[i]): (w, t)
        for (u, i), w, t in zip(store.edge_index.t().tolist(), store.weight.tolist(),
                                store.time.tolist(), strict=True)
    }
    assert exported == {(r["u"], r["i"]): (r["w"], r["t"]) for r in rows}
    rev = data["item", "rev_interacts", "user"].edge_index
    assert torch.equal(rev, store.edge_index.flip(0))
    friends = graph_client.read("MATCH (a:User)-[:FRIEND]->(b:User) RETURN a.id AS a, b.id AS b")
    expected = {(r["a"], r["b"]) for r in friends} | {(r["b"], r["a"]) for r in friends}
    assert _edge_set(data, ("user", "friend", "user"), "user", "user") == expected
    tags = graph_client.read("MATCH (i:Item)-[:HAS_TAG]->(t:Tag) RETURN i.id AS i, t.name AS t")
    assert _edge_set(data, ("item", "has_tag", "tag"), "item", "tag") == {
        (r["i"], r["t"]) for r in tags
    }
    # Attributes became features: numeric year for items, age + one-hot gender for users.
    assert data["item"].feature_names == ["year"]
    assert set(data["user"].feature_names) == {"age", "gender=F", "gender=M"}
    assert data["user"].x.shape == (30, 3)


def test_export_of_empty_graph_fails_clearly(graph_client: GraphClient) -> None:
    with pytest.raises(GnnrecError, match="0 users and 0 items"):
        export_hetero(graph_client)


def test_export_without_interactions_fails_clearly(graph_client: GraphClient) -> None:
    graph_client.write("CREATE (:User {id: 'a'}), (:Item {id: 'b'})")
    with pytest.raises(GnnrecError, match="no INTERACTED"):
        export_hetero(graph_client)


def test_attributes_to_features() -> None:
    columns = {
        "year": [None, 2001, 2002, 2003],
        "genre": ["a", "b", "a", "b"],
        "title": [f"film {n}" for n in range(4)],
    }
    x, names = attributes_to_features(columns)
    # Unique titles are not features; genre is one-hot.
    assert names == ["year", "genre=a", "genre=b"]
    assert x.shape == (4, 3)
    assert x[0, 0] == 0.0  # missing numeric -> 0 after z-scoring
    assert x[:, 1].tolist() == [1.0, 0.0, 1.0, 0.0]
