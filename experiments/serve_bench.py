"""Serving benchmark: ``/recommend`` latency and throughput, feedback visibility.

    python -m experiments.serve_bench --run runs/lastfm-serve --make-run lastfm \\
        --json experiments/results/serve_bench.json --png experiments/results/serve_bench.png

In one process, on one run: (1) the scorer called in-process (``ServingState.recommend``),
(2) ``GET /recommend`` through Ray Serve with 1 client and with 8 concurrent clients
(keep-alive HTTP/1.1, localhost only, a bounded number of requests), (3) the delay from
``POST /interactions`` (an item of the user's current top-10) until a ``GET /recommend``
no longer lists it. Writes go memory-only, or also to a throw-away Neo4j started for
the run (``--neo4j temp``: the delay then includes the Neo4j commit).

``--make-run lastfm`` builds the run when it is missing: LastFM HetRec 2011 (1,892 users,
18,022 artists, friendships, tags) through the product (ingested into Neo4j and exported
as ``gnnrec export`` does, cached by content: :func:`experiments.graphs.product_graph`),
an untrained 64-d LightGCN (the latency does not depend on the weights).
``--make-run synthetic`` takes the product's synthetic dataset at the same size.

A large catalogue in the same benchmark run (issue 20: 1M items, 64-d)::

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python -m experiments.serve_bench \
        --run runs/lastfm-serve --make-run lastfm \
        --large-run runs/synth1m-serve --large-items 1000000 --untrained-case \
        --json experiments/results/serve_bench_1m.json

after the run above, measures ``--large-run`` the same way (in-process, 1 and 8 clients;
no feedback rounds). When missing it is built through the product: the synthetic dataset
with ``--large-items`` items, a twentieth as many users (60 interactions each, about 10
friends, 1-3 tags per item) -> ``gnnrec ingest --bulk`` into a throw-away Neo4j ->
export -> the seeded split -> ``gnnrec train`` with ``--large-train`` (default: iALS with
64 factors, 4 sweeps; its valid recall is in the result). Its replica serves through the
approximate item index (``gnnrec.serve.ann``), whose ``nprobe`` each load calibrates on
200 users; recall@k of the index against exact scoring is measured in-process over
``--recall-users`` OTHER users. ``--untrained-case`` also calibrates and measures the
index on the same graph's untrained LightGCN (structureless embeddings, the worst case).
Goals: recall@20 >= 0.95; p99 and requests/s at 8 clients within x1.25 of the first run's.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments.common import write_json
from experiments.graphs import GraphSource, add_graph_arguments, product_graph, temp_neo4j

LASTFM_USERS, LASTFM_ITEMS = 1892, 17632
# iALS: an ALS sweep over 1M items takes about 11 s here, a full-graph LightGCN epoch many
# minutes on the shared 2-core machine; one valid evaluation at the end (it ranks 1M items
# for each of the 50k users: most of the build's time)
LARGE_TRAIN = ("--model ials --model-arg factors=64 --epochs 4 --eval-every 4 --threads 2 "
               "--no-progress")


# -- building a run ----------------------------------------------------------------------
def make_run(path: Path, source: str, graph_source: GraphSource, dim: int = 64,
             options: dict[str, Any] | None = None) -> None:
    from gnnrec.gnn.graph_file import save_graph
    from gnnrec.gnn.run import Run, build_model, final_embeddings
    from gnnrec.gnn.split import apply_split

    if options is None and source != "lastfm":
        options = {"num_users": LASTFM_USERS, "num_items": LASTFM_ITEMS,
                   "interactions_per_user": 49.0, "friend_density": 13 / (LASTFM_USERS - 1),
                   "seed": 0}
    graph, _ = product_graph(source, graph_source, options=options)
    graph = apply_split(graph, seed=0)
    graph_path = save_graph(graph, path.with_name(f"{path.name}.graph.pt"))
    model = build_model("lightgcn", graph, {"embedding_dim": dim, "num_layers": 3})
    run = Run.create(path, model_name="lightgcn", model=model, graph=graph,
                     graph_path=graph_path, train_config={"note": f"untrained, {source}"},
                     overwrite=True)
    run.save_model(model.state_dict())
    run.save_embeddings(*final_embeddings(model, graph))
    run.update_meta(status="finished")


# -- measuring ---------------------------------------------------------------------------
def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "n": int(a.size)}


class Http:
    """One keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, path: str) -> tuple[int, bytes]:
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def post(self, path: str, body: Any, token: str) -> tuple[int, bytes]:
        self.conn.request("POST", path, json.dumps(body).encode(),
                          {"Content-Type": "application/json",
                           "Authorization": f"Bearer {token}"})
        resp = self.conn.getresponse()
        return resp.status, resp.read()


def http_load(port: int, users: list[str], clients: int, per_client: int,
              k: int) -> tuple[list[float], float, int]:
    """``clients`` threads, each ``per_client`` GETs; (latencies ms, seconds, errors)."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = threading.Barrier(clients + 1)

    def worker(c: int) -> None:
        conn = Http(port)
        rng = random.Random(c)
        start.wait()
        for _ in range(per_client):
            t0 = time.perf_counter()
            status, _ = conn.get(f"/recommend/{rng.choice(users)}?k={k}")
            lat[c].append((time.perf_counter() - t0) * 1e3)
            errors[c] += status != 200

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return [x for part in lat for x in part], time.perf_counter() - t0, sum(errors)


def feedback_delays(port: int, token: str, users: list[str], rounds: int) -> dict[str, Any]:
    """POST the user's current best item, then GET until it is gone from the list."""
    conn = Http(port)
    visible, posts, polls = [], [], []
    for r in range(rounds):
        user = users[r % len(users)]
        _, body = conn.get(f"/recommend/{user}?k=10")
        top = json.loads(body)["items"][0]["item"]
        t0 = time.perf_counter()
        status, answer = conn.post("/interactions", [{"user": user, "item": top}], token)
        if status != 200:
            raise SystemExit(f"POST /interactions answered {status}: {answer!r}")
        posts.append((time.perf_counter() - t0) * 1e3)
        n = 0
        while True:
            n += 1
            _, body = conn.get(f"/recommend/{user}?k=10")
            if top not in {i["item"] for i in json.loads(body)["items"]}:
                break
            if time.perf_counter() - t0 > 10:
                raise SystemExit(f"feedback for {user} not visible after 10 s")
        visible.append((time.perf_counter() - t0) * 1e3)
        polls.append(n)
    return {"visible_ms": visible, "post_ms": posts, "gets_until_visible": polls}


def large_options(items: int) -> dict[str, Any]:
    """The synthetic dataset of ``--large-items``: a twentieth as many users, 60
    interactions each (about 3 per item), about 10 friends each."""
    users = max(items // 20, 10)
    return {"num_users": users, "num_items": items, "interactions_per_user": 60.0,
            "friend_density": min(1.0, 10 / users), "seed": 0}


def make_trained_run(path: Path, graph_source: GraphSource, options: dict[str, Any],
                     train_args: str) -> dict[str, Any]:
    """The large run through the product: the synthetic dataset -> ``gnnrec ingest
    --bulk`` -> export (:func:`experiments.graphs.product_graph`), the seeded split, then
    ``gnnrec train --graph ... --out path`` with ``train_args`` in a process of its own."""
    import gc
    import shlex
    import subprocess

    from gnnrec.gnn.graph_file import save_graph
    from gnnrec.gnn.split import apply_split

    t0 = time.perf_counter()
    graph, info = product_graph("synthetic", graph_source, options=options)
    graph_path = save_graph(apply_split(graph, seed=0), path.with_name(f"{path.name}.graph.pt"))
    del graph
    gc.collect()
    graph_s = time.perf_counter() - t0
    cmd = [sys.executable, "-m", "gnnrec", "train", "--graph", str(graph_path),
           "--out", str(path), "--overwrite", *shlex.split(train_args)]
    print("+", " ".join(cmd), file=sys.stderr)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return {"graph_seconds": graph_s, "graph_cached": bool(info.get("cached")),
            "train_seconds": time.perf_counter() - t0,
            "train_command": "gnnrec train --graph GRAPH --out RUN " + train_args}


def run_training(run_dir: Path) -> dict[str, Any]:
    """What the large run's meta says of its training: model, epochs, best valid."""
    from gnnrec.gnn.run import Run

    meta = Run.open(run_dir).meta()
    valid = meta.get("best_valid") or {}
    return {"model": meta["model"]["name"], "model_config": meta["model"].get("config"),
            "train_config": meta.get("train_config"), "best_epoch": meta.get("best_epoch"),
            "valid_recall@20": valid.get("recall@20"), "valid_ndcg@20": valid.get("ndcg@20"),
            "epoch_seconds": [h.get("seconds") for h in meta.get("history", [])],
            "status": meta.get("status")}


def untrained_case(run_dir: Path, options: Any, users: int, k: int = 20) -> dict[str, Any]:
    """The worst case: the same graph's untrained LightGCN (no cluster structure), its
    index calibrated as serving does, recall@k over ``users`` users that did not
    calibrate it (index searched directly; no ServingState)."""
    from gnnrec.gnn.graph_file import load_graph
    from gnnrec.gnn.run import Run, build_model, final_embeddings
    from gnnrec.serve.ann import ItemIndex, candidates_for

    run = Run.open(run_dir)
    seen = run.graph().interactions.csr  # what serving removes: every known interaction
    dim = int(run.embeddings()[1].shape[1])
    g = load_graph(run_dir.with_name(f"{run_dir.name}.graph.pt"))
    model = build_model("lightgcn", g, {"embedding_dim": dim, "num_layers": 3})
    user_emb, item_emb = (t.float().numpy() for t in final_embeddings(model, g))
    del g, model
    rng = np.random.default_rng(options.seed)  # the state's own calibration sample
    cal = np.sort(rng.choice(len(user_emb), min(options.calibration_users, len(user_emb)),
                             replace=False))
    rest = np.setdiff1d(np.arange(len(user_emb)), cal)
    held = np.random.default_rng(1).choice(rest, min(users, len(rest)), replace=False)
    index = ItemIndex.build(item_emb, options, queries=user_emb[cal], query_rows=cal,
                            query_seen=[seen.row(u) for u in cal])
    per_user = index.recall(item_emb, user_emb[held], [seen.row(u) for u in held], k)
    lat = []
    for u in held[:100]:
        t0 = time.perf_counter()
        index.search(user_emb[u], candidates_for(k, len(seen.row(u))))
        lat.append((time.perf_counter() - t0) * 1e3)
    return {"index": index.info(), "calibration_steps": index.calibration["steps"]
            if index.calibration else None, f"recall@{k}": float(per_user.mean()),
            "users": int(len(held)), "search_p50_ms": float(np.percentile(lat, 50)),
            "search_p99_ms": float(np.percentile(lat, 99))}


def inprocess(state: Any, users: list[str], requests: int, k: int) -> list[float]:
    """Latencies (ms) of ``state.recommend`` for random users (after 50 warm-up calls)."""
    rng = random.Random(0)
    for u in users[:50]:
        state.recommend(u, k)
    out = []
    for _ in range(requests):
        u = rng.choice(users)
        t0 = time.perf_counter()
        state.recommend(u, k)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def index_recall(state: Any, users: list[str], k: int, n: int) -> dict[str, Any]:
    """recall@k of ``state.recommend`` (the index) against exact scoring, over ``n`` users
    that did not calibrate the index; also the exact path's latency."""
    rng = random.Random(1)
    recalls, exact_ms = [], []
    calibration = set(state.calibration_users())
    users = [u for u in users if u not in calibration]
    for user in rng.sample(users, min(n, len(users))):
        u = state.user_index(user)
        got = {s.id for s in state.recommend(user, k).items}
        t0 = time.perf_counter()
        want = {s.id for s in state.rank(u, state.score_users([u])[0], k).items}
        exact_ms.append((time.perf_counter() - t0) * 1e3)
        recalls.append(len(got & want) / max(len(want), 1))
    return {"recall": float(np.mean(recalls)), "min_recall": float(np.min(recalls)),
            "users": len(recalls), "exact_p50_ms": float(np.percentile(exact_ms, 50)),
            "exact_p99_ms": float(np.percentile(exact_ms, 99))}


def measure_large(args: argparse.Namespace, port: int, token: str) -> dict[str, Any]:
    """The large run: build it when missing, in-process (index vs exact), then HTTP."""
    import gc

    from pydantic import SecretStr
    from ray import serve

    from gnnrec.serve.app import run
    from gnnrec.serve.options import Neo4jOptions, ResourceOptions, ServeOptions
    from gnnrec.serve.state import ServingState

    run_dir = Path(args.large_run)
    built = None
    if not (run_dir / "meta.json").is_file():
        built = make_trained_run(run_dir, GraphSource(bulk=True, cache=args.graph_cache),
                                 large_options(args.large_items), args.large_train)
        print(f"built {run_dir}: {built}", file=sys.stderr)
    worst = None
    if args.untrained_case:
        from gnnrec.serve.ann import AnnOptions

        worst = untrained_case(run_dir, AnnOptions(), args.recall_users)
        print(f"untrained worst case: {worst}", file=sys.stderr)
    t0 = time.perf_counter()
    state = ServingState.from_run(run_dir)
    load_s = time.perf_counter() - t0
    users = state.user_ids()
    recall = index_recall(state, users, 20, args.recall_users)
    recall_k = index_recall(state, users, args.k, args.recall_users) if args.k != 20 else recall
    load_inproc = os.getloadavg()[0]
    lat = inprocess(state, users, args.requests, args.k)
    index = state.index
    sizes = {"users": state.num_users, "items": state.num_items, "dim": state.dim,
             "scoring": state.info()["scoring"], "state_load_seconds": load_s,
             "index": state.info().get("index"),
             "calibration_steps": index.calibration["steps"]
             if index is not None and index.calibration else None,
             "training": run_training(run_dir), "built": built, "untrained_case": worst,
             "loadavg_1m_inprocess": load_inproc}
    del state
    gc.collect()
    serve.delete("gnnrec")
    run(ServeOptions(run=str(run_dir.resolve()), token=SecretStr(token),
                     neo4j=Neo4jOptions(enabled=False)),
        ResourceOptions(replicas=args.replicas, num_cpus=args.num_cpus, port=port))
    warm = Http(port)
    for u in users[:200]:
        warm.get(f"/recommend/{u}?k={args.k}")
    c1, c1_s, c1_err = http_load(port, users, 1, args.requests, args.k)
    c8, c8_s, c8_err = http_load(port, users, 8, args.per_client, args.k)
    s1, s8, si = percentiles(c1), percentiles(c8), percentiles(lat)
    return {"run": str(run_dir), **sizes, "recall@20": recall, f"recall@{args.k}": recall_k,
            "p50_ms_c1": s1["p50"], "p99_ms_c1": s1["p99"], "rps_c1": len(c1) / c1_s,
            "p50_ms_c8": s8["p50"], "p99_ms_c8": s8["p99"], "rps_c8": len(c8) / c8_s,
            "errors": c1_err + c8_err, "inprocess_p50_ms": si["p50"],
            "inprocess_p99_ms": si["p99"], "loadavg_1m_after": os.getloadavg()[0],
            "detail": {"c1": s1, "c8": s8, "inprocess": si}}


def machine() -> dict[str, Any]:
    import ray

    from experiments.common import machine as common_machine

    return {**common_machine(), "ray": ray.__version__}


def plot(path: Path, series: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    lo = max(min(min(v) for v in series.values()), 1e-3)
    hi = max(max(v) for v in series.values())
    bins = np.logspace(np.log10(lo), np.log10(hi), 80)
    for name, values in series.items():
        ax.hist(values, bins=bins, histtype="step", linewidth=1.5,
                label=f"{name} (p50 {np.median(values):.2f} ms, "
                      f"p99 {np.percentile(values, 99):.2f} ms)")
    ax.set_xscale("log")
    ax.set_xlabel("latency of GET /recommend (ms, log scale)")
    ax.set_ylabel("requests")
    ax.set_title("gnnrec serving latency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", required=True, help="run directory (runs/NAME)")
    p.add_argument("--make-run", choices=["lastfm", "synthetic"], default=None,
                   help="build the run first when --run has no meta.json")
    p.add_argument("--json", required=True, help="output JSON file")
    p.add_argument("--png", default=None, help="latency histogram (default: JSON name .png)")
    p.add_argument("--requests", type=int, default=2000, help="GETs at 1 client")
    p.add_argument("--per-client", type=int, default=500, help="GETs per client at 8 clients")
    p.add_argument("--feedback-rounds", type=int, default=30)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica")
    p.add_argument("--access-log", action="store_true", help="replica access logs on")
    p.add_argument("--feedback-warmup", type=int, default=5,
                   help="feedback rounds before measuring (the first Neo4j writes plan "
                        "their queries); their delays are reported apart")
    p.add_argument("--neo4j", choices=["none", "temp"], default="none",
                   help="temp: write feedback to a throw-away local Neo4j too")
    p.add_argument("--large-run", default=None,
                   help="then measure this run too (a large catalogue, served through the "
                        "approximate index); built when missing")
    p.add_argument("--large-items", type=int, default=1_000_000,
                   help="items of the --large-run when it is built (default 1,000,000)")
    p.add_argument("--recall-users", type=int, default=300,
                   help="users whose index top-k is compared with exact scoring (never the "
                        "users that calibrated the index)")
    p.add_argument("--large-train", default=LARGE_TRAIN,
                   help=f"gnnrec train arguments of the --large-run when it is built "
                        f"(default: {LARGE_TRAIN})")
    p.add_argument("--untrained-case", action="store_true",
                   help="also calibrate and measure the index on the same graph's untrained "
                        "LightGCN (the worst case: embeddings without structure)")
    add_graph_arguments(p)  # the graph of --make-run
    args = p.parse_args(argv)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    run_dir = Path(args.run)
    if not (run_dir / "meta.json").is_file():
        if not args.make_run:
            raise SystemExit(f"{run_dir} is not a run; pass --make-run lastfm|synthetic")
        t0 = time.perf_counter()
        make_run(run_dir, args.make_run, GraphSource.from_args(args))
        print(f"built {run_dir} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    from pydantic import SecretStr

    from gnnrec.serve.options import Neo4jOptions, ResourceOptions, ServeOptions
    from gnnrec.serve.state import ServingState

    # (1) in-process scorer
    state = ServingState.from_run(run_dir)
    users = state.user_ids()
    inproc = inprocess(state, users, args.requests, args.k)

    stack = contextlib.ExitStack()
    neo4j = Neo4jOptions(enabled=False)
    if args.neo4j == "temp":
        from gnnrec.graph.client import GraphClient
        from gnnrec.graph.schema import ensure_schema

        settings = stack.enter_context(temp_neo4j())
        neo4j = Neo4jOptions(uri=settings.uri, password=SecretStr(settings.password))
        with GraphClient(neo4j.settings()) as client:
            ensure_schema(client)

    import ray
    from ray import serve

    from gnnrec.graph.server import free_port as _free_port
    from gnnrec.serve.app import run

    token = "bench-token"
    port = _free_port()
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    try:
        run(ServeOptions(run=str(run_dir.resolve()), token=SecretStr(token), neo4j=neo4j),
            ResourceOptions(replicas=args.replicas, num_cpus=args.num_cpus, port=port,
                            access_log=args.access_log))
        warm = Http(port)
        for u in users[:200]:
            warm.get(f"/recommend/{u}?k={args.k}")
        c1, c1_s, c1_err = http_load(port, users, 1, args.requests, args.k)
        c8, c8_s, c8_err = http_load(port, users, 8, args.per_client, args.k)
        load_before = os.getloadavg()
        cold = feedback_delays(port, token, users[-args.feedback_warmup:],
                               args.feedback_warmup) if args.feedback_warmup else None
        fb = feedback_delays(port, token, users, args.feedback_rounds)
        large = measure_large(args, port, token) if args.large_run else None
    finally:
        serve.shutdown()
        ray.shutdown()
        stack.close()

    s1, s8, si = percentiles(c1), percentiles(c8), percentiles(inproc)
    vis = percentiles(fb["visible_ms"])
    result = {
        "run": str(run_dir), "users": state.num_users, "items": state.num_items,
        "dim": state.dim, "k": args.k, "replicas": args.replicas,
        "num_cpus_per_replica": args.num_cpus, "neo4j": args.neo4j,
        "p50_ms_c1": s1["p50"], "p99_ms_c1": s1["p99"], "rps_c1": len(c1) / c1_s,
        "p50_ms_c8": s8["p50"], "p99_ms_c8": s8["p99"], "rps_c8": len(c8) / c8_s,
        "errors": c1_err + c8_err,
        "inprocess_p50_ms": si["p50"], "inprocess_p99_ms": si["p99"],
        "feedback_visible_ms": vis["p50"], "feedback_visible_p99_ms": vis["p99"],
        "feedback_post_p50_ms": statistics.median(fb["post_ms"]),
        "feedback_gets_until_visible_max": max(fb["gets_until_visible"]),
        "feedback_warmup_visible_ms": cold["visible_ms"] if cold else [],
        "loadavg_1m_during": load_before[0],
        "detail": {"c1": s1, "c8": s8, "inprocess": si, "feedback_visible": vis},
        "goals": {"p99_ms_c1<=25": s1["p99"] <= 25, "rps_c8>=300": len(c8) / c8_s >= 300,
                  "p99_ms_c8<=60": s8["p99"] <= 60, "feedback_visible_ms<=100": vis["p50"] <= 100,
                  "feedback_visible_p99_ms<=100": vis["p99"] <= 100},
        "machine": machine(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
    }
    if large is not None:
        ratios = {"p99_ms_c8": large["p99_ms_c8"] / s8["p99"],
                  "rps_c8": result["rps_c8"] / large["rps_c8"]}
        result["large"] = {**large, "ratio_to_first_run": ratios,
                           "goals": {"recall@20>=0.95": large["recall@20"]["recall"] >= 0.95,
                                     "p99_c8_within_x1.25": ratios["p99_ms_c8"] <= 1.25,
                                     "rps_c8_within_x1.25": ratios["rps_c8"] <= 1.25}}
    out = write_json(args.json, result)
    png = Path(args.png) if args.png else out.with_suffix(".png")
    plot(png, {"in-process scorer": inproc, "Ray Serve, 1 client": c1,
               "Ray Serve, 8 clients": c8})
    print(json.dumps({k: v for k, v in result.items() if k not in ("detail", "machine")},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
