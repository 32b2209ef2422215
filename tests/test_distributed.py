"""Ray Train (V2, DDP on gloo) training: a 2-worker run, a killed worker, mini-batch shards."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch_geometric.data import HeteroData

from gnnrec.cli import main
from gnnrec.gnn.generators import synthetic_graph
from gnnrec.gnn.graph_file import save_graph
from gnnrec.gnn.run import Run, build_model, load_run
from gnnrec.gnn.split import apply_split
from gnnrec.gnn.train import TrainConfig, seed_everything

pytestmark = pytest.mark.integration

HYPER = {"embedding_dim": 8, "num_layers": 2}


@pytest.fixture(scope="module", autouse=True)
def fast_reports() -> Iterator[None]:
    """Ray Train V2's controller polls workers every 2 s, and each ``ray.train.report``
    waits for a poll: poll faster so the tests' short epochs do not wait on it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
        yield


@pytest.fixture(scope="module")
def graph() -> HeteroData:
    return apply_split(synthetic_graph(120, 60, num_tags=6, mean_interactions=10.0,
                                       friends_per_user=3.0, seed=0), "random", seed=0)


@pytest.fixture(scope="module")
def gpath(graph: HeteroData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_graph(graph, tmp_path_factory.mktemp("graph") / "g.pt")


@pytest.fixture(scope="module")
def cli_run(ray_session: None, gpath: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``gnnrec train --workers 2``: LightGCN, 4 epochs, one CPU (thread) per worker."""
    out = tmp_path_factory.mktemp("runs") / "lgcn"
    assert main(["train", "--model", "lightgcn", "--graph", str(gpath), "--out", str(out),
                 "--epochs", "4", "--batch-size", "256", "--lr", "0.01", "--seed", "2",
                 "--embedding-dim", "8", "--num-layers", "2", "--no-progress",
                 "--workers", "2"]) == 0
    return out


def _run(tmp: Path, graph: HeteroData, name: str, model_name: str, config: TrainConfig,
         gpath: Path) -> tuple[Run, torch.nn.Module]:
    seed_everything(config.seed)
    model = build_model(model_name, graph, HYPER)
    run = Run.create(tmp / name, model_name=model_name, model=model, graph=graph,
                     graph_path=gpath, train_config=config.to_dict())
    return run, model


def _assert_complete(out: Path, epochs: int) -> dict:
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "finished"
    assert [r["epoch"] for r in meta["history"]] == list(range(1, epochs + 1))
    assert all("valid" in r for r in meta["history"])
    assert {"model.pt", "last.pt", "meta.json", "id_maps.json", "embeddings.pt",
            "adjacency.pt"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    model, loaded, g = load_run(out)
    assert loaded["best_valid"]["recall@20"] > 0
    user, item = Run.open(out).embeddings()
    assert (user[torch.tensor([0, 1])] @ item.T).shape == (2, len(g.item_ids))
    return meta


def test_two_workers_write_a_loadable_run(cli_run: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    meta = _assert_complete(cli_run, 4)
    dist = meta["distributed"]
    assert dist["num_workers"] == 2 and dist["backend"] == "gloo" and dist["resumes"] == []
    assert dist["cpus_per_worker"] == 1 and all(r["workers"] == 2 for r in meta["history"])
    assert Path(dist["storage_path"], dist["ray_name"]).is_dir()
    capsys.readouterr()
    assert main(["evaluate", str(cli_run), "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["recall@20"] == pytest.approx(
        meta["best_valid"]["recall@20"], abs=1e-6)
    # The single-process loop continues a distributed run (same last.pt layout).
    out = shutil.copytree(cli_run, tmp_path / "continued")
    assert main(["train", "--out", str(out), "--resume", "--epochs", "5", "--no-progress"]) == 0
    assert [r["epoch"] for r in json.loads((out / "meta.json").read_text())["history"]] == [
        1, 2, 3, 4, 5]


def test_two_workers_final_fit_on_train_and_valid(cli_run: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    """``gnnrec train --final-from RUN --workers 2``: RUN's settings on train + valid for
    its best epoch count, as a Ray Train job; no validation, the last epoch kept."""
    source = json.loads((cli_run / "meta.json").read_text())
    out = tmp_path / "final"
    assert main(["train", "--final-from", str(cli_run), "--out", str(out), "--workers", "2",
                 "--no-progress"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["train_config"]["fit_on"] == "train+valid"
    epochs = source["best_epoch"]
    assert meta["best_epoch"] == epochs == meta["train_config"]["epochs"]
    assert [r["epoch"] for r in meta["history"]] == list(range(1, epochs + 1))
    assert not any("valid" in r for r in meta["history"]) and meta["metrics"] == {}
    assert meta["graph"]["split_info"]["counts"]["valid"] == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--split", "test", "--json", "--device", "cpu"]) == 0
    assert 0 < json.loads(capsys.readouterr().out)["recall@20"] <= 1


def test_killed_worker_resumes_from_the_last_checkpoint(
        graph: HeteroData, gpath: Path, cli_run: Path, tmp_path: Path) -> None:
    from gnnrec.gnn.distributed import RayTrainParams, train_distributed

    # the settings the CLI run used (its flags over LightGCN's training defaults)
    config = TrainConfig.from_dict(json.loads((cli_run / "meta.json").read_text())[
        "train_config"])
    assert (config.epochs, config.batch_size, config.lr, config.seed) == (4, 256, 0.01, 2)
    run, model = _run(tmp_path, graph, "faulty", "lightgcn", config, gpath)
    marker = tmp_path / "killed-once"
    result = train_distributed(model, graph, config,
                               RayTrainParams(num_workers=2, cpus_per_worker=1, max_failures=2),
                               run=run, fault={"rank": 1, "epoch": 3, "marker": str(marker)})
    assert "killed rank 1 at epoch 3" in marker.read_text()
    meta = _assert_complete(run.path, 4)  # epochs 1, 2 before the kill; 3, 4 after it
    assert meta["distributed"]["resumes"] == [2]  # restarted from epoch 2's checkpoint
    assert result.best_epoch == meta["best_epoch"]
    # Seeded per epoch and rank, one thread per worker: the resumed job ends exactly where
    # the uninterrupted one (the same settings through the CLI) does.
    clean = json.loads((cli_run / "meta.json").read_text())["history"]
    assert [r["loss"] for r in meta["history"]] == [r["loss"] for r in clean]
    got, want = run.load_last(), Run.open(cli_run).load_last()
    assert got is not None and want is not None and got["epoch"] == want["epoch"] == 4
    for key, value in want["model"].items():
        assert torch.equal(got["model"][key], value), key


def test_two_workers_train_graphsage_on_sampled_shards(ray_session: None, gpath: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "sage"
    assert main(["train", "--model", "graphsage", "--graph", str(gpath), "--out", str(out),
                 "--epochs", "2", "--batch-size", "128", "--lr", "0.01", "--embedding-dim", "8",
                 "--no-progress", "--workers", "2", "--minibatch", "--num-neighbors", "4",
                 "3"]) == 0
    meta = _assert_complete(out, 2)
    assert meta["minibatch"]["num_neighbors"] == [4, 3] and meta["distributed"]["num_workers"] == 2
