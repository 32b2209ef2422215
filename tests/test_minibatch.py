"""Mini-batch training from sampled subgraphs: exactness, the training path, CLI, Ray sampler."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch_geometric.data import HeteroData

from gnnrec.cli import main
from gnnrec.gnn.batches import SampledBatches, background
from gnnrec.gnn.generators import synthetic_graph
from gnnrec.gnn.graph_file import save_graph
from gnnrec.gnn.minibatch import (
    MiniBatchConfig,
    link_sampler,
    model_fanouts,
    train_minibatch,
)
from gnnrec.gnn.models import MF, HeteroGraphSAGE, LightGCN
from gnnrec.gnn.models import lightgcn as lgcn_module
from gnnrec.gnn.run import load_run
from gnnrec.gnn.split import apply_split
from gnnrec.gnn.train import RankingStep, TrainConfig, TrainingError, seed_everything
from gnnrec.gnn.views import TrainView

CFG = dict(epochs=3, batch_size=128, lr=0.01, l2=1e-4, patience=5, seed=1, device="cpu")


@pytest.fixture(scope="module")
def graph() -> HeteroData:
    return apply_split(synthetic_graph(120, 60, num_tags=6, mean_interactions=10.0,
                                       friends_per_user=3.0, seed=0), "random", seed=0)


def _models(g: HeteroData) -> list[torch.nn.Module]:
    seed_everything(0)
    t = TrainView.from_graph(g).sizes
    return [HeteroGraphSAGE(t, embedding_dim=16, num_layers=2),
            LightGCN(t, embedding_dim=16, num_layers=3, social_weight=0.5),
            LightGCN(t, embedding_dim=16, num_layers=1)]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["graphsage", "lightgcn-social", "lightgcn-1"])
def test_all_neighbours_give_the_full_graph_embeddings_and_loss(graph: HeteroData,
                                                                which: int) -> None:
    model = _models(graph)[which].eval()
    inputs = model.inputs(TrainView.from_graph(graph))
    mb = MiniBatchConfig(num_neighbors=[-1] * model.num_layers)
    batch = link_sampler(graph, model, TrainConfig(batch_size=64, num_negatives=2), mb).batch(0, 1)
    step = RankingStep(model)
    with torch.no_grad():
        block = model.block(batch, inputs)
        out = model(block)  # the same forward on the sampled block
        full = model(inputs)
        for nt, emb, got in (("user", full.user, out.user), ("item", full.item, out.item)):
            seeds = batch[nt].batch_size
            torch.testing.assert_close(got[:seeds], emb[batch[nt].n_id[:seeds]],
                                       atol=1e-5, rtol=1e-5)
        u = batch["user"].n_id[batch["user"].src_index]
        p = batch["item"].n_id[batch["item"].dst_pos_index]
        n = batch["item"].n_id[batch["item"].dst_neg_index]
        sampled = step(block, batch["user"].src_index, batch["item"].dst_pos_index,
                       batch["item"].dst_neg_index)
        for got, want in zip(sampled, model.bpr_loss(inputs, u, p, n), strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("social", [0.0, 0.5])
def test_lightgcn_block_layers_run_on_the_seeds_neighbourhood_only(graph: HeteroData,
                                                                   social: float) -> None:
    """Trimmed layers (layer l on the nodes within L - l hops) give the seeds the outputs of
    the untrimmed propagation over every node of the same sampled block."""
    seed_everything(0)
    view = TrainView.from_graph(graph)
    model = LightGCN(view.sizes, embedding_dim=8, num_layers=3, social_weight=social).eval()
    mb = MiniBatchConfig(num_neighbors=[3, 2, 2])
    batch = link_sampler(view, model, TrainConfig(batch_size=16), mb).batch(0, 2)
    block = model.block(batch, model.inputs(view))
    rows = block.hop_rows(3)
    assert rows is not None and rows[0] < rows[1] < rows[2] < rows[3] == block.adj.size(0)
    out = model(block)
    egos = [model.user_embedding(block.users), model.item_embedding(block.items)]
    dense = x = torch.cat(egos)[block.order]  # plain autograd ops, every node, every layer
    dense = dense * 0.25
    for _ in range(3):
        x = block.adj.to_dense() @ x
        dense = dense + x * 0.25
    nu, ni = batch["user"].batch_size, batch["item"].batch_size
    assert out.user.shape == (nu, 8) and out.item.shape == (ni, 8)
    got = torch.cat([out.user, out.item])
    torch.testing.assert_close(got, dense[: nu + ni])
    # the same gradients (spmm_head and permute_rows' backward passes)
    weights = torch.randn_like(got)
    grads = [torch.autograd.grad((y * weights).sum(), [model.user_embedding.weight,
                                                       model.item_embedding.weight])
             for y in (got, dense[: nu + ni])]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
    # the hop order: seed users, seed items, then each hop's new users and items
    glob = torch.cat([block.users, block.items + model.num_users])
    user_pos, item_pos = lgcn_module._hop_positions(block.hops, torch.device("cpu"))
    order = torch.empty_like(glob)
    order[user_pos], order[item_pos] = glob[: block.users.numel()], glob[block.users.numel():]
    assert torch.equal(order[:nu], block.users[:nu])
    assert torch.equal(order[nu:nu + ni], block.items[:ni] + model.num_users)


def test_sage_trimmed_layers_give_the_seeds_untrimmed_outputs_and_gradients(
        graph: HeteroData) -> None:
    seed_everything(0)
    view = TrainView.from_graph(graph)
    model = HeteroGraphSAGE(view.sizes, embedding_dim=8, num_layers=2).eval()
    mb = MiniBatchConfig(num_neighbors=[3, 2])
    batch = link_sampler(view, model, TrainConfig(batch_size=16), mb).batch(0, 1)
    block = model.block(batch, model.inputs(view))
    assert block.hops is not None
    results = []
    for inputs in (block, dataclasses.replace(block, hops=None)):
        out = model(inputs)
        nu, ni = batch["user"].batch_size, batch["item"].batch_size
        seeds = torch.cat([out.user[:nu], out.item[:ni]])
        g = torch.Generator().manual_seed(0)
        loss = (seeds * torch.randn(seeds.shape, generator=g)).sum()
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        results.append((seeds, grads))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b)


def test_sage_block_builds_its_layers_transposes_ahead_and_computes_the_same(
        graph: HeteroData) -> None:
    seed_everything(0)
    view = TrainView.from_graph(graph)
    model = HeteroGraphSAGE(view.sizes, embedding_dim=8, num_layers=2).eval()
    batch = link_sampler(view, model, TrainConfig(batch_size=16),
                         MiniBatchConfig(num_neighbors=[3, 2])).batch(0, 1)
    block = model.block(batch, model.block_inputs(view))
    assert block.layers is not None and len(block.layers) == 2
    # layer 0 computes the nodes within 1 hop of the seeds and reads every node
    assert block.layers[0][("user", "friend", "user")].shape == (
        block.hops["user"][1], block.hops["user"][-1])
    assert all(hasattr(a, "_gnnrec_transpose") for layer in block.layers for a in layer.values())
    results = []
    for inputs in (block, dataclasses.replace(model.block(batch, model.block_inputs(view)),
                                              layers=None)):
        out = model(inputs)
        loss = out.user.square().sum() + out.item.sum()
        params = [p for p in model.parameters() if p.requires_grad]
        results.append((out.user, out.item,
                        torch.autograd.grad(loss, params, allow_unused=True)))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    for a, b in zip(results[0][2], results[1][2], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


def test_background_steps_are_the_steps(graph: HeteroData) -> None:
    """Steps built ahead in a thread are those built in line; errors reach the caller and
    an abandoned stream stops its thread."""
    view = TrainView.from_graph(graph)
    model = _models(graph)[0]
    sampler = link_sampler(view, model, TrainConfig(batch_size=64), MiniBatchConfig())
    inputs = model.inputs(view)
    inline = list(SampledBatches(model, inputs, sampler.iter_epoch, 0)(1))
    ahead = list(SampledBatches(model, inputs, sampler.iter_epoch, 0, ahead=2)(1))
    assert len(inline) == len(ahead) == len(sampler)
    for a, b in zip(inline, ahead, strict=True):
        for et, adj in a[0].adj.items():
            assert torch.equal(adj.to_dense(), b[0].adj[et].to_dense())
        assert all(torch.equal(x, y) for x, y in zip(a[1:], b[1:], strict=True))

    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("sampler broke")

    it = background(failing(), 1)
    assert next(it) == 1
    with pytest.raises(ValueError, match="sampler broke"):
        next(it)
    before = threading.active_count()
    it = background(iter(range(10**9)), 2)
    assert next(it) == 0
    it.close()  # joins the thread
    assert threading.active_count() == before
    # a stream left running (torch work in the thread) does not abort the interpreter's exit
    code = ("import torch\nfrom gnnrec.gnn.batches import background\n"
            "def work():\n    while True:\n"
            "        yield torch.ones(1500, 1500) @ torch.ones(1500, 1500)\n"
            "it = background(work(), 1)\nnext(it)\nprint('done')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and "done" in run.stdout, run.stderr[-2000:]


def test_sampled_batches_are_small_and_train_every_parameter() -> None:
    g = apply_split(synthetic_graph(3000, 800, num_tags=20, mean_interactions=15.0, seed=1),
                    seed=1)
    view = TrainView.from_graph(g)
    model = HeteroGraphSAGE(view.sizes, embedding_dim=8, num_layers=2)
    mb = MiniBatchConfig(num_neighbors=[3, 2])
    assert model_fanouts(model, mb.num_neighbors)[("user", "friend", "user")] == [3, 2]
    batch = link_sampler(g, model, TrainConfig(batch_size=32), mb).batch(0, 0)
    # 32 positive pairs, fan-out (3, 2): about a quarter of the users and half the items
    # (0.23-0.26 and 0.43-0.50 over the first 10 batches), not the whole graph
    assert batch["user"].num_nodes < 0.3 * 3000 and batch["item"].num_nodes < 0.6 * 800
    model.train()
    block = model.block(batch, model.inputs(view))
    bpr, l2 = RankingStep(model)(block, batch["user"].src_index, batch["item"].dst_pos_index,
                                 batch["item"].dst_neg_index)
    (bpr + 1e-4 * l2).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad


def test_train_minibatch_learns(graph: HeteroData) -> None:
    for model in _models(graph)[:2]:
        cfg = TrainConfig(**{**CFG, "epochs": 4})
        mb = MiniBatchConfig(num_neighbors=[4] * model.num_layers)
        res = train_minibatch(model, graph, cfg, mb, progress=False)
        losses = [r["loss"] for r in res.history]
        assert losses[-1] < losses[0] and res.best_valid["recall@20"] > 0
        n_train = int((graph["user", "interacts", "item"].split == 0).sum())
        assert all(r["batches"] == -(-n_train // cfg.batch_size) for r in res.history)


def test_bad_settings_are_refused(graph: HeteroData) -> None:
    t = TrainView.from_graph(graph).sizes
    with pytest.raises(TrainingError, match="supports graphsage, lightgcn and xsimgcl"):
        train_minibatch(MF(t), graph, TrainConfig(**CFG), MiniBatchConfig(), progress=False)
    with pytest.raises(TrainingError, match="one fan-out per layer"):
        train_minibatch(HeteroGraphSAGE(t, num_layers=2), graph, TrainConfig(**CFG),
                        MiniBatchConfig(num_neighbors=[5]), progress=False)
    with pytest.raises(TrainingError, match="tag_weight > 0 full-graph"):
        train_minibatch(LightGCN(t, num_layers=2, tag_weight=0.5), graph, TrainConfig(**CFG),
                        MiniBatchConfig(num_neighbors=[5, 5]), progress=False)
    with pytest.raises(TrainingError, match="loss full .* needs full-graph training"):
        train_minibatch(LightGCN(t, num_layers=2), graph, TrainConfig(**{**CFG, "loss": "full"}),
                        MiniBatchConfig(num_neighbors=[5, 5]), progress=False)


def _cli_train(gpath: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "graphsage", "--graph", str(gpath), "--out", str(out),
            "--batch-size", "128", "--lr", "0.01", "--embedding-dim", "8", "--seed", "1",
            "--no-progress", "--minibatch", "--num-neighbors", "4", "3", *extra]


def test_cli_minibatch_run_resume_and_evaluate(graph: HeteroData, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    gpath = save_graph(graph, tmp_path / "g.pt")
    out = tmp_path / "runs" / "sage-mb"
    assert main(_cli_train(gpath, out, "--epochs", "2")) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["minibatch"]["num_neighbors"] == [4, 3]
    assert len(meta["history"]) == 2 and all("batches" in r for r in meta["history"])
    # --resume keeps the mini-batch settings recorded in the run.
    assert main(["train", "--out", str(out), "--resume", "--epochs", "3", "--no-progress"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert [r["epoch"] for r in meta["history"]] == [1, 2, 3] and "batches" in meta["history"][2]
    model, meta, _ = load_run(out)
    assert isinstance(model, HeteroGraphSAGE)
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["recall@20"] == pytest.approx(
        meta["best_valid"]["recall@20"], abs=1e-6)


def test_cli_sample_ahead_is_recorded_and_changes_no_step(graph: HeteroData,
                                                          tmp_path: Path) -> None:
    """``--sample-ahead 0`` (less memory) trains the same steps as the default thread."""
    gpath = save_graph(graph, tmp_path / "g.pt")
    histories = []
    for name, extra in (("ahead", []), ("inline", ["--sample-ahead", "0"])):
        assert main(_cli_train(gpath, tmp_path / name, "--epochs", "2", *extra)) == 0
        meta = json.loads((tmp_path / name / "meta.json").read_text())
        assert meta["minibatch"]["ahead"] == (0 if extra else 1)
        histories.append([(r["loss"], r["valid"]["recall@20"]) for r in meta["history"]])
    assert histories[0] == histories[1]


@pytest.mark.integration
def test_ray_sampler_gives_the_in_process_run(ray_session: None, graph: HeteroData,
                                              tmp_path: Path) -> None:
    gpath = save_graph(graph, tmp_path / "g.pt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-comparable losses
    try:
        histories = []
        for name, extra in (("local", []), ("ray", ["--sampler", "ray", "--sampler-workers", "2"])):
            assert main(_cli_train(gpath, tmp_path / name, "--epochs", "2", *extra)) == 0
            meta = json.loads((tmp_path / name / "meta.json").read_text())
            assert meta["minibatch"]["sampler"] == ("ray" if extra else "inprocess")
            histories.append([(r["loss"], r["valid"]["recall@20"]) for r in meta["history"]])
    finally:
        torch.set_num_threads(threads)
    assert histories[0] == histories[1]
