"""``gnnrec split | train | evaluate | recommend | synth`` end to end (stand-in MF)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gnn_fixtures import TinyMF, fake_models, small_graph  # noqa: E402

from gnnrec.cli import main  # noqa: E402
from gnnrec.gnn.data import UI  # noqa: E402
from gnnrec.gnn.generators import synthetic_graph  # noqa: E402
from gnnrec.gnn.graph_file import load_graph, save_graph  # noqa: E402
from gnnrec.gnn.jobs import recommender_of_run  # noqa: E402
from gnnrec.gnn.recommend import UnknownUserError  # noqa: E402
from gnnrec.gnn.run import load_run  # noqa: E402


def test_split_command_graph_and_recbole(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = save_graph(synthetic_graph(60, 40, seed=1), tmp_path / "g.pt")
    assert main(["split", "--graph", str(src), "--kind", "temporal",
                 "--out", str(tmp_path / "t.pt")]) == 0
    info = json.loads(capsys.readouterr().out)["split_info"]
    assert info["kind"] == "temporal" and load_graph(tmp_path / "t.pt").split_info == info
    assert "split" not in load_graph(src)[UI]
    assert main(["split", "--graph", str(src), "--format", "recbole",
                 "--recbole-dir", str(tmp_path / "rb"), "--name", "demo"]) == 0
    assert sorted(p.name for p in (tmp_path / "rb").iterdir()) == [
        "demo.test.inter", "demo.train.inter", "demo.valid.inter"]
    assert "split" not in load_graph(src)[UI]  # recbole only: the graph file is untouched
    assert main(["split", "--graph", str(tmp_path / "nope.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_evaluate_recommend(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    g = small_graph()
    gpath = save_graph(g, tmp_path / "g.pt")
    out = tmp_path / "runs" / "mf"
    args = ["train", "--model", "mf", "--graph", str(gpath), "--out", str(out), "--epochs", "2",
            "--batch-size", "256", "--lr", "0.02", "--embedding-dim", "4", "--no-progress"]
    with fake_models(mf=TinyMF):
        assert main(args) == 0
        assert "best epoch" in capsys.readouterr().out
        meta = json.loads((out / "meta.json").read_text())
        assert meta["model"]["config"] == {"embedding_dim": 4}
        assert meta["train_config"]["epochs"] == 2 and meta["graph"]["split_applied"] is False
        assert main(args) == 2 and "--resume" in capsys.readouterr().err
        assert main(["train", "--out", str(out), "--resume", "--epochs", "3",
                     "--no-progress"]) == 0
        capsys.readouterr()
        assert len(json.loads((out / "meta.json").read_text())["history"]) == 3
        assert main(["train", "--out", str(out), "--resume", "--lr", "0.5"]) == 2
        assert "cannot change lr" in capsys.readouterr().err
        assert main(args[:-1] + ["--num-layers", "3", "--overwrite"]) == 2
        assert "--num-layers does not apply to model mf" in capsys.readouterr().err

        assert main(["evaluate", str(out), "--split", "test", "--json", "--device", "cpu"]) == 0
        metrics = json.loads(capsys.readouterr().out)
        assert 0 <= metrics["recall@20"] <= 1 and "novelty@10" in metrics
        assert json.loads((out / "meta.json").read_text())["metrics"]["test"] == metrics

        assert main(["recommend", "u3", "-k", "5", "--run", str(out), "--json"]) == 0
        recs = json.loads(capsys.readouterr().out)
        assert recs["user"] == "u3" and [r["rank"] for r in recs["items"]] == [1, 2, 3, 4, 5]
        graph = load_graph(gpath)  # the truth, from the graph file
        ei = graph[UI].edge_index
        seen = set(ei[1, ei[0] == 3].tolist())  # every split: nothing the user already has
        assert not seen & {r["index"] for r in recs["items"]}
        assert recs["items"][0]["item"] == graph["item"].ext_id[recs["items"][0]["index"]]
        scores = [r["score"] for r in recs["items"]]
        assert scores == sorted(scores, reverse=True)

        assert main(["recommend", "nobody", "--run", str(out)]) == 2
        assert "unknown user nobody; cold start is served by POST /users" in \
            capsys.readouterr().err
        with pytest.raises(UnknownUserError):
            recommender_of_run(str(out))[0].recommend("nobody")


def test_final_fit_from_a_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gpath = save_graph(small_graph(), tmp_path / "g.pt")
    src, out = tmp_path / "runs" / "mf", tmp_path / "runs" / "mf-final"
    with fake_models(mf=TinyMF):
        assert main(["train", "--model", "mf", "--graph", str(gpath), "--out", str(src),
                     "--epochs", "4", "--lr", "0.02", "--embedding-dim", "4",
                     "--no-progress"]) == 0
        capsys.readouterr()
        source = json.loads((src / "meta.json").read_text())
        assert main(["train", "--final-from", str(src), "--out", str(out), "--no-progress"]) == 0
        assert "final fit on train+valid" in capsys.readouterr().out
        meta = json.loads((out / "meta.json").read_text())
        # the source's model and settings, its best epoch count, on train + valid
        assert meta["model"]["config"] == source["model"]["config"]
        assert meta["train_config"] == {**source["train_config"], "fit_on": "train+valid",
                                        "epochs": source["best_epoch"]}
        assert meta["best_epoch"] == source["best_epoch"] == len(meta["history"])
        assert meta["graph"]["split_info"]["counts"]["valid"] == 0
        assert main(["evaluate", str(out), "--split", "valid"]) == 2
        assert "is a final fit" in capsys.readouterr().err
        assert main(["evaluate", str(out), "--split", "test", "--json"]) == 0
        assert 0 <= json.loads(capsys.readouterr().out)["recall@20"] <= 1
        assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0  # resumable
        capsys.readouterr()
        # refused: a final fit as a source, no --epochs, another split
        assert main(["train", "--final-from", str(out), "--out", str(tmp_path / "x"),
                     "--no-progress"]) == 2
        assert "needs a finished run trained on train" in capsys.readouterr().err
        assert main(["train", "--model", "mf", "--graph", str(gpath), "--out",
                     str(tmp_path / "y"), "--fit-on", "train+valid", "--no-progress"]) == 2
        assert "exactly --epochs epochs" in capsys.readouterr().err
        other = save_graph(small_graph(seed=5), tmp_path / "other.pt")
        assert main(["train", "--final-from", str(src), "--graph", str(other), "--out",
                     str(tmp_path / "z"), "--no-progress"]) == 2
        assert "another graph or split" in capsys.readouterr().err


def test_train_without_split_applies_default(tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    gpath = save_graph(synthetic_graph(80, 40, mean_interactions=8, seed=2), tmp_path / "g.pt")
    out = tmp_path / "run"
    with fake_models(mf=TinyMF):
        assert main(["train", "--model", "mf", "--graph", str(gpath), "--out", str(out),
                     "--epochs", "1", "--no-progress"]) == 0
        assert "default random split (seed 0" in capsys.readouterr().err
        model, meta, kept = load_run(out)  # the run keeps the split it was trained on
        assert meta["graph"]["split_applied"] is True and kept.interactions.has_split
        assert meta["train_config"]["deterministic"] is True
        assert torch.are_deterministic_algorithms_enabled()
        # --nondeterministic is recorded, applied, and may change on resume
        assert main(["train", "--out", str(out), "--resume", "--epochs", "2",
                     "--nondeterministic", "--no-progress"]) == 0
        assert not torch.are_deterministic_algorithms_enabled()
        assert json.loads((out / "meta.json").read_text())["train_config"]["deterministic"] is False
    torch.use_deterministic_algorithms(False)
    assert isinstance(model.score(torch.tensor([0])), torch.Tensor)


@pytest.mark.parametrize("argv", [["synth", "--num-users", "50", "--num-items", "30"],
                                  ["synth-graph", "--users", "50", "--items", "30"]])
def test_synth_command(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([*argv, "--out", str(tmp_path / "s.pt")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["users"] == 50 and summary["split"]["kind"] == "random"
    assert load_graph(tmp_path / "s.pt")["item"].num_nodes == 30


def test_train_lightgcn_with_tag_nodes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gpath = save_graph(synthetic_graph(80, 40, mean_interactions=8, seed=2), tmp_path / "g.pt")
    out = tmp_path / "tags"
    assert main(["train", "--model", "lightgcn", "--graph", str(gpath), "--out", str(out),
                 "--epochs", "1", "--embedding-dim", "8", "--tag-weight", "0.5",
                 "--no-progress"]) == 0
    model, meta, kept = load_run(out)  # rebuilt from the recorded config, weights loaded
    assert meta["model"]["config"]["tag_weight"] == 0.5
    assert model.tag_embedding.weight.shape == (len(kept.tag_ids), 8)
    capsys.readouterr()
    assert main(["train", "--model", "mf", "--graph", str(gpath), "--out", str(tmp_path / "mf"),
                 "--epochs", "1", "--tag-weight", "0.5", "--no-progress"]) == 2
    assert "--tag-weight does not apply to model mf" in capsys.readouterr().err
    torch.use_deterministic_algorithms(False)


def _served(run: Path, capsys: pytest.CaptureFixture) -> tuple[object, ...]:
    """What evaluate, recommend and a serving replica (in process) answer for ``run``."""
    from gnnrec.serve.options import Neo4jOptions, ServeOptions
    from gnnrec.serve.service import RecommenderService

    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "test", "--json", "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert main(["recommend", "u3", "-k", "5", "--run", str(run), "--json"]) == 0
    recommended = json.loads(capsys.readouterr().out)["items"]
    service = RecommenderService(ServeOptions(run=str(run), neo4j=Neo4jOptions(enabled=False)))
    served = [(r.item, round(r.score, 4)) for r in service.recommend("u3", 5).items]
    return evaluated, recommended, served


def test_a_moved_run_works_without_its_graph_file(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """The run directory is the artifact: moved elsewhere, with the graph file gone, it
    evaluates, recommends and serves exactly as where it was trained."""
    import shutil

    from gnnrec.gnn.run import Run

    gpath = save_graph(small_graph(), tmp_path / "g.pt")
    out = tmp_path / "runs" / "lgcn"
    assert main(["train", "--model", "lightgcn", "--graph", str(gpath), "--out", str(out),
                 "--epochs", "2", "--embedding-dim", "8", "--num-layers", "2",
                 "--no-progress", "--threads", "1"]) == 0
    before = _served(out, capsys)
    moved = Path(shutil.move(out, tmp_path / "elsewhere" / "lgcn"))
    gpath.unlink()
    assert _served(moved, capsys) == before
    evaluated, recommended, served = before
    assert 0 < evaluated["recall@20"] <= 1
    assert [r["item"] for r in recommended] == [item for item, _ in served]
    model = Run.open(moved).model()  # rebuilt from the checkpoint alone
    assert model.embedding_dim == 8 and not model.training


def test_a_version_1_run_says_how_to_upgrade(tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    from gnnrec.gnn.run import ADJACENCY_FILE, EMBEDDINGS_FILE

    gpath = save_graph(small_graph(), tmp_path / "g.pt")
    out = tmp_path / "runs" / "mf"
    assert main(["train", "--model", "mf", "--graph", str(gpath), "--out", str(out),
                 "--epochs", "1", "--embedding-dim", "4", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--split", "test", "--json", "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    # What gnnrec 0.x wrote: format 1, no sizes, no embeddings or adjacency, no tag ids.
    meta = json.loads((out / "meta.json").read_text())
    meta["format"] = "gnnrec.run/1"
    del meta["model"]["sizes"]
    (out / "meta.json").write_text(json.dumps(meta))
    ids = json.loads((out / "id_maps.json").read_text())
    (out / "id_maps.json").write_text(json.dumps({"user": ids["user"], "item": ids["item"]}))
    (out / EMBEDDINGS_FILE).unlink()
    (out / ADJACENCY_FILE).unlink()
    assert main(["evaluate", str(out), "--split", "test", "--json"]) == 2
    err = capsys.readouterr().err
    assert "version-1 run" in err and f"gnnrec upgrade-run {out}" in err and "retrain" in err
    assert main(["upgrade-run", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--split", "test", "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out) == metrics
