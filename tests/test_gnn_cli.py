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
from gnnrec.gnn.data import UI, load_graph, save_graph, synthetic_graph  # noqa: E402
from gnnrec.gnn.recommend import TopKRecommender, UnknownUserError  # noqa: E402
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
        model, _, graph = load_run(out)
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
            TopKRecommender(model, graph).recommend("nobody")


def test_train_without_split_applies_default(tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    gpath = save_graph(synthetic_graph(80, 40, mean_interactions=8, seed=2), tmp_path / "g.pt")
    out = tmp_path / "run"
    with fake_models(mf=TinyMF):
        assert main(["train", "--model", "mf", "--graph", str(gpath), "--out", str(out),
                     "--epochs", "1", "--no-progress"]) == 0
        assert "default random split (seed 0" in capsys.readouterr().err
        model, meta, graph = load_run(out)  # re-applies the same split: fingerprint matches
        assert meta["graph"]["split_applied"] is True and "split" in graph[UI]
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
    model, meta, graph = load_run(out)  # rebuilt from the recorded config, weights loaded
    assert meta["model"]["config"]["tag_weight"] == 0.5
    assert model.tag_embedding.weight.shape == (graph["tag"].num_nodes, 8)
    capsys.readouterr()
    assert main(["train", "--model", "mf", "--graph", str(gpath), "--out", str(tmp_path / "mf"),
                 "--epochs", "1", "--tag-weight", "0.5", "--no-progress"]) == 2
    assert "--tag-weight does not apply to model mf" in capsys.readouterr().err
    torch.use_deterministic_algorithms(False)
