"""LightGCN epoch time: our sparse-adjacency model against PyG's LightGCN, and peak memory.

    python -m experiments.epoch_time --dataset ml-1m \\
        --json experiments/results/epoch_time_ml-1m.json

The graph comes through the product: the dataset ingested into Neo4j (a throw-away local
server unless ``--ingest-into configured``) and exported as ``gnnrec export`` does, cached
by content (:func:`experiments.graphs.product_graph`), then a seeded random 80/10/10 split;
``--graph FILE`` reads an exported file instead (a GPU host needs neither Neo4j nor network).

One training epoch = every TRAIN (user, item) edge of the seeded 80/10/10 split once, in
shuffled mini-batches of 2,048, one uniform negative per positive from the project's
:class:`~gnnrec.gnn.negative.NegativeSampler`, BPR loss + L2 (1e-4), Adam (lr 1e-3),
64 dimensions, 3 layers, full-graph propagation at every batch. Two implementations run
in the SAME process on the SAME data, shuffles and negatives:

* ours: :class:`gnnrec.gnn.models.LightGCN` (normalised adjacency precomputed once as a
  sparse CSR matrix, ``torch.sparse.mm``), loss from its ``bpr_loss``;
* PyG: :class:`torch_geometric.nn.models.LightGCN` on a plain ``edge_index`` (both
  directions, users then items), ``forward(edge_index, edge_label_index)`` and
  ``recommendation_loss`` as in PyG's ``examples/lightgcn.py``.

After a warm-up (``--warmup-batches`` of each), ``--repeats`` epochs of each are timed,
alternating ours / PyG so both see the same machine load; the medians and their ratio are
reported (wall clock, and process CPU time, which a busy shared machine disturbs less).
PyG's epoch on ML-1M takes many minutes on 2 cores: ``--max-batches N`` times the first N
batches of each epoch and reports seconds per batch times batches per epoch
(``epoch_extrapolated``).
Both start from the same initial embeddings, and their propagated embeddings are checked
to agree (``max_abs_diff``).

Peak memory: a full ML-1M training run of our LightGCN with the project's training loop
(``gnnrec.gnn.train.train``: ``--full-run-epochs`` epochs, valid recall@20 every epoch,
early stopping) runs in a child process, whose peak RSS (``ru_maxrss``) is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from experiments.common import loadavg, machine, peak_rss_gb, write_json
from experiments.graphs import GraphSource, add_graph_arguments, product_graph

DIM, LAYERS, BATCH, LR, L2 = 64, 3, 2048, 1e-3, 1e-4

Step = Callable[[Tensor, Tensor, Tensor], float]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.epoch_time",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--graph", type=Path, default=None,
                   help="an exported graph file (gnnrec export) instead of ingesting and "
                        "exporting --dataset: a GPU host needs neither Neo4j nor network")
    p.add_argument("--device", default="cpu", help="cpu or cuda (both models, same device)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--repeats", type=int, default=3, help="timed epochs of each model")
    p.add_argument("--warmup-batches", type=int, default=20)
    p.add_argument("--max-batches", type=int, default=None,
                   help="time only this many batches per 'epoch' (smoke tests)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--full-run-epochs", type=int, default=20,
                   help="epochs of the peak-memory training run (0 = skip it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child-full-run", action="store_true", help=argparse.SUPPRESS)
    add_graph_arguments(p)
    return p.parse_args(argv)


def load(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The split graph: ``--graph`` (its own split, else a seeded random one) or ``--dataset``
    through the product (ingest → Neo4j → export, cached) with a seeded random split."""
    from gnnrec.gnn.data import has_split
    from gnnrec.gnn.graph_file import load_graph
    from gnnrec.gnn.split import apply_split

    if args.graph is None:
        graph, info = product_graph(args.dataset, GraphSource.from_args(args))
        return apply_split(graph, "random", seed=args.seed), info
    graph = load_graph(args.graph)
    info = {"dataset": args.dataset, "source": f"exported graph file {args.graph}",
            "num_users": int(graph["user"].num_nodes), "num_items": int(graph["item"].num_nodes)}
    return (graph if has_split(graph) else apply_split(graph, "random", seed=args.seed)), info


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Epochs:
    """Shuffled train batches + negatives, identical for every model given the same seed."""

    def __init__(self, graph: Any, seed: int) -> None:
        from gnnrec.gnn.data import UI
        from gnnrec.gnn.negative import NegativeSampler

        ui = graph[UI]
        mask = ui.split == 0
        self.users, self.items = ui.edge_index[0, mask], ui.edge_index[1, mask]
        self.num_users = int(graph["user"].num_nodes)
        self.num_items = int(graph["item"].num_nodes)
        self.seed = seed
        self.sampler = NegativeSampler(self.users, self.items, self.num_users, self.num_items,
                                       seed=seed + 1)

    def run(self, step: Step, epoch: int, max_batches: int | None = None,
            device: torch.device | str = "cpu") -> dict[str, float]:
        """One epoch (or its first ``max_batches``) of ``step``; wall and CPU seconds."""
        shuffle = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        self.sampler.generator.manual_seed(self.seed * 1000 + epoch + 1)
        n = self.users.numel()
        perm = torch.randperm(n, generator=shuffle)
        starts = list(range(0, n, BATCH))[:max_batches]
        t0, c0 = time.perf_counter(), time.process_time()
        total = 0.0
        for b in starts:
            idx = perm[b : b + BATCH]
            u, p = self.users[idx], self.items[idx]
            neg = self.sampler.sample(u, 1).flatten()
            total += step(u.to(device), p.to(device), neg.to(device))
        synchronize(device)
        return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                "batches": len(starts), "loss": total / max(len(starts), 1)}


def ours_step(graph: Any, device: torch.device) -> tuple[Step, Any, Any]:
    from gnnrec.gnn.models import LightGCN
    from gnnrec.gnn.views import TrainView

    view = TrainView.from_graph(graph)
    model = LightGCN(view.sizes, embedding_dim=DIM, num_layers=LAYERS).to(device).train()
    inputs = model.inputs(view).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=LR)

    def step(u: Tensor, p: Tensor, neg: Tensor) -> float:
        bpr, reg = model.bpr_loss(inputs, u, p, neg)
        loss = bpr + L2 * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step, model, inputs


def pyg_step(graph: Any, ours: Any, device: torch.device) -> tuple[Step, Any, Tensor]:
    from torch_geometric.nn.models import LightGCN as PyGLightGCN

    from gnnrec.gnn.data import UI

    nu, ni = int(graph["user"].num_nodes), int(graph["item"].num_nodes)
    ui = graph[UI]
    ei = ui.edge_index[:, ui.split == 0]
    code = torch.unique(ei[0] * ni + ei[1])  # distinct pairs, as our adjacency
    u, i = code // ni, code % ni + nu
    edge_index = torch.stack([torch.cat([u, i]), torch.cat([i, u])]).to(device)
    model = PyGLightGCN(nu + ni, embedding_dim=DIM, num_layers=LAYERS).to(device).train()
    with torch.no_grad():  # same initial embeddings as ours
        model.embedding.weight.copy_(torch.cat([ours.user_embedding.weight,
                                                ours.item_embedding.weight]))
    opt = torch.optim.Adam(model.parameters(), lr=LR)

    def step(u: Tensor, p: Tensor, neg: Tensor) -> float:
        label = torch.stack([torch.cat([u, u]), torch.cat([p, neg]) + nu])
        rank = model(edge_index, label)
        pos_rank, neg_rank = rank.chunk(2)
        loss = model.recommendation_loss(pos_rank, neg_rank, node_id=label.unique(),
                                         lambda_reg=L2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step, model, edge_index


def full_run(args: argparse.Namespace) -> dict[str, Any]:
    """The child process: a whole training run with the project's loop; peak RSS."""
    from gnnrec.gnn.run import build_model
    from gnnrec.gnn.train import TrainConfig, seed_everything, train

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    graph, _ = load(args)
    seed_everything(args.seed)
    model = build_model("lightgcn", graph, {"embedding_dim": DIM, "num_layers": LAYERS})
    config = TrainConfig(epochs=args.full_run_epochs, batch_size=BATCH, lr=LR, l2=L2,
                         patience=5, eval_every=1, seed=args.seed, device=args.device)
    result = train(model, graph, config, progress=False)
    gpu = ({"peak_gpu_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3),
            "gpu": torch.cuda.get_device_name()} if torch.cuda.is_available()
           and torch.device(args.device).type == "cuda" else {})
    return {"epochs_run": max(h["epoch"] for h in result.history),
            "best_epoch": result.best_epoch, "stopped": result.stopped,
            "best_valid_recall@20": result.best_valid.get("recall@20"),
            "epoch_seconds": [h["seconds"] for h in result.history],
            "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_gb": round(peak_rss_gb(), 3), **gpu}


def run_full_in_child(args: argparse.Namespace, graph_file: str | Path) -> dict[str, Any]:
    """The peak-memory run in a child process, on the same graph file (and seeded split)."""
    cmd = [sys.executable, "-m", "experiments.epoch_time", "--child-full-run",
           "--dataset", args.dataset, "--full-run-epochs", str(args.full_run_epochs),
           "--threads", str(args.threads), "--seed", str(args.seed), "--device", args.device,
           "--graph", str(graph_file)]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"full run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["command"] = " ".join(cmd[1:])
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.child_full_run:
        print(json.dumps(full_run(args)))
        return 0
    torch.set_num_threads(args.threads)
    load_before = loadavg()
    device = torch.device(args.device)
    graph, info = load(args)
    epochs = Epochs(graph, args.seed)
    torch.manual_seed(args.seed)
    ours, ours_model, ours_inputs = ours_step(graph, device)
    pyg, pyg_model, edge_index = pyg_step(graph, ours_model, device)
    with torch.no_grad():  # same model: the propagated embeddings agree before training
        a = torch.cat(ours_model.embeddings(ours_inputs))
        b = pyg_model.get_embedding(edge_index)
        max_abs_diff = float((a - b).abs().max())
    print(f"{args.dataset}: {epochs.users.numel()} train edges, "
          f"{-(-epochs.users.numel() // BATCH)} batches/epoch; same initial embeddings, "
          f"propagation max |ours - pyg| = {max_abs_diff:.2e}")
    for step in (ours, pyg):  # warm-up
        epochs.run(step, epoch=0, max_batches=args.warmup_batches, device=device)
    timings: dict[str, list[dict[str, float]]] = {"ours": [], "pyg": []}
    for r in range(1, args.repeats + 1):
        for name, step in (("ours", ours), ("pyg", pyg)):
            t = epochs.run(step, epoch=r, max_batches=args.max_batches, device=device)
            t["loadavg_1min"] = loadavg()[0]
            timings[name].append(t)
            print(f"  epoch {r} {name:4s}: {t['wall_s']:.2f}s wall, {t['cpu_s']:.2f}s CPU, "
                  f"loss {t['loss']:.4f}, load {t['loadavg_1min']}", flush=True)
    # Seconds per batch (median over repeats) times batches per epoch: an epoch's time, also
    # when --max-batches timed only the first batches of each epoch (then extrapolated).
    per_epoch = -(-epochs.users.numel() // BATCH)
    med = {n: {k: statistics.median(t[k] / t["batches"] for t in ts) * per_epoch
               for k in ("wall_s", "cpu_s")} for n, ts in timings.items()}
    extrapolated = any(t["batches"] < per_epoch for ts in timings.values() for t in ts)
    result: dict[str, Any] = {
        "benchmark": "epoch_time", "dataset": args.dataset,
        "ours_s": med["ours"]["wall_s"], "pyg_s": med["pyg"]["wall_s"],
        "speedup": med["pyg"]["wall_s"] / med["ours"]["wall_s"],
        "ours_cpu_s": med["ours"]["cpu_s"], "pyg_cpu_s": med["pyg"]["cpu_s"],
        "speedup_cpu_time": med["pyg"]["cpu_s"] / med["ours"]["cpu_s"],
        "goal_speedup_ge_5": None,
        "statistic": (f"median over {args.repeats} repeats of seconds per batch x "
                      f"{per_epoch} batches per epoch"),
        "batches_per_epoch": per_epoch, "epoch_extrapolated": extrapolated,
        "ours_batch_ms": 1000 * med["ours"]["wall_s"] / per_epoch,
        "pyg_batch_ms": 1000 * med["pyg"]["wall_s"] / per_epoch,
        "setup": {"embedding_dim": DIM, "num_layers": LAYERS, "batch_size": BATCH, "lr": LR,
                  "l2": L2, "optimizer": "Adam", "loss": "BPR", "negatives": 1,
                  "sampler": "gnnrec.gnn.negative.NegativeSampler (uniform, same seeds)",
                  "warmup_batches": args.warmup_batches, "repeats": args.repeats,
                  "max_batches": args.max_batches, "threads": args.threads,
                  "device": args.device,
                  "order": "alternating ours / pyg per repeat"},
        "propagation_max_abs_diff": max_abs_diff,
        "epochs": timings, "graph": info, "split": graph.split_info,
        "loadavg_before": load_before, "loadavg_after_timing": loadavg(),
    }
    result["goal_speedup_ge_5"] = bool(result["speedup"] >= 5)
    print(f"ours {result['ours_s']:.2f}s, pyg {result['pyg_s']:.2f}s per epoch (median): "
          f"speedup x{result['speedup']:.2f} wall, x{result['speedup_cpu_time']:.2f} CPU time")
    del ours, pyg, ours_model, pyg_model
    if args.full_run_epochs > 0:
        full = run_full_in_child(args, args.graph or info["graph_file"])
        result["full_run"] = full
        result["peak_rss_gb"] = full["peak_rss_gb"]
        result["goal_peak_rss_lt_4gb"] = bool(full["peak_rss_gb"] < 4)
        print(f"full run ({full['epochs_run']} epochs, {full['stopped']}): peak RSS "
              f"{full['peak_rss_gb']:.2f} GB, best valid recall@20 "
              f"{full['best_valid_recall@20']:.4f}")
    result["peak_rss_gb_this_process"] = round(peak_rss_gb(), 3)
    result["loadavg_after"] = loadavg()
    result["machine"] = machine(args.device)
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
