"""Which approximate top-k library serves a 1M-item catalogue: faiss (IVF, HNSW), hnswlib, usearch.

    pip install hnswlib usearch        # faiss-cpu is a gnnrec dependency; the others optional
    nice -n 10 python -m experiments.ann_choice --items 1000000 \\
        --json experiments/results/ann_choice_1m.json

For each library (each in its own process, so its memory is its own), on the same
vectors: build time (wall and CPU seconds, 2 threads), then single-query searches on one
thread for ``--queries`` users at several search widths: recall@``k`` against exact
inner-product ranking, p50 / p99 latency, CPU ms per query. Candidates asked per query:
``--fetch`` (serving asks for ``k`` plus the user's seen and excluded items).

Vectors: ``clustered`` (points around 2,000 centres with log-normal norms, as trained
embeddings are), ``gaussian`` (no structure: the hard case), or ``--run RUN`` (a run's own
user and item embeddings).

``--run RUN --calibrate 1000,4000,16000`` measures the product's own index instead: for
each list count, ``nprobe`` calibrated to ``--target`` as a serving replica does, then
recall and latency on users that did not calibrate it::

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python -m experiments.ann_choice --run runs/synth1m-serve \
        --calibrate 1000,2000,4000,8000 --json experiments/results/ann_calibrate_1m.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

LIBS = ("faiss-ivf", "faiss-hnsw", "hnswlib", "usearch")
WIDTHS = (16, 32, 64, 128, 256)  # nprobe for IVF, ef for HNSW


def vectors(kind: str, items: int, dim: int, queries: int, seed: int,
            run: str | None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if run:
        x, user_emb, _ = run_vectors(run)
        return x, user_emb[rng.choice(len(user_emb), min(queries, len(user_emb)), replace=False)]
    if kind == "gaussian":
        return (rng.standard_normal((items, dim), dtype=np.float32),
                rng.standard_normal((queries, dim), dtype=np.float32))
    centres = rng.standard_normal((2_000, dim), dtype=np.float32)

    def around(n: int, norms: bool) -> np.ndarray:
        x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal(
            (n, dim), dtype=np.float32)
        return x * rng.lognormal(0, 0.3, (n, 1)).astype(np.float32) if norms else x

    return around(items, True), around(queries, False)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(lib: str, x: np.ndarray) -> tuple[Any, Any]:
    """(index, set_width(width) -> search(q, n) -> rows)."""
    n, dim = x.shape
    if lib.startswith("faiss"):
        import faiss

        faiss.omp_set_num_threads(2)
        if lib == "faiss-ivf":
            from gnnrec.serve.ann import AnnOptions, ItemIndex

            index = ItemIndex.build(x, AnnOptions(threshold=1))

            def width(w: int) -> Any:
                opts = index.options.model_copy(update={"nprobe": w})
                index.options = opts
                return lambda q, k: index.search(q, k)

            return index, width
        index = faiss.IndexHNSWFlat(dim, 16, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        index.add(x)
        faiss.omp_set_num_threads(1)

        def width(w: int) -> Any:
            index.hnsw.efSearch = w
            return lambda q, k: index.search(q[None], k)[1][0]

        return index, width
    if lib == "hnswlib":
        import hnswlib

        index = hnswlib.Index(space="ip", dim=dim)
        index.init_index(max_elements=n, ef_construction=64, M=16)
        index.set_num_threads(2)
        index.add_items(x, np.arange(n))
        index.set_num_threads(1)

        def width(w: int) -> Any:
            index.set_ef(w)
            return lambda q, k: index.knn_query(q, k=k)[0][0]

        return index, width
    from usearch.index import Index

    index = Index(ndim=dim, metric="ip", dtype="f32", connectivity=16, expansion_add=64)
    index.add(np.arange(n), x, threads=2)

    def width(w: int) -> Any:
        index.expansion_search = w
        return lambda q, k: index.search(q, k, threads=1).keys

    return index, width


def run_vectors(run: str) -> tuple[np.ndarray, np.ndarray, Any]:
    """(item Float[N, d], user Float[U, d], seen CSR) of a run, as serving loads them."""
    from gnnrec.gnn.run import Run

    r = Run.open(run)
    user_emb, item_emb = r.embeddings()
    return (item_emb.float().numpy(), user_emb.float().numpy(), r.graph().interactions.csr)


def calibrated_ivf(args: argparse.Namespace) -> dict[str, Any]:
    """The product's index on a run's embeddings, for each list count of ``--calibrate``:
    ``nprobe`` calibrated as a serving replica does (its seeded 200-user sample), then
    recall@k and per-query latency on ``--queries`` other users, at the serving path's
    first candidate count (k + the user's seen items + 32)."""
    from experiments.common import loadavg
    from gnnrec.serve.ann import AnnOptions, ItemIndex, candidates_for

    x, users, seen = run_vectors(args.run)
    out: dict[str, Any] = {"items": len(x), "dim": x.shape[1], "users": len(users), "lists": []}
    for lists in [int(v) for v in args.calibrate.split(",")]:
        opts = AnnOptions(threshold=1, lists=lists, target_recall=args.target)
        rng = np.random.default_rng(opts.seed)  # the serving state's calibration sample
        cal = np.sort(rng.choice(len(users), min(opts.calibration_users, len(users)),
                                 replace=False))
        rest = np.setdiff1d(np.arange(len(users)), cal)
        held = np.random.default_rng(args.seed + 1).choice(rest, min(args.queries, len(rest)),
                                                            replace=False)
        wall0, cpu0 = time.perf_counter(), _cpu()
        index = ItemIndex.build(x, opts, queries=users[cal], query_rows=cal,
                                query_seen=[seen.row(u) for u in cal])
        build_s, build_cpu = time.perf_counter() - wall0, _cpu() - cpu0
        per_user = index.recall(x, users[held], [seen.row(u) for u in held], args.k)
        lat, cpu = [], _cpu()
        for u in held:
            t0 = time.perf_counter()
            index.search(users[u], candidates_for(args.k, len(seen.row(u))))
            lat.append((time.perf_counter() - t0) * 1e3)
        cal_info = index.calibration or {}
        row = {"lists": index.num_lists, "nprobe": index.nprobe,
               "build_seconds": round(build_s, 2), "build_cpu_seconds": round(build_cpu, 2),
               "calibration_seconds": round(cal_info.get("seconds", 0.0), 2),
               "calibration_recall": cal_info.get("recall"),
               "calibration_steps": cal_info.get("steps"),
               "held_out_recall": round(float(per_user.mean()), 4),
               "held_out_min_recall": round(float(per_user.min()), 4),
               "p50_ms": round(float(np.percentile(lat, 50)), 3),
               "p99_ms": round(float(np.percentile(lat, 99)), 3),
               "cpu_ms": round((_cpu() - cpu) / len(held) * 1e3, 3), "loadavg": loadavg()}
        out["lists"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "calibration_steps"}),
              file=sys.stderr, flush=True)
        del index
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One library, in this process."""
    x, queries = vectors(args.vectors, args.items, args.dim, args.queries, args.seed, args.run)
    exact = [set(np.argpartition(-(x @ q), args.k)[: args.k].tolist()) for q in queries]
    rss0, wall0, cpu0 = _rss_mb(), time.perf_counter(), _cpu()
    _, width = build(args.one, x)
    out: dict[str, Any] = {"lib": args.one, "build_seconds": round(time.perf_counter() - wall0, 2),
                           "build_cpu_seconds": round(_cpu() - cpu0, 2),
                           "index_mb": round(_rss_mb() - rss0), "widths": []}
    widths = [w for w in WIDTHS if not (args.one == "hnswlib" and w < args.fetch)]
    for w in widths:
        search = width(w)
        lat, cpu, recall = [], _cpu(), []
        for q, truth in zip(queries, exact, strict=True):
            t0 = time.perf_counter()
            rows = np.asarray(search(q, args.fetch))
            lat.append((time.perf_counter() - t0) * 1e3)
            top = rows[np.argsort(-(x[rows] @ q), kind="stable")[: args.k]]  # exact re-score
            recall.append(len(truth & set(top.tolist())) / args.k)
        out["widths"].append({
            "width": w, "recall": round(float(np.mean(recall)), 4),
            "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "cpu_ms": round((_cpu() - cpu) / len(queries) * 1e3, 3)})
        print(json.dumps({"lib": args.one, **out["widths"][-1]}), file=sys.stderr, flush=True)
    return out


def version(lib: str) -> str | None:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v({"faiss-ivf": "faiss-cpu", "faiss-hnsw": "faiss-cpu"}.get(lib, lib))
    except PackageNotFoundError:
        return None


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['items']:,} items x {result['dim']} ({result['vectors']}), "
             f"recall@{result['k']} of {result['fetch']} candidates",
             f"{'library':<12}{'build s':>9}{'cpu s':>8}{'MB':>7}{'width':>7}{'recall':>8}"
             f"{'p50 ms':>8}{'p99 ms':>8}{'cpu ms':>8}"]
    for r in result["libraries"]:
        if "error" in r:
            lines.append(f"{r['lib']:<12}{r['error']}")
            continue
        for w in r["widths"]:
            lines.append(f"{r['lib']:<12}{r['build_seconds']:>9.1f}{r['build_cpu_seconds']:>8.1f}"
                         f"{r['index_mb']:>7}{w['width']:>7}{w['recall']:>8.4f}"
                         f"{w['p50_ms']:>8.3f}{w['p99_ms']:>8.3f}{w['cpu_ms']:>8.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.ann_choice", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--fetch", type=int, default=100, help="candidates asked per query")
    p.add_argument("--vectors", choices=["clustered", "gaussian"], default="clustered")
    p.add_argument("--run", default=None, help="take the vectors from this run instead")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--libs", default=",".join(LIBS))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--one", choices=LIBS, help=argparse.SUPPRESS)
    p.add_argument("--calibrate", default=None, metavar="LISTS",
                   help="with --run: the product's index calibrated to --target for each of "
                        "these list counts (e.g. 1000,4000,16000); recall on other users")
    p.add_argument("--target", type=float, default=0.95, help="target recall (--calibrate)")
    args = p.parse_args(argv)
    if args.calibrate:
        if not args.run:
            raise SystemExit("--calibrate needs --run")
        from experiments.common import machine, write_json

        result = {"benchmark": "ann_choice --calibrate", "machine": machine(), "run": args.run,
                  "k": args.k, "queries": args.queries, "target": args.target,
                  **calibrated_ivf(args)}
        if args.json:
            write_json(args.json, result)
        return 0
    if args.one:
        print(json.dumps(measure(args)))
        return 0
    from experiments.common import loadavg, machine, write_json

    result: dict[str, Any] = {"benchmark": "ann_choice", "machine": machine(),
                              **{k: getattr(args, k) for k in
                                 ("items", "dim", "queries", "k", "fetch", "vectors", "run")},
                              "libraries": []}
    for lib in args.libs.split(","):
        if version(lib) is None:
            result["libraries"].append({"lib": lib, "error": "not installed"})
            continue
        cmd = [sys.executable, "-m", "experiments.ann_choice", "--one", lib,
               *(argv if argv is not None else sys.argv[1:])]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        entry = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
                 else {"lib": lib, "error": f"exit {proc.returncode}"})
        result["libraries"].append({**entry, "version": version(lib), "loadavg": loadavg()})
    print(table(result))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
