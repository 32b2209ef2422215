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


def test_items_without_a_year_export(seeded_graph: GraphClient) -> None:
    """Regression: ML-100K has two items without ``year``; collect() dropped their nulls,
    the value list came back shorter than the node list and ``gnnrec export`` crashed."""
    seeded_graph.write("MATCH (i:Item) WHERE i.id IN ['i3', 'i17'] REMOVE i.year")
    data, summary = export_hetero(seeded_graph)
    assert data["item"].feature_names == ["year"]
    year = dict(zip(data["item"].ext_id, data["item"].x[:, 0].tolist(), strict=True))
    assert year["i3"] == year["i17"] == 0.0  # missing -> 0 after z-scoring
    known = [year[f"i{n}"] for n in range(20) if n not in (3, 17)]
    assert known == sorted(known) and known[0] < 0 < known[-1]  # 1990.. in order, centred
    assert summary["skipped_properties"] == []


def test_node_features_use_what_they_can_and_name_the_rest() -> None:
    import datetime as dt

    from gnnrec.graph.features import node_features

    columns = {
        "vip": [True, False, None, True],
        "joined": [dt.date(1970, 1, 2), None, dt.date(1970, 1, 4), dt.date(1970, 1, 3)],
        "seen": [dt.datetime(2020, 1, 1, tzinfo=dt.UTC), dt.datetime(2020, 1, 1, 1), None, None],
        "score": [1.0, float("nan"), float("inf"), 3.0],
        "code": [1, "A", 2, None],  # an integer on some nodes, text on others
        "likes": [[1, 2], None, [3], []],
        "bio": ["x" * 10_000, "y" * 10_000, None, "x" * 10_000],  # long, but only 2 values
        "empty": [float("nan"), None, float("nan"), None],
        "wait": [dt.timedelta(1), None, None, None],
    }
    (x, names), skipped = node_features(columns)
    assert names == ["vip", "joined", "seen", "score", "bio=" + "x" * 10_000,
                     "bio=" + "y" * 10_000]
    assert dict(skipped) == {
        "code": "mixed types: integer on 2 nodes, string on 1 node",
        "likes": "lists are not used as features",
        "empty": "no finite number (only NaN or infinity)",
        "wait": "values of type timedelta are not used as features",
    }
    col = {n: x[:, k].tolist() for k, n in enumerate(names)}
    assert col["vip"][2] == 0.0 and col["vip"][0] == col["vip"][3] > 0 > col["vip"][1]
    assert col["joined"][1] == 0.0 and col["joined"][0] < col["joined"][3] == 0.0 < col["joined"][2]
    assert col["seen"] == [-1.0, 1.0, 0.0, 0.0]  # 00:00 UTC and 01:00 read as UTC
    assert col["score"] == [-1.0, 0.0, 0.0, 1.0]  # NaN and infinity count as missing
    assert col["bio=" + "x" * 10_000] == [1.0, 0.0, 0.0, 1.0]


def test_unusable_relationship_values_are_defaulted_and_counted(graph_client: GraphClient) -> None:
    graph_client.write(
        "CREATE (a:User {id: 'a'}), (b:User {id: 'b'}), (i:Item {id: 'i'}), (j:Item {id: 'j'}), "
        "(k:Item {id: 'k'}), (:User)-[:INTERACTED {weight: 4.0, ts: 7}]->(k), "
        "(a)-[:INTERACTED {weight: 'heavy', ts: 1.5}]->(i), "
        "(a)-[:INTERACTED {weight: 2, ts: datetime('2020-01-01T00:00:00Z')}]->(j), "
        "(b)-[:INTERACTED {ts: 'yesterday'}]->(i), "
        "(b)-[:INTERACTED {weight: 0.0 / 0.0, ts: date('1970-01-02')}]->(k)")
    data, summary = export_hetero(graph_client, progress=False)
    store = data["user", "interacts", "item"]
    got = {(data["user"].ext_id[u], data["item"].ext_id[i]): (w, t) for (u, i), w, t in zip(
        store.edge_index.t().tolist(), store.weight.tolist(), store.time.tolist(), strict=True)}
    assert got == {("a", "i"): (1.0, 1), ("a", "j"): (2.0, 1_577_836_800),
                   ("b", "i"): (1.0, 0), ("b", "k"): (1.0, 86_400)}
    assert summary["defaulted_properties"] == [
        {"relationship": "INTERACTED", "property": "weight", "count": 1, "value": 1.0,
         "reason": "missing"},
        {"relationship": "INTERACTED", "property": "weight", "count": 1, "value": 1.0,
         "reason": "not a number: STRING"},
        {"relationship": "INTERACTED", "property": "weight", "count": 1, "value": 1.0,
         "reason": "not a finite number (NaN, infinity or out of range)"},
        {"relationship": "INTERACTED", "property": "ts", "count": 1, "value": 0,
         "reason": "not a time: STRING"},
    ]
    assert summary["skipped_nodes"] == [{"label": "User", "count": 1, "reason": "no id property"}]
    assert summary["skipped_relationships"] == [
        {"relationship": "INTERACTED", "count": 1,
         "reason": "its start or end node has no id (the node is skipped)"}]
    assert summary["interactions"] == 4


def test_every_long_command_takes_no_progress() -> None:
    """The commands that draw a progress bar all turn it off with --no-progress."""
    from gnnrec.cli import build_parser

    parser = build_parser()
    for argv in (["ingest", "--dataset", "synthetic"], ["export", "--out", "g.pt"],
                 ["train", "--out", "runs/x"], ["writeback", "--run", "runs/x"],
                 ["tune", "--model", "lightgcn", "--graph", "g.pt", "--out", "runs/x"]):
        assert parser.parse_args([*argv, "--no-progress"]).no_progress is True, argv[0]
        assert parser.parse_args(argv).no_progress is False, argv[0]


def test_ids_that_collide_as_text_fail_clearly(graph_client: GraphClient) -> None:
    graph_client.write("CREATE (:User {id: 1})-[:INTERACTED]->(:Item {id: 'i'}), "
                       "(:User {id: '1'})")
    with pytest.raises(GnnrecError, match=r"1 User.id value\(s\) name more than one node"):
        export_hetero(graph_client, progress=False)
