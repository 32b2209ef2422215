"""iALS and EASE as product models: solves against references, fold-in, memory check,
training through the one loop and the CLI (no server; seconds)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gnn_fixtures import small_graph  # noqa: E402

from gnnrec.gnn.evaluate import evaluate  # noqa: E402
from gnnrec.gnn.graph_file import save_graph  # noqa: E402
from gnnrec.gnn.models import EASE, IALS, MODELS  # noqa: E402
from gnnrec.gnn.models.ease import EASEMemoryError, ease_weights  # noqa: E402
from gnnrec.gnn.models.ials import confidence_values  # noqa: E402
from gnnrec.gnn.run import load_run  # noqa: E402
from gnnrec.gnn.train import TrainConfig, seed_everything, train  # noqa: E402
from gnnrec.gnn.views import TrainView  # noqa: E402


@pytest.fixture(scope="module")
def graph():
    return small_graph(users=200, items=80)


def _solved(cls: type, graph, **kwargs) -> tuple:
    """The model for ``graph``'s train view, solved once, and its full-graph inputs."""
    view = TrainView.from_graph(graph)
    model = cls(view.sizes, **kwargs)
    model.solve(view, 1)
    return model, model.inputs(view)


def _dense_x(model: EASE, inputs) -> torch.Tensor:
    return model.user_rows(inputs, torch.arange(model.num_users))[:, :-1].double()


# -- EASE ---------------------------------------------------------------------------------
def test_ease_matches_the_dense_closed_form(graph) -> None:
    model, inputs = _solved(EASE, graph, regularization=7.0)
    x = _dense_x(model, inputs)
    p = torch.linalg.inv(x.T @ x + 7.0 * torch.eye(x.size(1), dtype=torch.float64))
    b = -p / torch.diag(p)[None, :]
    b.fill_diagonal_(0.0)
    assert torch.allclose(model.weights.double(), b, atol=1e-5)
    assert torch.all(torch.diag(model.weights) == 0)


def test_ease_weights_float32_close_to_float64() -> None:
    rng = np.random.default_rng(0)
    x = (rng.random((50, 30)) < 0.2).astype(np.float64)
    b64 = ease_weights(x.T @ x, 3.0)
    b32 = ease_weights((x.T @ x).astype(np.float32), 3.0)
    assert b64.dtype == np.float32 and np.abs(b64 - b32).max() < 1e-4


def test_ease_scores_are_rows_times_b_and_item_cap_excludes(graph) -> None:
    model, inputs = _solved(EASE, graph, regularization=5.0, max_items=20)
    assert model.items.numel() == 20
    degree = torch.bincount(TrainView.from_graph(graph).edge_index()[1],
                            minlength=model.num_items)
    assert degree[model.items].min() >= degree[torch.isin(
        torch.arange(model.num_items), model.items, invert=True)].max()
    users = torch.arange(10)
    scores = model.score(users, inputs)
    assert scores.shape == (10, model.num_items)
    outside = torch.isin(torch.arange(model.num_items), model.items, invert=True)
    assert torch.isinf(scores[:, outside]).all()
    u, i = model.embeddings(inputs)
    assert torch.allclose((u[users] @ i.T)[:, model.items], scores[:, model.items])
    # the final embeddings rank an item outside the model below every real score
    assert (u[users] @ i.T)[:, outside].max() < scores[:, model.items].min()


def test_ease_fold_in_adds_the_item_to_the_row(graph) -> None:
    model, inputs = _solved(EASE, graph, regularization=5.0)
    ei = TrainView.from_graph(graph).edge_index()
    items = ei[1, ei[0] == 3]
    row = model.fold_in_user(items)
    assert torch.equal(row, model.user_rows(inputs, torch.tensor([3]))[0])
    new_item = int(model.items[~torch.isin(model.items, items)][0])
    row2 = model.fold_in_user(torch.cat([items, torch.tensor([new_item])]))
    _, item_emb = model.embeddings(inputs)
    expected = model.score(torch.tensor([3]), inputs)[0, model.items] + model.weights[
        model.column[new_item]]
    assert torch.allclose((row2 @ item_emb.T)[model.items], expected, atol=1e-5)


def test_ease_memory_error_names_the_memory_and_the_cap(graph) -> None:
    with pytest.raises(EASEMemoryError, match=r"needs about .* GiB .*max_items=\d+"):
        _solved(EASE, graph, max_memory_gb=1e-6)


def test_ease_state_dict_round_trip(graph) -> None:
    model, inputs = _solved(EASE, graph, regularization=5.0, max_items=30)
    again = MODELS["ease"](model.sizes, **model.config())  # from the checkpoint alone
    again.load_state_dict(model.state_dict())
    users = torch.arange(5)
    assert torch.equal(again.score(users, inputs), model.score(users, inputs))


# -- iALS ---------------------------------------------------------------------------------
def test_ials_fold_in_is_implicits_user_solve(graph) -> None:
    seed_everything(0)
    view = TrainView.from_graph(graph)
    model = IALS(view.sizes, factors=8, regularization=0.5, alpha=3.0)
    for epoch in range(1, 4):
        model.solve(view, epoch)
    matrix = model._solver_matrix
    for user in (0, 5, 17):
        items = torch.from_numpy(matrix[user].indices.astype(np.int64))
        ours = model.fold_in_user(items)
        ref = model._solver.recalculate_user(user, matrix[user])
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-5)


def test_ials_learns_and_is_seeded(graph) -> None:
    def fit() -> tuple[float, torch.Tensor]:
        seed_everything(1)
        model = IALS(TrainView.from_graph(graph).sizes, factors=16, regularization=1.0,
                     alpha=5.0)
        result = train(model, graph, TrainConfig(epochs=8, patience=8, seed=1), progress=False)
        return result.best_valid["recall@20"], model.item_factors.detach().clone()

    (r1, f1), (r2, f2) = fit(), fit()
    assert r1 == r2 and torch.equal(f1, f2)
    popularity, inputs = _solved(MODELS["pop"], graph)
    pop = evaluate(lambda users: popularity.score(users, inputs), graph)["recall@20"]
    assert r1 > pop


def test_ials_log_confidence() -> None:
    values = confidence_values(torch.tensor([0.0, 1.0, 9.0]), 3, "log")
    np.testing.assert_allclose(values, 1 + np.log1p([0.0, 1.0, 9.0]), rtol=1e-6)
    assert confidence_values(torch.tensor([5.0]), 1, "binary").tolist() == [1.0]
    with pytest.raises(ValueError, match="confidence"):
        IALS(TrainView.from_graph(small_graph()).sizes, confidence="linear")


def test_solver_models_train_resume_and_reload_through_the_loop(graph, tmp_path: Path) -> None:
    from gnnrec.gnn.run import Run, build_model

    path = tmp_path / "g.pt"
    save_graph(graph, path)
    for name, args in (("ials", {"factors": 8, "regularization": 1.0}), ("ease", {})):
        seed_everything(0)
        model = build_model(name, graph, args)
        run = Run.create(tmp_path / name, model_name=name, model=model, graph=graph,
                         graph_path=path, train_config={})
        config = TrainConfig(epochs=4, patience=10)
        result = train(model, graph, config, run=run, progress=False)
        steps = [h["epoch"] for h in result.history]
        assert steps == ([1, 2, 3, 4] if name == "ials" else [1])
        assert all("valid" in h for h in result.history)
        loaded, meta, _ = load_run(tmp_path / name)
        assert meta["status"] == "finished"
        users = torch.arange(6)
        inputs = model.inputs(TrainView.from_graph(graph))
        assert torch.equal(loaded.score(users, inputs), model.score(users, inputs))
        if name == "ials":  # resume to more steps continues from last.pt
            seed_everything(0)
            again = build_model(name, graph, args)
            more = train(again, graph, TrainConfig(epochs=6, patience=10), run=Run.open(
                tmp_path / name), resume=True, progress=False)
            assert [h["epoch"] for h in more.history] == [1, 2, 3, 4, 5, 6]


def test_train_cli_accepts_the_baselines(graph, tmp_path: Path, capsys) -> None:
    from gnnrec.cli import main

    path = tmp_path / "g.pt"
    save_graph(graph, path)
    assert main(["train", "--model", "ease", "--graph", str(path), "--out",
                 str(tmp_path / "e"), "--model-arg", "regularization=20", "--no-progress"]) == 0
    assert main(["evaluate", str(tmp_path / "e"), "--split", "test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["recall@20"] > 0
    assert main(["recommend", "u1", "--run", str(tmp_path / "e"), "-k", "3"]) == 0
