"""The GPU path: train, evaluate and recommend from an exported file, without Ray or Neo4j.

The CLI test runs everywhere (on ``cpu``, and on ``cuda`` where there is one): full-graph
LightGCN and mini-batch LightGCN and GraphSAGE are trained, evaluated and asked for
recommendations in a fresh process where ``import ray`` and ``import neo4j`` fail, so a
GPU host needs neither. The ``cuda`` tests compare every model on the GPU with the same
model on the CPU; they are skipped on a machine without CUDA (CI) and run on a GPU host
with ``python -m pytest --noconftest tests/test_device.py`` (``--noconftest``: the shared
fixtures import the Neo4j driver), as ``experiments/gpu_check.sh`` does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gnnrec.gnn.evaluate import Evaluator, dot_scores
from gnnrec.gnn.generators import synthetic_graph
from gnnrec.gnn.graph_file import save_graph
from gnnrec.gnn.run import build_model, final_embeddings
from gnnrec.gnn.split import apply_split
from gnnrec.gnn.train import TrainConfig, seed_everything, train
from gnnrec.gnn.views import TrainView

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]

# Every model family as the CLI builds it; LightGCN also with friend and tag edges.
CONFIGS = {
    "lightgcn": ("lightgcn", {"embedding_dim": 16, "num_layers": 2}),
    "lightgcn_social_tags": ("lightgcn", {"embedding_dim": 16, "num_layers": 2,
                                          "social_weight": 0.5, "tag_weight": 0.5}),
    "graphsage": ("graphsage", {"embedding_dim": 16, "num_layers": 2}),
    "mf": ("mf", {"embedding_dim": 16}),
}

# Runs gnnrec CLI commands in one fresh process where `import ray` and `import neo4j` fail;
# prints one JSON list of {"code", "out"} (each command's exit code and stdout).
NO_RAY_NO_NEO4J = """
import contextlib, io, json, sys
sys.modules.update(ray=None, neo4j=None)
from gnnrec.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    results.append({"code": code, "out": out.getvalue()})
    if code:
        break
print(json.dumps(results))
"""


def _graph():
    return apply_split(synthetic_graph(150, 80, num_tags=6, mean_interactions=10.0,
                                       friends_per_user=3, seed=2), "random", seed=2)


def _cli(*commands: list[str]) -> list[dict[str, object]]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", NO_RAY_NO_NEO4J, json.dumps(commands)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["code"] for r in results] == [0] * len(commands), (results, done.stderr[-3000:])
    return results


# Full-graph LightGCN, and both models trained on sampled subgraphs (in-process sampler).
TRAININGS = {
    "lightgcn": ["--model", "lightgcn"],
    "lightgcn_minibatch": ["--model", "lightgcn", "--minibatch", "--num-neighbors", "5", "5"],
    "graphsage_minibatch": ["--model", "graphsage", "--minibatch", "--num-neighbors", "5", "5"],
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", list(TRAININGS))
def test_cli_trains_evaluates_and_recommends_without_ray_or_neo4j(tmp_path: Path, device: str,
                                                                   training: str) -> None:
    graph_file = save_graph(_graph(), tmp_path / "g.pt")
    run = tmp_path / "run"
    _, evaluated, recommended = _cli(
        ["train", *TRAININGS[training], "--graph", str(graph_file), "--out", str(run),
         "--epochs", "3", "--embedding-dim", "16", "--num-layers", "2", "--batch-size", "256",
         "--device", device, "--no-progress"],
        ["evaluate", str(run), "--split", "test", "--device", device, "--json"],
        ["recommend", "u0", "-k", "5", "--run", str(run), "--device", device, "--json"])
    meta = json.loads((run / "meta.json").read_text())
    assert meta["train_config"]["device"] == device
    assert len(meta["history"]) == 3
    assert ("minibatch" in meta) == ("--minibatch" in TRAININGS[training])
    assert 0.0 < json.loads(str(evaluated["out"]))["recall@20"] <= 1.0
    assert len(json.loads(str(recommended["out"]))["items"]) == 5


@needs_cuda
@pytest.mark.parametrize("name", list(CONFIGS))
def test_models_on_cuda_score_as_on_cpu(name: str) -> None:
    view = TrainView.from_graph(_graph())
    model_name, config = CONFIGS[name]
    seed_everything(0)
    cpu = build_model(model_name, view, config).eval()
    seed_everything(0)
    gpu = build_model(model_name, view, config).to("cuda").eval()
    gpu.load_state_dict(cpu.state_dict())
    inputs = cpu.inputs(view)
    users = torch.arange(view.num_users)
    with torch.no_grad():
        on_cpu = cpu.score(users, inputs)
        on_gpu = gpu.score(users.cuda(), inputs.to("cuda") if inputs is not None else None)
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-4, rtol=1e-4)


@needs_cuda
@pytest.mark.parametrize("name", ["lightgcn", "graphsage"])
def test_training_on_cuda_learns_and_evaluates_as_on_cpu(name: str) -> None:
    graph = _graph()
    model_name, config = CONFIGS[name]
    seed_everything(0)
    model = build_model(model_name, graph, config)
    result = train(model, graph, TrainConfig(epochs=5, batch_size=256, lr=0.01, eval_every=1,
                                             patience=10, seed=0, device="cuda"),
                   progress=False)
    assert next(model.parameters()).is_cuda
    losses = [h["loss"] for h in result.history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    evaluator = Evaluator(graph, "valid")
    on_gpu = evaluator(dot_scores(*final_embeddings(model, graph, "cuda")), device="cuda")
    on_cpu = evaluator(dot_scores(*final_embeddings(model, graph, "cpu")))
    assert on_gpu["recall@20"] == pytest.approx(on_cpu["recall@20"], abs=0.02)
    assert on_gpu["ndcg@20"] == pytest.approx(on_cpu["ndcg@20"], abs=0.02)
