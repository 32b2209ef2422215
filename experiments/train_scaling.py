"""Training time per epoch: single process vs Ray Train with 1 and 2 workers; mini-batch checks.

    python -m experiments.train_scaling --dataset ml-100k \\
        --json experiments/results/train_scaling_ml-100k.json [--minibatch-check]
    python -m experiments.train_scaling --scale-graph synth10m.pt --scale-batches 40 \\
        --json experiments/results/train_scale_synthetic.json

**Scaling** (default): the dataset's graph through the product (ingested into Neo4j and
exported as ``gnnrec export`` does, cached: :func:`experiments.graphs.product_graph`; one
seeded random 80/10/10 split), one model (``--model``, LightGCN by default) with the same
hyper-parameters and the same ``--epochs`` (no early stopping; valid evaluation after every
epoch) trained by the single-process loop (:func:`gnnrec.gnn.train.train`, all CPU threads)
and by :func:`gnnrec.gnn.distributed.train_distributed` with 1 and 2 workers (the machine's
CPUs split between them; ``--batch-size`` is the GLOBAL batch, each of W workers takes
``1/W`` of it, DDP averages the gradients). ``*_epoch_s`` is the median over epochs of the
training time of one epoch (evaluation, Ray start-up and reports excluded: they are in
``*_wall_s``); ``*_recall20`` the best valid recall@20 over the epochs and
``*_final_recall20`` the last epoch's.

**Mini-batch check** (``--minibatch-check``): GraphSAGE (``--check-model lightgcn``:
LightGCN, one layer per fan-out) full-graph vs mini-batch (``--num-neighbors``,
:mod:`gnnrec.gnn.minibatch`) on the same split and settings, early stopping on valid
recall@20, for each of ``--seeds`` seeds; means and the relative gap. ``--check-modes
minibatch`` runs the mini-batch side only (to compare two versions of the sampler: the same
command on each, same seeds).

**Scale** (``--scale-graph FILE``, e.g. from ``gnnrec synth``): mini-batch GraphSAGE
(``--scale-model lightgcn``: LightGCN, one layer per fan-out) on the graph;
``--scale-batches 0`` times one whole epoch, every batch from the first (``epoch_s`` is
then measured, wall clock, sampling included); ``--scale-batches N`` times N batches after
one warm-up batch and extrapolates the epoch from their mean. Recorded: the wall seconds of
every timed step (``batch_seconds``, their median) and the RSS as each step starts
(``batch_rss_gb``), the process's CPU seconds per batch
(comparable on a loaded machine), the load average before and after, the peak RSS (graph,
sampler, model, optimiser, batches) and that peak per interaction. ``--scale-ahead``: steps
sampled ahead by the background thread (``MiniBatchConfig.ahead``; 0: none).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from torch_geometric.data import HeteroData

from experiments.common import MemoryPhases, loadavg, machine, memory_status, nbytes, write_json
from experiments.graphs import GraphSource, add_graph_arguments, product_graph
from gnnrec.gnn.train import TrainConfig

HYPER = {"lightgcn": {"embedding_dim": 64, "num_layers": 3},
         "graphsage": {"embedding_dim": 64, "num_layers": 2}}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.train_scaling",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--json", type=Path, required=True, help="write the results here")
    p.add_argument("--model", choices=sorted(HYPER), default="lightgcn")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--l2", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--minibatch-check", action="store_true")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the mini-batch check")
    p.add_argument("--check-model", choices=sorted(HYPER), default="graphsage")
    p.add_argument("--check-modes", nargs="+", choices=["full", "minibatch"],
                   default=["full", "minibatch"])
    p.add_argument("--num-neighbors", type=int, nargs="+", default=[10, 5])
    p.add_argument("--check-epochs", type=int, default=50)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--scale-graph", type=Path, help="run the scale measurement on this graph")
    p.add_argument("--scale-batches", type=int, default=40, help="0 = a whole epoch")
    p.add_argument("--scale-batch-size", type=int, default=8192)
    p.add_argument("--scale-model", choices=sorted(HYPER), default="graphsage",
                   help="the model of the scale run (LightGCN: 2 layers, one per fan-out)")
    p.add_argument("--scale-grads", choices=["sparse", "dense"], default="sparse",
                   help="embedding gradients of a step: the block's rows (what training "
                        "does) or the whole table (before issue 20's memory work)")
    p.add_argument("--scale-ahead", type=int, default=1,
                   help="steps sampled ahead in a background thread (0 = none)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="TrainConfig.precision (scale run and mini-batch check)")
    p.add_argument("--keep-memory", action="store_true",
                   help="MiniBatchConfig.keep_memory (scale run and mini-batch check)")
    add_graph_arguments(p)
    return p.parse_args(argv)


def _config(args: argparse.Namespace, **over: Any) -> TrainConfig:
    base = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, l2=args.l2,
                patience=args.epochs, eval_every=1, seed=args.seed, device="cpu",
                precision=args.precision)
    return TrainConfig(**{**base, **over})


def _summary(history: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    recalls = [r["valid"]["recall@20"] for r in history if "valid" in r]
    return {"epoch_s": statistics.median(r["seconds"] for r in history),
            "recall20": max(recalls), "final_recall20": recalls[-1],
            "best_epoch": 1 + recalls.index(max(recalls)), "epochs": len(history),
            "wall_s": round(wall, 2), "epoch_seconds": [r["seconds"] for r in history],
            "valid_recall20": recalls}


def _single(graph: HeteroData, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from gnnrec.gnn.run import build_model
    from gnnrec.gnn.train import seed_everything, train

    torch.set_num_threads(os.cpu_count() or 1)
    config = _config(args)
    seed_everything(config.seed)
    model = build_model(args.model, graph, HYPER[args.model])
    t0 = time.perf_counter()
    result = train(model, graph, config, progress=False)
    return {**_summary(result.history, time.perf_counter() - t0),
            "torch_threads": torch.get_num_threads()}


def _workers(graph: HeteroData, args: argparse.Namespace, workers: int,
             tmp: Path) -> dict[str, Any]:
    from gnnrec.gnn.distributed import RayTrainParams, train_distributed
    from gnnrec.gnn.run import Run, build_model
    from gnnrec.gnn.train import seed_everything

    config = _config(args)
    seed_everything(config.seed)
    model = build_model(args.model, graph, HYPER[args.model])
    run = Run.create(tmp / f"workers{workers}", model_name=args.model, model=model, graph=graph,
                     graph_path=None, train_config=config.to_dict(), overwrite=True)
    cpus = max(1, (os.cpu_count() or 1) // workers)
    t0 = time.perf_counter()
    result = train_distributed(model, graph, config,
                               RayTrainParams(num_workers=workers, cpus_per_worker=cpus),
                               run=run)
    return {**_summary(result.history, time.perf_counter() - t0), "cpus_per_worker": cpus,
            "per_worker_batch": args.batch_size // workers}


def scaling(graph: HeteroData, args: argparse.Namespace) -> dict[str, Any]:
    """Single process vs 1 and 2 Ray Train workers, same model, settings and epochs."""
    import tempfile

    import ray

    # Each ray.train.report waits for the controller's poll (2 s by default): poll faster so
    # short epochs are not dominated by it (the epoch times exclude reports anyway).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    out: dict[str, Any] = {"loadavg_before": loadavg()}
    out["single"] = _single(graph, args)
    print(f"single: {out['single']['epoch_s']:.3f} s/epoch, recall@20 "
          f"{out['single']['recall20']:.4f}", file=sys.stderr)
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for w in (1, 2):
                out[f"workers{w}"] = r = _workers(graph, args, w, Path(tmp))
                print(f"{w} worker(s): {r['epoch_s']:.3f} s/epoch, recall@20 "
                      f"{r['recall20']:.4f}", file=sys.stderr)
    finally:
        ray.shutdown()
    out["loadavg_after"] = loadavg()
    single = out["single"]["recall20"]
    flat = {"single_epoch_s": out["single"]["epoch_s"],
            "workers1_epoch_s": out["workers1"]["epoch_s"],
            "workers2_epoch_s": out["workers2"]["epoch_s"],
            "single_recall20": single, "workers1_recall20": out["workers1"]["recall20"],
            "workers2_recall20": out["workers2"]["recall20"],
            "workers2_vs_single_recall_rel": (out["workers2"]["recall20"] - single) / single}
    return {**flat, "runs": out}


def minibatch_check(graph: HeteroData, args: argparse.Namespace) -> dict[str, Any]:
    """Full-graph vs mini-batch valid recall@20 of ``--check-model`` over ``--seeds`` seeds."""
    from gnnrec.gnn.minibatch import MiniBatchConfig, train_minibatch
    from gnnrec.gnn.run import build_model
    from gnnrec.gnn.train import seed_everything, train

    name = args.check_model
    hyper = {**HYPER[name], "num_layers": len(args.num_neighbors)}
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.check_modes}
    for seed in range(args.seeds):
        config = _config(args, epochs=args.check_epochs, patience=args.patience, seed=seed)
        for mode in runs:
            seed_everything(seed)
            model = build_model(name, graph, hyper)
            t0 = time.perf_counter()
            if mode == "full":
                res = train(model, graph, config, progress=False)
            else:
                res = train_minibatch(model, graph, config,
                                      MiniBatchConfig(num_neighbors=args.num_neighbors,
                                                      keep_memory=args.keep_memory),
                                      progress=False)
            runs[mode].append({"seed": seed, "recall20": res.best_valid["recall@20"],
                               "best_epoch": res.best_epoch, "stopped": res.stopped,
                               "epoch_s": statistics.median(r["seconds"] for r in res.history),
                               "wall_s": round(time.perf_counter() - t0, 2)})
            print(f"{name} {mode} seed {seed}: recall@20 {res.best_valid['recall@20']:.4f}",
                  file=sys.stderr)
    out: dict[str, Any] = {"model": name, "hyper": hyper, "num_neighbors": args.num_neighbors}
    for mode, rs in runs.items():
        out[f"{mode}_recall20_mean"] = statistics.mean(r["recall20"] for r in rs)
        out[f"{mode}_recall20_stdev"] = statistics.pstdev(r["recall20"] for r in rs)
    if len(runs) == 2:
        full, mini = out["full_recall20_mean"], out["minibatch_recall20_mean"]
        out["minibatch_vs_full_rel"] = (mini - full) / full
    return {**out, "runs": runs}


def scale(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Mini-batch training on a big graph file: batch times, epoch estimate, peak RSS.

    Memory is recorded by phase (:class:`experiments.common.MemoryPhases`: the RSS at the
    end of each phase, its anonymous and file-backed parts, and the phase's own peak), with
    the array bytes each structure holds (:func:`experiments.common.nbytes`).
    """
    mem = MemoryPhases()
    mem.mark("imports")  # the process so far: python, torch, PyG, numpy
    import torch

    from gnnrec.gnn.batches import SampledBatches
    from gnnrec.gnn.graph_file import load_graph
    from gnnrec.gnn.minibatch import MiniBatchConfig, link_sampler
    from gnnrec.gnn.run import build_model
    from gnnrec.gnn.split import ensure_split
    from gnnrec.gnn.train import RankingStep, Session, adam, run_epoch, seed_everything
    from gnnrec.gnn.views import TrainView

    mem.mark("imports_gnnrec")
    t0 = time.perf_counter()
    graph, _ = ensure_split(load_graph(path))
    t_load = time.perf_counter() - t0
    mem.mark("load_graph", nbytes=nbytes(graph.to_dict()))
    seed_everything(args.seed)
    view = TrainView.from_graph(graph)
    ui = graph["user", "interacts", "item"]
    sizes = {"num_users": int(graph["user"].num_nodes),
             "num_items": int(graph["item"].num_nodes), "num_tags": int(graph["tag"].num_nodes),
             "num_interactions": int(ui.edge_index.size(1)),
             "num_train": int((ui.split == 0).sum()),
             "num_friend_edges": int(graph["user", "friend", "user"].edge_index.size(1))}
    mem.mark("train_view", nbytes=nbytes(view))
    del graph, ui  # training reads the train view only
    mem.mark("graph_dropped")
    name = args.scale_model
    hyper = {**HYPER[name], "num_layers": len(args.num_neighbors)}
    model = build_model(name, view, hyper)
    config = _config(args, batch_size=args.scale_batch_size)
    mb = MiniBatchConfig(num_neighbors=args.num_neighbors, ahead=args.scale_ahead,
                         keep_memory=args.keep_memory)
    mb.apply_memory()
    sampler = link_sampler(view, model, config, mb)
    mem.mark("model_and_sampler", model_nbytes=nbytes(model),
             sampler_nbytes=nbytes(sampler) - nbytes(view))
    step = RankingStep(model, precision=config.precision)
    if args.scale_grads == "sparse":  # as fit does in one process
        step = Session(progress=False).wrap(step)
    inputs = model.block_inputs(view)  # what training holds (full-graph inputs: evaluation)
    mem.mark("model_inputs", nbytes=nbytes(inputs))
    sampling = {"cpu": 0.0, "batches": 0}

    def stream(epoch: int) -> Any:  # the sampler's batches, its thread's CPU time apart
        for j in range(len(sampler)):
            c = time.thread_time()
            batch = sampler.batch(epoch, j)
            sampling["cpu"] += time.thread_time() - c
            sampling["batches"] += 1
            yield batch
            del batch

    batches = SampledBatches(model, inputs, stream, config.seed, ahead=mb.ahead)
    optimizer = adam(model.parameters(), config.lr)
    t_build = time.perf_counter() - t0 - t_load
    rss_built = mem.peak_gb
    model.train()
    total = len(sampler)
    whole = args.scale_batches <= 0
    timed = total if whole else min(args.scale_batches, total - 1)
    stamps: list[float] = []

    rss_steps: list[float] = []  # the RSS when each step is handed out (GiB)

    def stamped(it: Any) -> Any:  # stamps from one step handed out to the next
        for j, item in enumerate(it):
            if j:
                stamps.append(time.perf_counter())
            rss_steps.append(memory_status().get("rss", 0.0))
            yield item

    steps = batches(1)  # sampler epoch 0; a part run: batch 0 warms up, then ``timed``
    if not whole:
        run_epoch(step, optimizer, steps, config.l2, max_batches=1)
        mem.mark("first_step", optimizer_nbytes=nbytes(optimizer.state))
    load_before = loadavg()
    sampling.update(cpu=0.0, batches=0)  # the timed batches (and one sampled ahead)
    t1, c1 = time.perf_counter(), time.process_time()
    stamps.append(t1)
    stats = run_epoch(step, optimizer, stamped(steps), config.l2, max_batches=timed)
    seconds, cpu = time.perf_counter() - t1, time.process_time() - c1
    steps.close()  # a part run: the thread sampling ahead stops
    stamps.append(t1 + seconds)
    mem.mark("timed_steps", optimizer_nbytes=nbytes(optimizer.state))
    per_batch = seconds / timed
    peak = mem.peak_gb
    batch_seconds = [round(b - a, 3) for a, b in itertools.pairwise(stamps)]
    return {
        "graph": str(path), **sizes,
        "model": name, "hyper": hyper, "num_neighbors": args.num_neighbors,
        "ahead": mb.ahead, "keep_memory": mb.keep_memory, "precision": config.precision,
        "grads": args.scale_grads,
        "batch_size": config.batch_size, "batches_per_epoch": total, "batches_timed": timed,
        "seconds_timed": round(seconds, 2), "seconds_per_batch": round(per_batch, 4),
        "median_batch_s": round(statistics.median(batch_seconds), 3),
        # CPU seconds of the process (all threads): less sensitive to a loaded machine
        "cpu_seconds_per_batch": round(cpu / timed, 4),
        # of which sampling (numpy, one thread)
        "sampler_cpu_seconds_per_batch": round(sampling["cpu"] / max(sampling["batches"], 1), 4),
        "epoch_s": round(seconds if whole else per_batch * total, 1),
        # a whole epoch is measured (wall clock, from its first batch); a part, extrapolated
        "batches_run": timed if whole else timed + 1, "epoch_extrapolated": not whole,
        "load_s": round(t_load, 1), "build_s": round(t_build, 1),
        "peak_rss_gb_after_build": round(rss_built, 2), "peak_rss_gb": round(peak, 2),
        "peak_rss_bytes_per_interaction": round(peak * 2**30 / sizes["num_interactions"]),
        "memory_phases": mem.phases,
        "loss": stats["loss"], "torch_threads": torch.get_num_threads(),
        "loadavg_before": load_before, "loadavg": loadavg(), "batch_seconds": batch_seconds,
        "batch_rss_gb": rss_steps,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    result: dict[str, Any] = {"machine": machine(), "argv": sys.argv[1:] if argv is None
                              else argv, "loadavg_start": loadavg()}
    if args.scale_graph is not None:
        result["scale"] = scale(args.scale_graph, args)
        print(f"scale: {result['scale']['epoch_s']} s/epoch, peak "
              f"{result['scale']['peak_rss_gb']} GB", file=sys.stderr)
    else:
        import torch

        from gnnrec.gnn.split import apply_split

        graph, info = product_graph(args.dataset, GraphSource.from_args(args))
        graph = apply_split(graph, "random", seed=0)
        result.update(dataset=info, model=args.model, hyper=HYPER[args.model],
                      train_config=_config(args).to_dict())
        if not args.skip_scaling:
            result.update(scaling(graph, args))
        if args.minibatch_check:
            torch.set_num_threads(os.cpu_count() or 1)
            result["minibatch_check"] = minibatch_check(graph, args)
    result["loadavg_end"] = loadavg()
    write_json(args.json, result)
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
