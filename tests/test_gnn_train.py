"""Training loop, run directories, resume and load_run (with a stand-in MF model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gnn_fixtures import TinyMF, TinyPop, fake_models, small_graph  # noqa: E402

from gnnrec.gnn.data import fingerprint  # noqa: E402
from gnnrec.gnn.graph_file import save_graph  # noqa: E402
from gnnrec.gnn.run import Run, RunError, load_run  # noqa: E402
from gnnrec.gnn.train import (  # noqa: E402
    TrainConfig,
    TrainingError,
    check_resumable,
    seed_everything,
    train,
)
from gnnrec.gnn.views import SplitInteractions, TrainView  # noqa: E402

CFG = dict(epochs=4, batch_size=256, lr=0.02, l2=1e-4, eval_every=1, patience=10, seed=3,
           device="cpu")


def _model(graph, seed: int = 3, **kw) -> TinyMF:
    seed_everything(seed)
    return TinyMF(TrainView.from_graph(graph).sizes, **kw)


def _run(tmp: Path, graph, model, name: str = "run", graph_path: Path | None = None) -> Run:
    return Run.create(tmp / name, model_name="tinymf", model=model, graph=graph,
                      graph_path=graph_path, train_config=TrainConfig(**CFG).to_dict())


def test_training_learns_and_is_reproducible() -> None:
    g = small_graph()
    results = [train(_model(g), g, TrainConfig(**CFG), progress=False) for _ in range(2)]
    losses = [[r["loss"] for r in res.history] for res in results]
    assert losses[0] == losses[1]  # same seed -> identical losses on CPU
    assert losses[0][-1] < losses[0][0]
    other = train(_model(g), g, TrainConfig(**{**CFG, "seed": 4}), progress=False)
    assert [r["loss"] for r in other.history] != losses[0]
    res = results[0]
    assert res.best_valid["recall@20"] > 0 and 1 <= res.best_epoch <= 4
    assert set(res.best_valid) >= {"recall@10", "ndcg@20", "coverage@20", "novelty@10"}


def test_multi_threaded_training_is_bit_reproducible() -> None:
    """Two threads, a graph big enough for torch's parallel scatter kernels: without
    deterministic kernels the two runs below differ (checked when this test was written)."""
    from gnnrec.gnn.generators import synthetic_graph
    from gnnrec.gnn.run import build_model
    from gnnrec.gnn.split import apply_split

    g = apply_split(synthetic_graph(1000, 1000, num_tags=6, mean_interactions=100.0, seed=0),
                    "random", seed=0)
    cfg = TrainConfig(**{**CFG, "epochs": 2, "batch_size": 1024, "eval_every": 2})
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        states = []
        for _ in range(2):
            seed_everything(cfg.seed)
            model = build_model("graphsage", g, {"embedding_dim": 64, "num_layers": 2})
            train(model, g, cfg, progress=False)
            states.append(model.state_dict())
    finally:
        torch.set_num_threads(threads)
    for key, value in states[0].items():
        assert torch.equal(states[1][key], value), key


def test_multiple_negatives_and_early_stopping() -> None:
    g = small_graph()
    cfg = TrainConfig(**{**CFG, "epochs": 30, "lr": 0.5, "patience": 2, "num_negatives": 3})
    res = train(_model(g), g, cfg, progress=False)
    assert res.stopped == "early_stopping" and len(res.history) < 30
    assert len(res.history) - res.best_epoch == 2


def test_softmax_loss_trains() -> None:
    g = small_graph()
    cfg = TrainConfig(**{**CFG, "loss": "softmax", "temperature": 0.5, "num_negatives": 4})
    res = train(_model(g), g, cfg, progress=False)
    losses = [r["loss"] for r in res.history]
    assert losses[-1] < losses[0]
    bpr = train(_model(g), g, TrainConfig(**{**CFG, "num_negatives": 4}), progress=False)
    assert [r["loss"] for r in bpr.history] != losses


def test_full_softmax_loss_trains_and_learns() -> None:
    g = small_graph()
    cfg = TrainConfig(**{**CFG, "loss": "full", "temperature": 0.5})
    res = train(_model(g), g, cfg, progress=False)
    losses = [r["loss"] for r in res.history]
    assert losses[-1] < losses[0]
    sampled = train(_model(g), g, TrainConfig(**{**CFG, "loss": "softmax", "temperature": 0.5}),
                    progress=False)
    assert [r["loss"] for r in sampled.history] != losses
    with pytest.raises(TrainingError, match="loss must be one of bpr, softmax, full"):
        TrainConfig(**{**CFG, "loss": "fullsoftmax"}).validate()


def test_nan_loss_stops_with_the_epoch() -> None:
    g = small_graph()
    with pytest.raises(TrainingError, match="diverged at epoch 1"):
        train(_model(g, nan=True), g, TrainConfig(**CFG), progress=False)


def test_model_without_parameters_is_evaluated_not_trained(tmp_path: Path) -> None:
    g = small_graph()
    pop = TinyPop(TrainView.from_graph(g).sizes)
    run = Run.create(tmp_path / "pop", model_name="pop", model=pop, graph=g, graph_path=None,
                     train_config=TrainConfig(**CFG).to_dict())
    res = train(pop, g, TrainConfig(**CFG), run=run, progress=False)
    assert res.stopped == "no_parameters" and res.best_epoch == 0
    meta = run.meta()
    assert meta["status"] == "finished" and meta["metrics"]["valid"]["recall@20"] > 0


def test_run_directory_files(tmp_path: Path) -> None:
    g = small_graph()
    gpath = save_graph(g, tmp_path / "g.pt")
    model = _model(g)
    run = _run(tmp_path, g, model, graph_path=gpath)
    res = train(model, g, TrainConfig(**CFG), run=run, progress=False)
    files = sorted(p.name for p in run.path.iterdir())
    assert files == ["adjacency.pt", "embeddings.pt", "id_maps.json", "last.pt", "meta.json",
                     "model.pt"]  # no temp files
    meta = json.loads((run.path / "meta.json").read_text())
    assert meta["model"] == {"name": "tinymf", "class": "TinyMF", "module": TinyMF.__module__,
                             "config": {"embedding_dim": 8},
                             "sizes": TrainView.from_graph(g).sizes.to_dict()}
    assert meta["train_config"]["lr"] == 0.02 and meta["status"] == "finished"
    assert meta["graph"]["fingerprint"] == fingerprint(g)
    assert meta["graph"]["path"] == str(gpath.resolve())
    assert meta["graph"]["split_info"]["kind"] == "random"
    assert meta["best_epoch"] == res.best_epoch and len(meta["history"]) == 4
    assert meta["best_valid"] == res.best_valid and meta["gnnrec_version"]
    assert json.loads((run.path / "id_maps.json").read_text())["user"][:2] == ["u0", "u1"]
    state = torch.load(run.path / "model.pt", weights_only=True)
    assert torch.equal(state["user.weight"], model.user.weight.detach())
    assert set(torch.load(run.path / "last.pt", weights_only=True)) >= {
        "epoch", "model", "optimizer", "rng", "best_metric", "history"}
    with pytest.raises(RunError, match="already holds a run"):
        _run(tmp_path, g, model)

    with fake_models(tinymf=TinyMF):
        loaded, meta2, g2 = load_run(run.path)  # the model from its checkpoint alone
    assert meta2["graph"]["fingerprint"] == fingerprint(g) and meta2["best_epoch"] == res.best_epoch
    kept = SplitInteractions.from_graph(g)  # the run keeps the split interactions it needs
    assert np.array_equal(g2.interactions.split, kept.split)
    assert np.array_equal(g2.interactions.csr.table, kept.csr.table)
    assert g2.user_ids == g["user"].ext_id and g2.tag_ids == g["tag"].ext_id
    assert torch.equal(loaded.score(torch.arange(5)), model.eval().score(torch.arange(5)))
    user, item = run.embeddings()  # the final embeddings: those of the best weights
    assert torch.equal(user @ item.T, model.score(torch.arange(g["user"].num_nodes)).detach())
    with pytest.raises(RunError, match="another graph"):
        check_resumable(run, "tinymf", model.config(), TrainConfig(**CFG),
                        fingerprint(small_graph(seed=9)))


def test_resume_after_a_kill_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    g = small_graph()
    cfg = TrainConfig(**{**CFG, "epochs": 5})
    full_model = _model(g)
    full = train(full_model, g, cfg, run=_run(tmp_path, g, full_model, "full"), progress=False)

    batches = -(-int((g["user", "interacts", "item"].split == 0).sum()) // cfg.batch_size)
    killed = _model(g, interrupt_at=2 * batches + 2)  # dies inside epoch 3
    run = _run(tmp_path, g, killed, "killed")
    with pytest.raises(KeyboardInterrupt):
        train(killed, g, cfg, run=run, progress=False)
    assert torch.load(run.path / "last.pt", weights_only=True)["epoch"] == 2
    assert run.meta()["status"] == "running"

    fresh = _model(g, seed=99)  # weights come from last.pt, not from this init
    check_resumable(run, "tinymf", fresh.config(), cfg, fingerprint(g))
    resumed = train(fresh, g, cfg, run=run, resume=True, progress=False)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    assert resumed.best_epoch == full.best_epoch and resumed.best_valid == full.best_valid
    for key, value in full_model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)

    with pytest.raises(RunError, match="cannot change lr"):
        check_resumable(run, "tinymf", fresh.config(), TrainConfig(**{**CFG, "lr": 0.1}),
                        fingerprint(g))
    check_resumable(run, "tinymf", fresh.config(), TrainConfig(**{**CFG, "epochs": 9}),
                    fingerprint(g))  # more epochs is fine


def test_final_fit_trains_its_epochs_on_train_and_valid(tmp_path: Path) -> None:
    from gnnrec.gnn.split import merge_valid

    g = small_graph()
    cfg = TrainConfig(**{**CFG, "epochs": 3, "patience": 1, "fit_on": "train+valid"})
    with pytest.raises(TrainingError, match="merge it into train first"):
        train(_model(g), g, cfg, progress=False)  # valid is still held out: refused
    merged = merge_valid(g)
    model = _model(merged)
    run = Run.create(tmp_path / "final", model_name="tinymf", model=model, graph=merged,
                     graph_path=None, train_config=cfg.to_dict())
    res = train(model, merged, cfg, run=run, progress=False)
    # no validation, no early stopping (patience 1 would stop a validated run): the last
    # epoch is the model, its weights and embeddings are the run's
    assert res.best_epoch == 3 and res.stopped == "max_epochs" and res.best_valid == {}
    assert all("valid" not in r for r in res.history) and len(res.history) == 3
    meta = run.meta()
    assert meta["status"] == "finished" and meta["metrics"] == {} and meta["best_epoch"] == 3
    kept = Run.open(tmp_path / "final").graph()  # the run keeps the merged split
    split = g["user", "interacts", "item"].split
    assert kept.interactions.part((1,)).nnz == 0
    assert kept.interactions.part((0,)).nnz == int((split != 2).sum())
    for key, value in model.state_dict().items():
        assert torch.equal(run.load_model_state()[key], value), key
    # the same epochs trained on train alone differ: the valid edges were trained on
    alone = train(_model(g), g, TrainConfig(**{**CFG, "epochs": 3, "patience": 10}),
                  progress=False)
    assert [r["loss"] for r in alone.history] != [r["loss"] for r in res.history]
    with pytest.raises(TrainingError, match="fit_on"):
        TrainConfig(fit_on="valid").validate()  # type: ignore[arg-type]


def test_bad_config_is_refused() -> None:
    with pytest.raises(TrainingError, match="batch_size"):
        TrainConfig(batch_size=0).validate()
    with pytest.raises(TrainingError, match="loss must be"):
        TrainConfig(loss="hinge").validate()  # type: ignore[arg-type]
    with pytest.raises(TrainingError, match="temperature"):
        TrainConfig(temperature=0).validate()
    if not torch.cuda.is_available():  # on a GPU host, tests/test_device.py trains on CUDA
        with pytest.raises(TrainingError, match="no CUDA"):
            g = small_graph()
            train(_model(g), g, TrainConfig(**{**CFG, "device": "cuda"}), progress=False)


@pytest.mark.parametrize("name", ["lightgcn", "graphsage"])
def test_resume_is_exact_with_the_real_models(tmp_path: Path, name: str) -> None:
    models = pytest.importorskip("gnnrec.gnn.models")
    if name not in getattr(models, "MODELS", {}):
        pytest.skip(f"model {name} not registered yet")
    from gnnrec.gnn.run import build_model

    g = small_graph(users=80, items=40)
    cfg = TrainConfig(**{**CFG, "epochs": 3, "batch_size": 512})
    hyper = {"embedding_dim": 8, "num_layers": 2, "dropout": 0.1}

    def fresh():
        seed_everything(cfg.seed)
        return build_model(name, g, hyper)

    full = fresh()
    train(full, g, cfg, progress=False)
    part = fresh()
    run = Run.create(tmp_path / name, model_name=name, model=part, graph=g, graph_path=None,
                     train_config=cfg.to_dict())
    train(part, g, TrainConfig(**{**cfg.to_dict(), "epochs": 1}), run=run, progress=False)
    resumed = fresh()
    train(resumed, g, cfg, run=run, resume=True, progress=False)
    for key, value in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_atomic_writes_leave_the_old_file_on_a_crash(tmp_path: Path) -> None:
    from gnnrec.gnn.run import save_torch, write_json

    write_json(tmp_path / "meta.json", {"epoch": 1})
    save_torch(tmp_path / "last.pt", {"epoch": 1})

    class Boom:
        def __reduce__(self):  # fails halfway through torch.save / after JSON starts
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        save_torch(tmp_path / "last.pt", {"epoch": 2, "x": torch.zeros(1000), "b": Boom()})
    with pytest.raises(TypeError):
        write_json(tmp_path / "meta.json", {"epoch": 2, "bad": object()})
    assert json.loads((tmp_path / "meta.json").read_text()) == {"epoch": 1}
    assert torch.load(tmp_path / "last.pt", weights_only=True) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "meta.json"]


@pytest.mark.parametrize("fused", [True, None])
def test_adam_takes_row_sparse_gradients_as_dense_adam_would(fused: bool | None) -> None:
    """A sparse embedding gradient gets torch's dense Adam update (every row's moments
    decay and every row moves), up to float rounding, with torch's state layout."""
    import torch.nn.functional as F

    from gnnrec.gnn.train import Adam

    torch.manual_seed(0)
    w0 = torch.randn(500, 8)
    dense, sparse = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    ref = torch.optim.Adam([dense], lr=0.01, fused=fused)
    opt = Adam([sparse], lr=0.01, fused=fused)
    opt.CHUNK_ROWS = 64  # several chunks
    for _ in range(6):
        rows = torch.randint(0, 500, (120,))  # repeats: their gradients add up
        target = torch.randn(rows.numel(), 8)
        for p, o, is_sparse in ((dense, ref, False), (sparse, opt, True)):
            o.zero_grad()
            ((F.embedding(rows, p, sparse=is_sparse) - target) ** 2).sum().backward()
            assert p.grad.is_sparse == is_sparse
            o.step()
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
    assert not torch.equal(sparse, w0)
    for key in ("exp_avg", "exp_avg_sq", "step"):
        torch.testing.assert_close(opt.state[sparse][key], ref.state[dense][key])
    ref.load_state_dict(opt.state_dict())  # checkpoints load either way


def test_minibatch_training_takes_row_sparse_embedding_gradients() -> None:
    """In one process a block's embedding gradient holds the block's rows only, not a
    dense table-sized one; after training the model gathers dense again."""
    from gnnrec.gnn.minibatch import MiniBatchConfig, link_sampler, train_minibatch
    from gnnrec.gnn.models.lightgcn import LightGCN
    from gnnrec.gnn.train import RankingStep, Session

    view = TrainView.from_graph(small_graph())
    model = LightGCN(view.sizes, embedding_dim=8, num_layers=2)
    config = TrainConfig(epochs=1, batch_size=16, device="cpu")
    batch = link_sampler(view, model, config, MiniBatchConfig([3, 2])).batch(0, 0)
    step = Session(progress=False).wrap(RankingStep(model))
    block = model.block(batch, model.block_inputs(view))
    bpr, reg = step(block, batch["user"].src_index, batch["item"].dst_pos_index,
                    batch["item"].dst_neg_index)
    (bpr + reg).backward()
    grad = model.user_embedding.weight.grad
    assert grad.is_sparse
    assert grad.coalesce().indices()[0].tolist() == sorted(batch["user"].n_id.tolist())
    train_minibatch(model, view, config, MiniBatchConfig([3, 2]), progress=False)
    assert model.sparse_grads is False


def test_eval_users_scores_a_seeded_sample_of_valid_users() -> None:
    """``eval_users`` evaluates the same seeded sample at every evaluation: the metrics
    are the evaluator's on exactly those users, and the training steps do not change."""
    from gnnrec.gnn.evaluate import Evaluator, dot_scores

    g = small_graph()
    full = train(_model(g), g, TrainConfig(**CFG), progress=False)
    model = _model(g)
    part = train(model, g, TrainConfig(**{**CFG, "eval_users": 30}), progress=False)
    assert [r["loss"] for r in part.history] == [r["loss"] for r in full.history]
    assert all(r["valid"]["users"] == 30 for r in part.history)
    evaluator = Evaluator(TrainView.from_graph(g), "valid")
    users = evaluator.sample_users(30, CFG["seed"])
    assert users is not None and users.numel() == 30 and bool((users.diff() > 0).all())
    assert set(users.tolist()) <= set(evaluator.users.tolist())
    out = model(model.inputs(TrainView.from_graph(g)))
    again = evaluator(dot_scores(out.user, out.item), users=users)
    assert again["recall@20"] == pytest.approx(part.best_valid["recall@20"], abs=1e-6)
    assert full.history[0]["valid"]["users"] == evaluator.users.numel() > 30
    assert evaluator.sample_users(10**6, 0) is None
    with pytest.raises(TrainingError, match="eval_users"):
        TrainConfig(**{**CFG, "eval_users": 0}).validate()
