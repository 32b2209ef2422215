"""The CSR neighbour sampler and link batches against brute-force references (plain sets)."""

from __future__ import annotations

import ast
import itertools
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import HeteroData

from gnnrec.gnn import sampler as sampler_module
from gnnrec.gnn.data import IU, UI, UU, build_graph
from gnnrec.gnn.generators import synthetic_graph
from gnnrec.gnn.sampler import (
    LinkBatchSampler,
    NeighborSampler,
    NodeBatchSampler,
    SamplerError,
    sample_positions,
)
from gnnrec.gnn.split import apply_split
from gnnrec.gnn.views import TrainView

FANOUT = [4, 3, 2]


@pytest.fixture(scope="module")
def graph() -> HeteroData:
    return apply_split(synthetic_graph(80, 50, num_tags=6, mean_interactions=9,
                                       friends_per_user=3, seed=3), seed=1)


def in_neighbours(data: HeteroData) -> dict[tuple, dict[int, set[int]]]:
    """Brute force: per edge type, dst -> set of src over train edges (split == 0)."""
    out: dict[tuple, dict[int, set[int]]] = {}
    for et in data.edge_types:
        store = data[et]
        keep = (store.split == 0).tolist() if "split" in store else None
        nb: dict[int, set[int]] = defaultdict(set)
        for j, (s, d) in enumerate(store.edge_index.t().tolist()):
            if keep is None or keep[j]:
                nb[d].add(s)
        out[et] = nb
    return out


def hop_edges(batch: HeteroData, et: tuple) -> list[list[tuple[int, int]]]:
    """Global (src, dst) pairs of ``et`` per hop."""
    src_t, _, dst_t = et
    ei = batch[et].edge_index
    pairs = list(zip(batch[src_t].n_id[ei[0]].tolist(), batch[dst_t].n_id[ei[1]].tolist(),
                     strict=True))
    bounds = np.cumsum([0, *batch[et].num_sampled_edges])
    return [pairs[a:b] for a, b in itertools.pairwise(bounds)]


def hop_nodes(batch: HeteroData, nt: str) -> list[list[int]]:
    bounds = np.cumsum([0, *batch[nt].num_sampled_nodes])
    ids = batch[nt].n_id.tolist()
    return [ids[a:b] for a, b in itertools.pairwise(bounds)]


def check_sample(data: HeteroData, batch: HeteroData, seeds: dict[str, list[int]],
                 fanout: list[int] | dict[tuple, list[int]], replace: bool) -> None:
    ref = in_neighbours(data)
    fan = fanout if isinstance(fanout, dict) else dict.fromkeys(data.edge_types, fanout)
    for nt, s in seeds.items():  # seeds first, in order
        assert batch[nt].n_id[: batch[nt].batch_size].tolist() == list(dict.fromkeys(s))
    for nt in data.node_types:
        ids = batch[nt].n_id.tolist()
        assert len(ids) == len(set(ids)) == batch[nt].num_nodes
    hops = len(next(iter(fanout.values())) if isinstance(fanout, dict) else fanout)
    for nt in data.node_types:  # hop h+1 nodes: exactly the sources first met at hop h
        seen = set(hop_nodes(batch, nt)[0])
        for hop in range(hops):
            met = {s for et in data.edge_types if et[0] == nt for s, _ in hop_edges(batch, et)[hop]}
            assert set(hop_nodes(batch, nt)[hop + 1]) == met - seen
            seen |= met
    for et in data.edge_types:
        src_t, _, dst_t = et
        for hop, pairs in enumerate(hop_edges(batch, et)):
            k = fan.get(et, [0] * 9)[hop]
            frontier = set(hop_nodes(batch, dst_t)[hop])
            per_dst: dict[int, list[int]] = defaultdict(list)
            for s, d in pairs:
                assert s in ref[et][d], f"{et}: sampled edge {s}->{d} is not a train edge"
                assert d in frontier, f"{et} hop {hop}: {d} was not in the hop's frontier"
                per_dst[d].append(s)
            for d in frontier:
                got, deg = per_dst.get(d, []), len(ref[et][d])
                if replace:
                    assert len(got) == (k if deg else 0)
                else:
                    assert len(got) == len(set(got)) == min(deg, k)
                    if deg <= k:
                        assert set(got) == ref[et][d]
        assert batch[et].e_id.numel() == batch[et].edge_index.size(1)


@pytest.mark.parametrize("replace", [False, True])
def test_sample_matches_brute_force(graph: HeteroData, replace: bool) -> None:
    sampler = NeighborSampler(graph, FANOUT, replace=replace, seed=7)
    seeds = {"user": [5, 3, 77, 3, 12], "item": [0, 49]}
    batch = sampler.sample({k: torch.tensor(v) for k, v in seeds.items()})
    check_sample(graph, batch, seeds, FANOUT, replace)
    assert batch["user"].batch_size == 4 and batch["item"].batch_size == 2
    assert "batch_size" not in batch["tag"]


def test_e_id_and_attributes_point_at_the_graph(graph: HeteroData) -> None:
    batch = NeighborSampler(graph, [-1, 2], seed=0).sample({"item": torch.arange(5)})
    for et in graph.edge_types:
        e = batch[et].e_id
        src_t, _, dst_t = et
        glob = torch.stack([batch[src_t].n_id[batch[et].edge_index[0]],
                            batch[dst_t].n_id[batch[et].edge_index[1]]])
        assert torch.equal(graph[et].edge_index[:, e], glob)
        if "split" in graph[et]:
            assert bool((graph[et].split[e] == 0).all())
        if "weight" in graph[et]:
            assert torch.equal(batch[et].weight, graph[et].weight[e])
    assert torch.equal(batch["item"].x, graph["item"].x[batch["item"].n_id])
    # fan-out -1 on hop 1: every train in-neighbour of the seeds
    ref = in_neighbours(graph)
    got = {tuple(p) for p in hop_edges(batch, UI)[0]}
    assert got == {(u, i) for i in range(5) for u in ref[UI][i]}


def test_seeded_determinism(graph: HeteroData) -> None:
    seeds = {"user": torch.arange(0, 80, 7)}
    a = NeighborSampler(graph, FANOUT, seed=1).sample(seeds)
    b = NeighborSampler(graph, FANOUT, seed=1).sample(seeds)
    c = NeighborSampler(graph, FANOUT, seed=2).sample(seeds)
    for et in graph.edge_types:
        assert torch.equal(a[et].e_id, b[et].e_id)
        assert torch.equal(a[et].edge_index, b[et].edge_index)
    assert any(not torch.equal(a[et].e_id, c[et].e_id) for et in graph.edge_types)


def test_edges_come_sorted_by_destination_and_distinct(graph: HeteroData) -> None:
    seeds = {"user": torch.arange(0, 80, 3), "item": torch.arange(0, 50, 4)}
    for replace in (False, True):
        batch = NeighborSampler(graph, FANOUT, replace=replace, seed=5).sample(seeds)
        for et in graph.edge_types:
            ei = batch[et].edge_index
            assert bool((ei[1, 1:] >= ei[1, :-1]).all()), et
            pairs = set(map(tuple, ei.t().tolist()))
            if batch[et].distinct:
                assert not replace and len(pairs) == ei.size(1)
    # a friendship listed twice: the batches of that edge type are not marked distinct
    g = build_graph(["a", "b"], ["x"], [[0, 1], [0, 0]])
    g[UU].edge_index = torch.tensor([[0, 0, 1, 1], [1, 1, 0, 0]])
    batch = NeighborSampler(g, [3], seed=0).sample({"user": torch.tensor([1])})
    assert batch[UU].edge_index.size(1) == 2 and not batch[UU].distinct
    assert batch[IU].distinct


@pytest.mark.parametrize(("deg", "k"), [(5, 2), (40, 36), (3000, 15)])
def test_without_replacement_is_uniform(deg: int, k: int) -> None:
    """Floyd's method: k distinct offsets per node, each offset equally likely."""
    n = 4000
    indptr = np.array([0, deg])
    row, pos = sample_positions(indptr, np.zeros(n, dtype=np.int64), k, False,
                                np.random.default_rng(0))
    order = np.argsort(row, kind="stable")
    assert (row[order] == np.repeat(np.arange(n), k)).all()
    picks = pos[order].reshape(n, k)
    assert (np.diff(np.sort(picks, axis=1), axis=1) > 0).all()  # no repeats in a row
    freq = np.bincount(picks.ravel(), minlength=deg) / n  # each offset: k / deg
    assert np.abs(freq - k / deg).max() < 0.04, freq
    if k == 2:
        counts = Counter(tuple(sorted(p)) for p in picks.tolist())
        assert len(counts) == 10
        assert all(abs(c - n / 10) < n / 50 for c in counts.values()), counts


def test_empty_edge_types_and_isolated_seeds() -> None:
    g = apply_split(build_graph(["a", "b", "c"], ["x", "y"], [[0, 0, 1], [0, 1, 1]]), seed=0)
    assert g[UU].edge_index.numel() == 0
    sampler = NeighborSampler(g, [2, 2], seed=0)
    batch = sampler.sample({"user": torch.tensor([2, 0]), "tag": torch.empty(0, dtype=torch.long)})
    check_sample(g, batch, {"user": [2, 0], "tag": []}, [2, 2], False)
    assert batch[UU].edge_index.shape == (2, 0)
    assert batch["tag"].num_nodes == 0


def test_per_edge_type_fanout_and_errors(graph: HeteroData) -> None:
    sampler = NeighborSampler(graph, {IU: [3, 0], UI: [0, 2]}, seed=0)
    batch = sampler.sample({"user": torch.tensor([1, 2])})
    assert batch[UU].edge_index.size(1) == 0
    assert batch[IU].num_sampled_edges[1] == 0 and batch[UI].num_sampled_edges[0] == 0
    check_sample(graph, batch, {"user": [1, 2]}, {IU: [3, 0], UI: [0, 2]}, False)
    with pytest.raises(SamplerError, match="unknown edge types"):
        NeighborSampler(graph, {("user", "likes", "item"): [1]})
    with pytest.raises(SamplerError, match="differ in length"):
        NeighborSampler(graph, {IU: [1, 2], UI: [1]})
    with pytest.raises(SamplerError, match="outside 0..79"):
        sampler.sample({"user": torch.tensor([80])})
    with pytest.raises(SamplerError, match="unknown node types"):
        sampler.sample({"artist": torch.tensor([0])})


def test_node_batches_cover_seeds_once(graph: HeteroData) -> None:
    loader = NodeBatchSampler(graph, "user", FANOUT, batch_size=16, seed=4)
    assert len(loader) == 5
    first = list(loader)
    seen = [i for b in first for i in b["user"].n_id[: b["user"].batch_size].tolist()]
    assert sorted(seen) == list(range(80)) and seen != list(range(80))
    second = list(loader)
    assert [b["user"].n_id[:16].tolist() for b in first] != [
        b["user"].n_id[:16].tolist() for b in second]
    again = loader.batch(0, 2)
    assert torch.equal(again[IU].e_id, first[2][IU].e_id)


def test_link_batches(graph: HeteroData) -> None:
    loader = LinkBatchSampler(graph, [3, 2], batch_size=100, num_negatives=2, seed=5)
    train = {(u, i) for (u, i), s in zip(graph[UI].edge_index.t().tolist(),
                                          graph[UI].split.tolist(), strict=True) if s == 0}
    seen: list[tuple[int, int]] = []
    for batch in loader.iter_epoch(0):
        users = batch["user"].n_id[batch["user"].src_index]
        pos = batch["item"].n_id[batch["item"].dst_pos_index]
        neg = batch["item"].n_id[batch["item"].dst_neg_index]
        assert neg.shape == (users.numel(), 2)
        pairs = list(zip(users.tolist(), pos.tolist(), strict=True))
        assert all(p in train for p in pairs)
        assert not any((u, n) in train for u, row in zip(users.tolist(), neg.tolist(), strict=True)
                       for n in row)
        assert torch.equal(graph[UI].edge_index[:, batch[UI].input_id], torch.stack([users, pos]))
        assert batch["user"].batch_size == len(set(users.tolist()))
        seen += pairs
    assert len(seen) == len(train) and set(seen) == train
    a, b = loader.batch(1, 0), loader.batch(1, 0)
    assert torch.equal(a["item"].dst_neg_index, b["item"].dst_neg_index)
    assert torch.equal(a[IU].edge_index, b[IU].edge_index)
    assert not torch.equal(loader.batch(2, 0)[UI].input_id, a[UI].input_id)


def test_csr_direction_and_train_only(graph: HeteroData) -> None:
    csr = TrainView.from_graph(graph).csr[UI]  # rows: items, entries: users
    ref = in_neighbours(graph)[UI]
    for item in range(50):
        got = csr.indices[csr.indptr[item]:csr.indptr[item + 1]].tolist()
        assert sorted(got) == sorted(ref[item])


def test_csr_rows_are_8_bytes_with_weights_apart(graph: HeteroData) -> None:
    """Int32 (column, edge id) rows of 8 bytes; the weights a Float32 array of their own,
    entry for entry the graph's weight of the entry's edge."""
    for et, c in TrainView.from_graph(graph).csr.items():
        assert c.table.dtype == np.int32 and c.table.strides[0] == 8 and c.table.shape[1] == 2
        assert c.has_weight == ("weight" in graph[et])
        if c.has_weight:
            assert c.weight.dtype == np.float32 and c.weight.shape == (c.nnz,)
            np.testing.assert_array_equal(c.weight, graph[et].weight.numpy()[c.eid])
            _, _, w = c.take(np.arange(c.nnz)[::-3])
            np.testing.assert_array_equal(w, c.weight[::-3])
            assert c.take(np.arange(c.nnz)[::-3], weights=False)[2] is None


def test_sampler_module_does_not_import_ray() -> None:
    tree = ast.parse(Path(sampler_module.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m == "ray" or m.startswith("ray.") for m in names)
