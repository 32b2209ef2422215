"""Memory per interaction: memory-mapped graph files, narrow CSR tables, Int32 sampler
arrays, block inputs instead of full-graph inputs during mini-batch training; each
change either exact (same results as before) or checked against a reference."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import HeteroData

from gnnrec.gnn.adjacency import CSR
from gnnrec.gnn.data import IU, UI, fingerprint
from gnnrec.gnn.generators import synthetic_graph
from gnnrec.gnn.graph_file import load_graph, save_graph
from gnnrec.gnn.minibatch import MiniBatchConfig, link_sampler, train_minibatch
from gnnrec.gnn.models import HeteroGraphSAGE, LightGCN
from gnnrec.gnn.negative import NegativeSampler
from gnnrec.gnn.run import RunGraph
from gnnrec.gnn.split import apply_split
from gnnrec.gnn.train import Session, TrainConfig, fit, seed_everything
from gnnrec.gnn.views import SplitInteractions, TrainView

CFG = dict(epochs=2, batch_size=96, lr=0.01, l2=1e-4, patience=5, seed=3, device="cpu",
           num_negatives=2)


@pytest.fixture(scope="module")
def graph() -> HeteroData:
    return apply_split(synthetic_graph(150, 70, num_tags=8, mean_interactions=9.0,
                                       friends_per_user=3.0, seed=2), "random", seed=0)


def _mapped(path: Path) -> bool:
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_graph_file_is_memory_mapped_and_the_view_lets_it_go(graph: HeteroData,
                                                            tmp_path: Path) -> None:
    path = save_graph(graph, tmp_path / "g.pt")
    loaded = load_graph(path)
    assert _mapped(path)  # the tensors are the file's pages
    assert fingerprint(loaded) == fingerprint(graph)
    view = TrainView.from_graph(loaded)
    del loaded
    gc.collect()
    assert not _mapped(path)  # nothing of the train view refers to the mapping
    assert view.csr[UI].nnz == int((graph[UI].split == 0).sum())
    plain = load_graph(path, mmap=False)
    assert not _mapped(path) and fingerprint(plain) == fingerprint(graph)


def test_a_mapped_graph_is_copy_on_write(graph: HeteroData, tmp_path: Path) -> None:
    path = save_graph(graph, tmp_path / "g.pt")
    before = path.read_bytes()
    loaded = load_graph(path)
    loaded[UI].weight.mul_(2)  # in place: the process's copy, never the file
    assert path.read_bytes() == before
    assert fingerprint(load_graph(path)) == fingerprint(graph)


def test_legacy_non_zip_graph_files_still_load(graph: HeteroData, tmp_path: Path) -> None:
    save_graph(graph, tmp_path / "new.pt")
    payload = torch.load(tmp_path / "new.pt", weights_only=True)
    old = tmp_path / "old.pt"
    torch.save(payload, old, _use_new_zipfile_serialization=False)
    assert fingerprint(load_graph(old)) == fingerprint(graph)


def test_split_interactions_keep_columns_only(graph: HeteroData) -> None:
    inter = SplitInteractions.from_graph(graph)
    assert inter.csr.table.shape == (graph[UI].edge_index.size(1), 1)
    assert inter.csr.table.dtype == np.int32 and not inter.csr.has_eid
    ref = CSR.from_edges(graph[UI].edge_index[0], graph[UI].edge_index[1],
                         int(graph["user"].num_nodes))
    np.testing.assert_array_equal(inter.csr.indices, ref.indices)
    np.testing.assert_array_equal(inter.split, graph[UI].split.numpy()[ref.eid])
    with pytest.raises(ValueError, match="no edge ids"):
        _ = inter.csr.eid


def test_a_run_graph_written_with_edge_ids_still_loads(graph: HeteroData) -> None:
    """Runs written before (``adjacency.pt`` tables of (column, edge id) rows) load and
    answer as the new ones do."""
    new = RunGraph.from_graph(graph)
    arrays = new.arrays()
    assert arrays["interactions"]["table"].shape[1] == 1
    old = dict(arrays)
    ref = CSR.from_edges(graph[UI].edge_index[0], graph[UI].edge_index[1],
                         int(graph["user"].num_nodes))
    old["interactions"] = {**arrays["interactions"], "table": torch.from_numpy(ref.table)}
    ids = {"user": new.user_ids, "item": new.item_ids, "tag": new.tag_ids}
    a, b = RunGraph.load(ids, arrays), RunGraph.load(ids, old)
    for splits in ((0,), (1, 2)):
        np.testing.assert_array_equal(a.interactions.part(splits).keys(70),
                                      b.interactions.part(splits).keys(70))
    np.testing.assert_array_equal(a.interactions.csr.gather([3, 5])[1],
                                  b.interactions.csr.gather([3, 5])[1])


def test_link_sampler_reads_its_positives_from_the_view(graph: HeteroData) -> None:
    """No per-positive copy: the batches' positives are the view's CSR entries, the
    epoch's order and the negative sampler's train items are Int32."""
    view = TrainView.from_graph(graph)
    model = LightGCN(view.sizes, embedding_dim=8, num_layers=2)
    sampler = link_sampler(view, model, TrainConfig(batch_size=50), MiniBatchConfig())
    assert sampler.positives is view.csr[UI]
    assert sampler.negatives.items.dtype == torch.int32
    src, dst, eid = view.edges(UI)
    batch = sampler.batch(0, 1)
    assert sampler._perm.dtype == np.int32
    assert sorted(sampler._perm.tolist()) == list(range(view.csr[UI].nnz))
    input_id = batch[UI].input_id
    assert input_id.dtype == torch.long
    users = batch["user"].n_id[batch["user"].src_index]
    items = batch["item"].n_id[batch["item"].dst_pos_index]
    pos = np.searchsorted(eid, input_id.numpy())
    np.testing.assert_array_equal(users.numpy(), src[pos])
    np.testing.assert_array_equal(items.numpy(), dst[pos])


def test_exact_negatives_are_the_kth_free_item() -> None:
    """The complement draw reads the drawing users' positives only; it must give the k-th
    item the user has not in train, k drawn as before."""
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(12, 30, generator=g) < 0.8
    mask[:, 7] = False
    u, i = mask.nonzero(as_tuple=True)
    sampler = NegativeSampler(u, i, 12, 30, seed=1)
    users = torch.tensor([3, 3, 0, 11, 5, 3, 9, 0])
    state = sampler.generator.get_state()
    got = sampler._exact(users)
    sampler.generator.set_state(state)
    r = torch.rand(users.numel(), generator=sampler.generator, dtype=torch.float64)
    for j, user in enumerate(users.tolist()):
        free = (~mask[user]).nonzero().flatten()
        k = min(int(r[j] * free.numel()), free.numel() - 1)
        assert int(got[j]) == int(free[k])


@pytest.mark.parametrize("kind", ["graphsage", "lightgcn"])
def test_block_inputs_give_the_same_blocks(graph: HeteroData, kind: str) -> None:
    view = TrainView.from_graph(graph)
    seed_everything(0)
    model = (HeteroGraphSAGE(view.sizes, embedding_dim=8) if kind == "graphsage"
             else LightGCN(view.sizes, embedding_dim=8, num_layers=2, social_weight=0.5)).eval()
    full, light = model.inputs(view), model.block_inputs(view)
    if kind == "graphsage":
        assert light.adj == {} and light.edges is None
    else:
        assert light.adj is None
    batch = link_sampler(view, model, TrainConfig(batch_size=40),
                         MiniBatchConfig(num_neighbors=[4, 3])).batch(0, 0)
    with torch.no_grad():
        a, b = model(model.block(batch, full)), model(model.block(batch, light))
    torch.testing.assert_close(a.user, b.user, rtol=0, atol=0)
    torch.testing.assert_close(a.item, b.item, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["graphsage", "lightgcn"])
def test_minibatch_training_is_unchanged_by_block_inputs(graph: HeteroData, kind: str) -> None:
    """Mini-batch training with block inputs (full-graph inputs only while evaluating)
    ends exactly where training with the full-graph inputs held throughout ends."""
    from gnnrec.gnn.batches import SampledBatches

    view = TrainView.from_graph(graph)
    config = TrainConfig(**CFG)
    mb = MiniBatchConfig(num_neighbors=[5, 3])

    def model() -> torch.nn.Module:
        seed_everything(0)
        return (HeteroGraphSAGE(view.sizes, embedding_dim=8) if kind == "graphsage"
                else LightGCN(view.sizes, embedding_dim=8, num_layers=2))

    a = model()
    res_a = train_minibatch(a, view, config, mb, progress=False)
    b = model()
    stream = link_sampler(view, b, config, mb).iter_epoch
    res_b = fit(b, view, config, session=Session(progress=False),
                batches=lambda inputs, device: SampledBatches(b, inputs, stream, config.seed,
                                                              device))
    assert [r["loss"] for r in res_a.history] == [r["loss"] for r in res_b.history]
    assert res_a.best_valid == res_b.best_valid
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_train_view_edges_round_trip(graph: HeteroData) -> None:
    """The edge order of the kept edges survives the narrow tables (IU is UI flipped)."""
    view = TrainView.from_graph(graph)
    keep = np.flatnonzero(graph[UI].split.numpy() == 0)
    src, dst, eid = view.edges(UI)
    np.testing.assert_array_equal(eid, keep)
    np.testing.assert_array_equal(np.stack([src, dst]), graph[UI].edge_index.numpy()[:, keep])
    src_r, dst_r, eid_r = view.edges(IU)
    np.testing.assert_array_equal(eid_r, keep)
    np.testing.assert_array_equal(src_r, dst)
    np.testing.assert_array_equal(
        view.edge_weight(UI).numpy(), graph[UI].weight.numpy()[keep])


def test_a_step_is_released_before_the_next_batch_is_sampled(graph: HeteroData) -> None:
    """Without sampling ahead, one batch and one block at a time: the previous ones are
    gone (no reference left in the loop or the batch source) when the next is sampled."""
    import weakref

    from gnnrec.gnn.batches import SampledBatches
    from gnnrec.gnn.train import RankingStep, run_epoch

    view = TrainView.from_graph(graph)
    seed_everything(0)
    model = LightGCN(view.sizes, embedding_dim=8, num_layers=2)
    sampler = link_sampler(view, model, TrainConfig(batch_size=60), MiniBatchConfig([4, 3]))
    made: list[weakref.ref] = []
    block = model.block

    def tracked_block(batch: HeteroData, inputs: object) -> object:
        out = block(batch, inputs)
        made.append(weakref.ref(out))
        return out

    model.block = tracked_block  # type: ignore[method-assign]
    asked = []

    def stream(epoch: int):
        for j in range(4):
            asked.append([r() is None for r in made])
            b = sampler.batch(epoch, j)
            made.append(weakref.ref(b))
            yield b
            del b

    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    steps = SampledBatches(model, model.block_inputs(view), stream, seed=0, ahead=0)(1)
    stats = run_epoch(RankingStep(model), optimizer, steps, 1e-4)
    assert stats["batches"] == 4 and len(made) == 8
    assert asked == [[True] * (2 * j) for j in range(4)]


def test_closing_a_part_consumed_background_stream_stops_its_thread() -> None:
    """A run that stops before the end of an epoch (a benchmark's timed batches) closes
    the stream: the thread sampling ahead is joined, not left computing at exit (where
    torch aborted the process, exit status 134)."""
    import threading
    import time

    from gnnrec.gnn.batches import background

    def slow():
        for j in range(100):
            time.sleep(0.02)
            yield j

    items = background(slow(), ahead=2)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()
    assert not any(t.name == "gnnrec-batches" for t in threading.enumerate())
