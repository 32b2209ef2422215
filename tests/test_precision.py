"""Mixed-precision (bf16) training steps: GraphSAGE's layers in bf16, float32 loss, weights
and gradients; the default fp32 step is unchanged."""

from __future__ import annotations

import os

import pytest
import torch
from torch_geometric.data import HeteroData

from gnnrec.gnn.generators import synthetic_graph
from gnnrec.gnn.minibatch import MiniBatchConfig, link_sampler, train_minibatch
from gnnrec.gnn.models import HeteroGraphSAGE, sage
from gnnrec.gnn.models.base import mean_adjacency, spmm
from gnnrec.gnn.split import apply_split
from gnnrec.gnn.train import RankingStep, TrainConfig, TrainingError, seed_everything
from gnnrec.gnn.views import TrainView


@pytest.fixture(scope="module")
def graph() -> HeteroData:
    return apply_split(synthetic_graph(200, 80, num_tags=6, mean_interactions=10.0,
                                       friends_per_user=3.0, seed=0), "random", seed=0)


def _step(model: HeteroGraphSAGE, view: TrainView, precision: str) -> tuple[float, dict]:
    batch = link_sampler(view, model, TrainConfig(batch_size=64, num_negatives=2),
                         MiniBatchConfig([4, 3])).batch(0, 0)
    block = model.block(batch, model.block_inputs(view))
    model.zero_grad()
    bpr, l2 = RankingStep(model, precision=precision)(
        block, batch["user"].src_index, batch["item"].dst_pos_index,
        batch["item"].dst_neg_index)
    assert bpr.dtype == l2.dtype == torch.float32
    (bpr + 1e-4 * l2).backward()
    return bpr.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_bf16_step_runs_the_layers_in_bf16_with_float32_loss_and_gradients(
        graph: HeteroData, monkeypatch: pytest.MonkeyPatch) -> None:
    view = TrainView.from_graph(graph)
    seed_everything(0)
    model = HeteroGraphSAGE(view.sizes, embedding_dim=16, num_layers=2, id_dropout=0.0)
    batch = link_sampler(view, model, TrainConfig(batch_size=64), MiniBatchConfig([4, 3])
                         ).batch(0, 0)
    block = model.block(batch, model.block_inputs(view))
    read: list[torch.dtype] = []  # what each aggregation of the layers reads

    def spy(f):  # type: ignore[no-untyped-def]
        def call(adj, x, *rest):  # type: ignore[no-untyped-def]
            read.append(x.dtype)
            return f(adj, x, *rest)
        return call

    for name in ("spmm", "spmm_head"):
        monkeypatch.setattr(sage, name, spy(getattr(sage, name)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(block)
    assert out.user.dtype == out.item.dtype == torch.bfloat16
    assert len(read) > 4 and set(read) == {torch.bfloat16}  # aggregations too, not products only
    monkeypatch.undo()
    assert out.user_ego.dtype == torch.float32  # the L2 term reads the float32 inputs
    assert model(block).user.dtype == torch.float32  # outside autocast: float32
    loss32, grads32 = _step(model, view, "fp32")
    loss16, grads16 = _step(model, view, "bf16")
    assert loss16 == pytest.approx(loss32, rel=0.02) and loss16 != loss32
    assert grads16.keys() == grads32.keys()
    for name, g in grads16.items():
        assert g.dtype == torch.float32 and bool(torch.isfinite(g).all()), name
    # the id embeddings' gradients, the bulk of the parameters, agree to bf16's precision
    for name in ("user_id.weight", "item_id.weight"):
        rel = (grads16[name] - grads32[name]).norm() / grads32[name].norm()
        assert rel < 0.1, (name, float(rel))


def test_spmm_in_bf16_follows_its_input() -> None:
    g = torch.Generator().manual_seed(0)
    dst, src = torch.randint(0, 50, (400,), generator=g), torch.randint(0, 70, (400,), generator=g)
    adj = mean_adjacency(dst, src, 50, 70)
    x = torch.randn(70, 8, generator=g)
    out = spmm(adj, x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), spmm(adj, x), rtol=0.02, atol=0.02)


def test_bf16_minibatch_training_learns(graph: HeteroData) -> None:
    seed_everything(1)
    model = HeteroGraphSAGE(TrainView.from_graph(graph).sizes, embedding_dim=16)
    cfg = TrainConfig(epochs=4, batch_size=128, lr=0.01, seed=1, device="cpu",
                      precision="bf16")
    res = train_minibatch(model, graph, cfg, MiniBatchConfig([4, 3]), progress=False)
    losses = [r["loss"] for r in res.history]
    assert losses[-1] < losses[0] and res.best_valid["recall@20"] > 0
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(TrainingError, match="precision must be one of fp32, bf16"):
        TrainConfig(precision="fp16").validate()  # type: ignore[arg-type]


def test_a_bf16_step_turns_off_onednn_shape_caches(monkeypatch: pytest.MonkeyPatch,
                                                   graph: HeteroData) -> None:
    # oneDNN / ideep cache what they build per shape; a block's shapes change every step,
    # so with the caches a bf16 epoch's memory grew at every step (experiments/README.md)
    from gnnrec.gnn.allocator import ONEDNN_CACHES

    model = HeteroGraphSAGE(TrainView.from_graph(graph).sizes, embedding_dim=8)
    for name in ONEDNN_CACHES:
        monkeypatch.delenv(name, raising=False)
    RankingStep(model)  # fp32: nothing set
    assert not any(name in os.environ for name in ONEDNN_CACHES)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "64")  # what the user set stays
    RankingStep(model, precision="bf16")
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "0"
    assert os.environ["LRU_CACHE_CAPACITY"] == "64"
