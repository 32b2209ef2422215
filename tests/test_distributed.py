"""Ray Train (V2, DDP on gloo) training: a 2-worker run, a killed worker, mini-batch shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch_geometric.data import HeteroData

from gnnrec.cli import main
from gnnrec.gnn.data import save_graph, synthetic_graph
from gnnrec.gnn.run import Run, build_model, load_run
from gnnrec.gnn.split import apply_split
from gnnrec.gnn.train import TrainConfig, seed_everything

pytestmark = pytest.mark.integration

HYPER = {"embedding_dim": 8, "num_layers": 2}


@pytest.fixture(scope="module")
def graph() -> HeteroData:
    return apply_split(synthetic_graph(120, 60, num_tags=6, mean_interactions=10.0,
                                       friends_per_user=3.0, seed=0), "random", seed=0)


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
    assert {"model.pt", "last.pt", "meta.json", "id_maps.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    model, loaded, g = load_run(out)
    assert loaded["best_valid"]["recall@20"] > 0
    assert model.score(torch.tensor([0, 1])).shape == (2, int(g["item"].num_nodes))
    return meta


def test_two_workers_write_a_loadable_run(ray_session: None, graph: HeteroData, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    gpath = save_graph(graph, tmp_path / "g.pt")
    out = tmp_path / "runs" / "lgcn"
    assert main(["train", "--model", "lightgcn", "--graph", str(gpath), "--out", str(out),
                 "--epochs", "3", "--batch-size", "256", "--lr", "0.01", "--embedding-dim", "8",
                 "--num-layers", "2", "--no-progress", "--workers", "2"]) == 0
    meta = _assert_complete(out, 3)
    dist = meta["distributed"]
    assert dist["num_workers"] == 2 and dist["backend"] == "gloo"
    assert all(r["workers"] == 2 for r in meta["history"])
    assert Path(dist["storage_path"], dist["ray_name"]).is_dir()
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["recall@20"] == pytest.approx(
        meta["best_valid"]["recall@20"], abs=1e-6)
    # The single-process loop continues a distributed run (same last.pt layout).
    assert main(["train", "--out", str(out), "--resume", "--epochs", "4", "--no-progress"]) == 0
    assert [r["epoch"] for r in json.loads((out / "meta.json").read_text())["history"]] == [
        1, 2, 3, 4]


def test_killed_worker_resumes_from_the_last_checkpoint(ray_session: None, graph: HeteroData,
                                                        tmp_path: Path) -> None:
    from gnnrec.gnn.distributed import RayTrainParams, train_distributed

    gpath = save_graph(graph, tmp_path / "g.pt")
    config = TrainConfig(epochs=4, batch_size=256, lr=0.01, seed=2, device="cpu")
    run, model = _run(tmp_path, graph, "faulty", "lightgcn", config, gpath)
    marker = tmp_path / "killed-once"
    result = train_distributed(model, graph, config,
                               RayTrainParams(num_workers=2, cpus_per_worker=1, max_failures=2),
                               run=run, fault={"rank": 1, "epoch": 3, "marker": str(marker)})
    assert marker.exists(), "the fault injection did not run"
    assert "killed rank 1 at epoch 3" in marker.read_text()
    meta = _assert_complete(run.path, 4)  # epochs 1, 2 from before the kill, 3, 4 after
    assert result.best_epoch == meta["best_epoch"]
    assert torch.equal(model.state_dict()["user_embedding.weight"],
                       run.load_model_state()["user_embedding.weight"])


def test_two_workers_train_graphsage_on_sampled_shards(ray_session: None, graph: HeteroData,
                                                       tmp_path: Path) -> None:
    gpath = save_graph(graph, tmp_path / "g.pt")
    out = tmp_path / "sage"
    assert main(["train", "--model", "graphsage", "--graph", str(gpath), "--out", str(out),
                 "--epochs", "2", "--batch-size", "128", "--lr", "0.01", "--embedding-dim", "8",
                 "--no-progress", "--workers", "2", "--minibatch", "--num-neighbors", "4",
                 "3"]) == 0
    meta = _assert_complete(out, 2)
    assert meta["minibatch"]["num_neighbors"] == [4, 3] and meta["distributed"]["num_workers"] == 2
