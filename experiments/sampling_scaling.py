"""Neighbour-sampling throughput: in-process vs 1 vs 2 Ray workers vs a networkx sampler.

    python -m experiments.sampling_scaling --json experiments/results/sampling_scaling.json \
        [--synthetic-interactions 10000000]

Workload: 3-hop ``(15, 10, 5)`` hetero sampling (every edge type, train edges only, without
replacement) of shuffled 2,048-user seed batches (:class:`NodeBatchSampler`), on ML-1M
(ratings as interactions, genres as tags, seeded 80/10/10 split) and optionally on the
product's seeded synthetic dataset at about ``--synthetic-interactions`` interactions
(:func:`synthetic_options`); both come through the product: ingested into Neo4j (the
synthetic graph with ``gnnrec ingest --bulk`` into a throw-away server) and exported as
``gnnrec export`` does, cached by content (:func:`experiments.graphs.product_graph`).

For each graph the same ``--batches`` batches (epochs follow each other when one epoch is
shorter) are sampled ``--repeats`` times, interleaved, by: the in-process sampler; Ray with
1 and with 2 worker actors (``RaySampledBatches``; ``--batches-per-task`` batches per
worker call on ML-1M, whose batches take ~2 ms, 1 on the synthetic graph; 3 calls in
flight; actors built and warm before timing; batches turned into ``HeteroData`` on the
driver as a trainer would get them); and, on the first ``--nx-batches`` batches
(``--synthetic-nx-batches`` on the synthetic graph), a plain networkx sampler (one
``nx.DiGraph`` per edge type, ``G.neighbors`` + ``random.sample`` per node, dict
relabelling). ``*_seeds_per_s`` are medians over the repeats; ``*_per_round`` the ratios
within each round (the samplers timed next to each other).

The machine's own ceiling for two workers: the same batches sampled in-process by one,
then by two plain child processes (no Ray, no driver work; each builds its batches'
``HeteroData`` itself), timed in the same rounds: ``plain_speedup_2v1`` is the most any
2-worker scheme can get from these two cores.

The machine is shared, so each run also records CPU milliseconds per batch of this
process, the Ray workers, the rest of our Ray and every other process, and derives what
2 otherwise idle cores would give from the 1-worker run (``*_idle_machine_model``).
Top-level figures are the first graph's (ML-1M); every graph is under ``datasets``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from torch_geometric.data import HeteroData

from experiments.common import threading_env, write_json
from experiments.graphs import GraphSource, add_graph_arguments, product_graph
from gnnrec.gnn.sampler import NodeBatchSampler

FANOUT = [15, 10, 5]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.sampling_scaling",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--synthetic-interactions", type=int, default=0,
                   help="also run a synthetic graph of about this many interactions")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--batches", type=int, default=768, help="batches per timed run (ML-1M)")
    p.add_argument("--synthetic-batches", type=int, default=48,
                   help="batches per timed run on the synthetic graph (16 left 2 workers a "
                        "long ramp and tail: 1 batch in 8)")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--prefetch", type=int, default=0,
                   help="batches in flight (default: 3 worker calls)")
    p.add_argument("--batches-per-task", type=int, default=16,
                   help="batches per Ray worker call on ML-1M (1 on the synthetic graph)")
    p.add_argument("--nx-batches", type=int, default=8, help="networkx batches per round")
    p.add_argument("--synthetic-nx-batches", type=int, default=1)
    p.add_argument("--skip-ml1m", action="store_true")
    p.add_argument("--wait-idle", type=float, default=0.0,
                   help="before each timed run, wait up to this many seconds for the other "
                        "processes of a shared machine to go quiet (< 0.25 CPU)")
    add_graph_arguments(p)
    return p.parse_args(argv)


def ml1m_graph(source: GraphSource) -> tuple[HeteroData, dict[str, Any]]:
    """ML-1M through the product (ingest → Neo4j → export, cached), seeded 80/10/10 split."""
    from gnnrec.gnn.split import apply_split

    graph, info = product_graph("ml-1m", source)
    return apply_split(graph, seed=0), info


def synthetic_options(num_interactions: int) -> dict[str, Any]:
    """The synthetic dataset's options for about ``num_interactions`` (before repeats are
    dropped): 100 interactions per user, 5 users per item, 4 friends per user."""
    users = max(num_interactions // 100, 100)
    return {"num_users": users, "num_items": max(users // 5, 50), "seed": 0,
            "interactions_per_user": 100.0, "friend_density": 4 / (users - 1)}


def synthetic(num_interactions: int, source: GraphSource) -> tuple[HeteroData, dict[str, Any]]:
    """The product's synthetic dataset (:func:`gnnrec.ingest.synthetic.generate`) through
    ``gnnrec ingest --bulk`` into a throw-away Neo4j → export (cached), seeded 80/10/10
    split (the batched ingest of 10M interactions takes far longer than the benchmark)."""
    from gnnrec.gnn.split import apply_split

    graph, info = product_graph("synthetic", replace(source, bulk=True),
                                options=synthetic_options(num_interactions))
    return apply_split(graph, seed=0), info


def _keys(loader: NodeBatchSampler, n: int) -> list[tuple[int, int]]:
    per = len(loader)
    return [(j // per, j % per) for j in range(n)]


def _seeds(loader: NodeBatchSampler, keys: list[tuple[int, int]]) -> int:
    return sum(int(loader.input_nodes[loader._items(e, i)].size) for e, i in keys)


class _CpuMeter:
    """CPU seconds spent, per group: this process, the Ray workers, the rest of our Ray
    (raylet, GCS, idle workers: this process's other descendants) and every other process
    on the machine (busy CPU time of the whole machine minus ours)."""

    def __init__(self) -> None:
        import psutil

        self.psutil, self.me = psutil, psutil.Process()

    def snapshot(self, workers: list[int]) -> dict[str, float]:
        def cpu(p: Any) -> float:
            try:
                t = p.cpu_times()
                return t.user + t.system
            except self.psutil.Error:
                return 0.0
        kids = self.me.children(recursive=True)
        w = sum(cpu(p) for p in kids if p.pid in workers)
        ours = cpu(self.me) + sum(cpu(p) for p in kids)
        t = self.psutil.cpu_times()
        busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
        return {"driver": cpu(self.me), "workers": w,
                "ray_services": ours - cpu(self.me) - w, "other_processes": busy - ours}


def _wait_idle(meter: _CpuMeter, pids: list[int], limit_s: float) -> None:
    """Wait (at most ``limit_s``) until other processes use < 0.25 CPU over a second."""
    end = time.perf_counter() + limit_s
    while time.perf_counter() < end:
        before = meter.snapshot(pids)["other_processes"]
        time.sleep(1.0)
        if meter.snapshot(pids)["other_processes"] - before < 0.25:
            return


class NetworkxSampler:
    """The plain baseline: per edge type a DiGraph dst -> src, per node ``random.sample``."""

    def __init__(self, data: HeteroData, fanout: list[int], seed: int = 0) -> None:
        import networkx as nx

        self.fanout, self.rng = fanout, random.Random(seed)
        self.graphs = {}
        for et in data.edge_types:
            ei = data[et].edge_index
            if "split" in data[et]:
                ei = ei[:, data[et].split == 0]
            g = nx.DiGraph()
            g.add_nodes_from(range(int(data[et[2]].num_nodes)))
            g.add_edges_from(zip(ei[1].tolist(), ei[0].tolist(), strict=True))
            self.graphs[et] = g

    def sample(self, node_type: str, seeds: list[int]) -> tuple[dict, dict]:
        local: dict[str, dict[int, int]] = {}
        edges: dict[tuple, list[tuple[int, int]]] = {et: [] for et in self.graphs}
        local[node_type] = {s: i for i, s in enumerate(dict.fromkeys(seeds))}
        frontier = {node_type: list(local[node_type])}
        for k in self.fanout:
            nxt: dict[str, list[int]] = {}
            for et, g in self.graphs.items():
                src_t, _, dst_t = et
                m = local.setdefault(src_t, {})
                for v in frontier.get(dst_t, []):
                    nbrs = list(g.neighbors(v))
                    for u in (self.rng.sample(nbrs, k) if len(nbrs) > k else nbrs):
                        if u not in m:
                            m[u] = len(m)
                            nxt.setdefault(src_t, []).append(u)
                        edges[et].append((m[u], local[dst_t][v]))
            frontier = nxt
        return local, edges


def _plain_worker(graph: Any, kwargs: dict[str, Any], conn: Any) -> None:
    """Child process of :class:`_PlainProcesses`: sample the batches it is sent."""
    import torch

    from gnnrec.gnn.allocator import keep_freed_memory

    torch.set_num_threads(1)
    keep_freed_memory()  # as the Ray workers do (without it ~1,000 page faults a batch)
    loader = NodeBatchSampler(graph, **kwargs)
    conn.send(None)  # ready
    while (keys := conn.recv()) is not None:
        for e, i in keys:
            loader.batch(e, i)
        conn.send(None)


class _PlainProcesses:
    """Two child processes holding the same sampler (spawned once, warm before timing)."""

    def __init__(self, loader: NodeBatchSampler) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for _ in range(2):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_plain_worker, daemon=True,
                               args=(loader.sampler.graph, loader.rebuild_kwargs(), child))
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            conn.recv()

    @property
    def pids(self) -> list[int]:
        return [int(p.pid) for p in self.procs if p.pid is not None]

    def run(self, keys: list[tuple[int, int]], workers: int) -> None:
        """Sample ``keys`` split round-robin over the first ``workers`` processes."""
        for w in range(workers):
            self.conns[w].send(keys[w::workers])
        for w in range(workers):
            self.conns[w].recv()

    def close(self) -> None:
        for conn, proc in zip(self.conns, self.procs, strict=True):
            conn.send(None)
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


def bench_graph(name_: str, data: HeteroData, num_batches: int, per_task: int,
                nx_batches: int, args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from gnnrec.gnn.distributed_sampling import RaySampledBatches, RaySamplingParams

    loader = NodeBatchSampler(data, "user", FANOUT, batch_size=args.batch_size, seed=0)
    keys = _keys(loader, num_batches)
    seeds = _seeds(loader, keys)
    sizes = [loader.batch(*k) for k in keys[:2]]
    out: dict[str, Any] = {
        "users": int(data["user"].num_nodes), "items": int(data["item"].num_nodes),
        "tags": int(data["tag"].num_nodes),
        "train_interactions": int((data["user", "interacts", "item"].split == 0).sum()),
        "edges": {"__".join(et): int(data[et].edge_index.size(1)) for et in data.edge_types},
        "batches": num_batches, "seeds": seeds, "batches_per_task": per_task,
        "sampled_edges_per_batch": int(np.mean([sum(b[et].edge_index.size(1)
                                                    for et in b.edge_types) for b in sizes])),
        "sampled_nodes_per_batch": int(np.mean([sum(b[nt].num_nodes for nt in b.node_types)
                                                for b in sizes])),
    }

    def inprocess() -> None:
        for k in keys:
            loader.batch(*k)

    nx_keys = keys[:nx_batches]
    t = time.perf_counter()
    nxs = NetworkxSampler(data, FANOUT)
    out["networkx_build_s"] = time.perf_counter() - t
    out["networkx_batches"] = len(nx_keys)

    def nx_run() -> None:
        for e, i in nx_keys:
            nxs.sample("user", loader.input_nodes[loader._items(e, i)].tolist())

    # Both Ray pools live side by side (half a CPU reserved per actor, so 3 actors fit in
    # 2 CPUs; an idle actor uses none) and the repetitions interleave in-process, 1 and 2
    # workers and networkx in rotating order, so a change in machine load hits all alike.
    runs: dict[str, Callable[[], None]] = {"inprocess": inprocess}
    pools, pids = [], []
    meter = _CpuMeter()
    cpu: dict[str, list[dict[str, float]]] = {"inprocess": [], "ray1": [], "ray2": []}
    plain = _PlainProcesses(loader)
    try:
        for w in (1, 2):
            plain.run(keys[:4], w)  # warm the children's code paths
            runs[f"plain{w}"] = lambda w=w: plain.run(keys, w)
        for w in (1, 2):
            t = time.perf_counter()
            pool = RaySampledBatches(loader, RaySamplingParams(
                num_workers=w, prefetch=args.prefetch or 3 * per_task, batches_per_task=per_task,
                cpus_per_worker=0.5))
            pools.append(pool)
            pids += pool.wait_ready()
            out[f"ray{w}_startup_s"] = time.perf_counter() - t
            for _ in pool.stream(keys[: 2 * w * per_task]):  # warm the workers' code paths
                pass
            runs[f"ray{w}"] = lambda p=pool: [None for _ in p.stream(keys)]
        runs["networkx"] = nx_run
        times: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for rep in range(args.repeats):
            for name in names[rep % len(names):] + names[: rep % len(names)]:
                _wait_idle(meter, pids, args.wait_idle)
                before, t = meter.snapshot(pids), time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - t)
                after = meter.snapshot(pids)
                if name in cpu:
                    cpu[name].append({k: (after[k] - before[k]) * 1e3 / len(keys)
                                      for k in after})
    finally:
        plain.close()
        for pool in pools:
            pool.close()
    run_seeds = {name: seeds for name in times} | {"networkx": _seeds(loader, nx_keys)}
    for name, ts in times.items():
        out[f"{name}_seeds_per_s"] = run_seeds[name] / statistics.median(ts)
        out[f"{name}_times_s"] = ts
    for name in cpu:
        out[f"{name}_cpu_ms_per_batch"] = {k: statistics.median(c[k] for c in cpu[name])
                                           for k in cpu[name][0]}
    # What 2 idle cores would give, from ray1's CPU per batch: workers W, driver + Ray
    # services D; 1 worker takes max(W, D) per batch, 2 workers max((W + D) / 2, D).
    c1 = out["ray1_cpu_ms_per_batch"]
    w_, d_ = c1["workers"], c1["driver"] + c1["ray_services"]
    out["ray_speedup_2v1_idle_machine_model"] = max(w_, d_) / max((w_ + d_) / 2, d_)
    assert ray.is_initialized()
    out["ray_speedup_2v1"] = out["ray2_seeds_per_s"] / out["ray1_seeds_per_s"]
    # The same ratio within each round (1 and 2 workers timed next to each other): its
    # spread shows how much of the figure is the machine's noise.
    out["ray_speedup_2v1_per_round"] = [a / b for a, b in zip(times["ray1"], times["ray2"],
                                                               strict=True)]
    out["plain_speedup_2v1"] = out["plain2_seeds_per_s"] / out["plain1_seeds_per_s"]
    out["plain_speedup_2v1_per_round"] = [a / b for a, b in zip(times["plain1"],
                                                                 times["plain2"], strict=True)]
    out["ray2_vs_inprocess"] = out["ray2_seeds_per_s"] / out["inprocess_seeds_per_s"]
    out["speedup_vs_networkx"] = out["inprocess_seeds_per_s"] / out["networkx_seeds_per_s"]
    out["speedup_vs_networkx_per_round"] = [  # the two rates of each round, from its times
        (run_seeds["inprocess"] / i) / (run_seeds["networkx"] / n)
        for i, n in zip(times["inprocess"], times["networkx"], strict=True)]
    _print(name_, out)
    return out


def _print(name: str, r: dict[str, Any]) -> None:
    print(f"\n{name}: {r['users']} users, {r['items']} items, {r['train_interactions']} train "
          f"interactions; {r['batches']} batches, ~{r['sampled_edges_per_batch']} sampled "
          "edges per batch")
    print(f"{'sampler':<18}{'seeds/s':>12}{'vs in-process':>15}")
    for key, label in (("inprocess", "in-process"), ("ray1", "ray 1 worker"),
                       ("ray2", "ray 2 workers"), ("plain1", "1 plain process"),
                       ("plain2", "2 plain processes"), ("networkx", "networkx")):
        rate = r[f"{key}_seeds_per_s"]
        print(f"{label:<18}{rate:>12,.0f}{rate / r['inprocess_seeds_per_s']:>15.2f}")
    rounds = r["ray_speedup_2v1_per_round"]
    print(f"ray speedup 2 vs 1 worker: {r['ray_speedup_2v1']:.2f} (per round "
          f"{min(rounds):.2f}-{max(rounds):.2f}, median {statistics.median(rounds):.2f}; "
          f"idle-machine model {r['ray_speedup_2v1_idle_machine_model']:.2f}); in-process vs "
          f"networkx: {r['speedup_vs_networkx']:.0f}x")
    plain = r["plain_speedup_2v1_per_round"]
    print(f"the machine's ceiling, 2 vs 1 plain processes (no Ray): "
          f"{r['plain_speedup_2v1']:.2f} (per round {min(plain):.2f}-{max(plain):.2f})")
    nx_rounds = r["speedup_vs_networkx_per_round"]
    print(f"in-process vs networkx per round: {min(nx_rounds):.0f}-{max(nx_rounds):.0f}x, "
          f"median {statistics.median(nx_rounds):.0f}x")
    for key in ("inprocess", "ray1", "ray2"):
        c = r[f"{key}_cpu_ms_per_batch"]
        print(f"  {key:<10} CPU ms per batch: " + ", ".join(f"{k} {v:.2f}" for k, v in c.items()))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    result: dict[str, Any] = {
        "benchmark": "sampling_scaling", "fanout": FANOUT, "batch_size": args.batch_size,
        "repeats": args.repeats, "prefetch": args.prefetch or "3 worker calls",
        "wait_idle_s": args.wait_idle,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "python": sys.version.split()[0], "load_avg_start": os.getloadavg(),
                    "env": threading_env()},
        "datasets": {},
    }
    # The graphs first (a cache miss ingests into a Neo4j, which is stopped before timing).
    source = GraphSource.from_args(args)
    graphs = []
    if not args.skip_ml1m:
        graphs.append(("ml-1m", "ML-1M", *ml1m_graph(source), args.batches,
                       args.batches_per_task, args.nx_batches))
    if args.synthetic_interactions:
        data, info = synthetic(args.synthetic_interactions, source)
        name = f"synthetic-{data['user', 'interacts', 'item'].edge_index.size(1)}"
        graphs.append((name, name, data, info, args.synthetic_batches, 1,
                       args.synthetic_nx_batches))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for key, label, data, info, batches, per_task, nx_batches in graphs:
            result["datasets"][key] = {"graph": info, **bench_graph(
                label, data, batches, per_task, nx_batches, args)}
    finally:
        ray.shutdown()
    result["machine"]["load_avg_end"] = os.getloadavg()
    first = next(iter(result["datasets"].values()))
    for key in ("inprocess_seeds_per_s", "ray1_seeds_per_s", "ray2_seeds_per_s",
                "ray_speedup_2v1", "plain_speedup_2v1", "speedup_vs_networkx"):
        result[key] = first[key]
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    result = run(args)
    if args.json:
        write_json(args.json, result, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
