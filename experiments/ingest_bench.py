"""Ingest benchmark: batched UNWIND...MERGE versus one MERGE transaction per row.

    python -m experiments.ingest_bench --json experiments/results/ingest_bench.json [--yes]

WARNING: this CLEARS the database of the Neo4j that ``Neo4jSettings.resolve()``
names (``NEO4J_URI`` or the project-local server). It refuses to run on a database
that holds nodes unless ``--yes`` is given, and leaves the database empty.
``--ingest-into temp`` runs it on a throw-away local server instead.

In one process, on one server:

1. all of LastFM (HetRec 2011) through ``gnnrec.ingest.pipeline.ingest`` (batched:
   nodes first, then relationships MATCHed on constrained ids) into an emptied
   database, timed from reading the wheel to the last commit; the counts are checked;
2. the first ``--sample`` LastFM interactions, emptied database, one transaction per
   row (``MERGE`` user, item and the relationship: ``graph.load.record_interaction``);
3. the same sample through the batched pipeline, emptied database.

``rows_per_second`` = LastFM source rows (users, artists, plays, friendships, tagging
events) per second end to end; ``naive_rows_per_second`` = sample rows per second one by one;
``speedup`` is their ratio; ``sample_speedup`` compares both paths on the same rows.
The LastFM counts are checked label by label and type by type (:func:`check_counts`):
a database a user has worked with also lists labels and relationship types that once
existed (``RECOMMENDED`` after a write-back), with a count of 0.

Bulk load and export at scale (leaves the configured database alone)::

    nice -n 10 python -m experiments.ingest_bench --bulk 10000000 \
        --json experiments/results/ingest_bench_bulk10m.json

writes a seeded synthetic graph (``gnnrec.ingest.synthetic``: about ``N`` interactions,
``N / 20`` users with about 10 friends each, ``N / 100`` items with 1-3 tags, user and
item attributes) as Parquet source files, starts a throw-away local Neo4j (temporary
home, free ports), then times the two commands a user runs, as subprocesses:
``gnnrec ingest --bulk --users … --items … --interactions … --social …`` (reading the
files, validation, import files, stop, ``neo4j-admin database import full``, start,
constraints) and ``gnnrec export --out graph.pt`` (with its default random split), and
checks the counts. Goals (issue 20): bulk load <= 120 s, export <= 60 s at 10M.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from experiments.common import write_json
from experiments.graphs import INGEST_INTO, GraphSource, bench_neo4j

EXPECTED = {
    "nodes": {"User": 1_892, "Item": 18_022, "Tag": 9_749},
    "relationships": {"INTERACTED": 92_834, "FRIEND": 12_717, "HAS_TAG": 109_750,
                      "TAGGED": 186_479},
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.ingest_bench",
        description="Batched vs one-row-per-transaction ingest on LastFM. "
                    "CLEARS the configured Neo4j database.",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--sample", type=int, default=2_000,
                        help="interactions for the naive path (default 2000)")
    parser.add_argument("--batch-size", type=int, default=5_000)
    parser.add_argument("--yes", action="store_true",
                        help="clear the database even when it holds data")
    parser.add_argument("--ingest-into", choices=INGEST_INTO, default="configured",
                        help="configured (default): the configured Neo4j, CLEARED; temp: a "
                             "throw-away local server")
    parser.add_argument("--bulk", type=int, default=None, metavar="N",
                        help="instead: bulk-load and export a synthetic graph of about N "
                             "interactions into a throw-away Neo4j")
    parser.add_argument("--seed", type=int, default=0, help="synthetic graph seed (--bulk)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the source files and the temporary Neo4j go (--bulk)")
    return parser.parse_args(argv)


def check_counts(counts: dict[str, dict[str, int]]) -> None:
    """``SystemExit`` unless ``counts`` (``graph_stats``) hold exactly LastFM's nodes and
    relationships: the EXPECTED labels and types with their counts, any other one at 0."""
    wrong = {}
    for section, expected in EXPECTED.items():
        found = counts.get(section, {})
        for name in sorted(set(expected) | set(found)):
            if found.get(name, 0) != expected.get(name, 0):
                wrong[f"{section}.{name}"] = (found.get(name, 0), expected.get(name, 0))
    if wrong:
        raise SystemExit("unexpected LastFM counts (found, expected): " + ", ".join(
            f"{name} {got:,} != {want:,}" for name, (got, want) in wrong.items()))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the three measurements; returns the result record."""
    with bench_neo4j(GraphSource(args.ingest_into, yes=args.yes)) as client:
        print(f"This benchmark CLEARS database {client.settings.database!r} at "
              f"{client.settings.uri}.", file=sys.stderr)
        return _measure(client, args)


def _measure(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd

    from gnnrec.graph.load import graph_stats, record_interaction
    from gnnrec.graph.schema import clear_database, ensure_schema
    from gnnrec.ingest.datasets import load_dataset
    from gnnrec.ingest.pipeline import IngestOptions, ingest
    from gnnrec.ingest.readers import Source

    options = IngestOptions(batch_size=args.batch_size, progress=False)
    load_start = list(os.getloadavg())

    def reset() -> None:
        clear_database(client)
        ensure_schema(client)

    # 1. all of LastFM, batched
    load_dataset("lastfm")  # fetch the wheel once, outside the timing
    reset()
    t0 = time.perf_counter()
    sources = load_dataset("lastfm")
    summary = ingest(client, sources, options)
    lastfm_seconds = time.perf_counter() - t0
    counts = graph_stats(client)
    check_counts(counts)
    records = sum(summary["merged"].values())

    # 2. a sample, one transaction per row
    inter = next(s for s in sources if s.kind == "interactions").frame
    sample = inter.head(args.sample).reset_index(drop=True)
    reset()
    t0 = time.perf_counter()
    for user, item, weight in sample[["user", "item", "weight"]].itertuples(index=False):
        record_interaction(client, user, item, float(weight))
    naive_seconds = time.perf_counter() - t0

    # 3. the same sample, batched
    reset()
    t0 = time.perf_counter()
    ingest(client, [Source.from_frame("interactions", pd.DataFrame(sample))], options)
    batched_sample_seconds = time.perf_counter() - t0
    clear_database(client)
    version = client.server_version()

    rows = summary["read"]
    rps = rows / lastfm_seconds
    naive_rps = len(sample) / naive_seconds
    batched_sample_rps = len(sample) / batched_sample_seconds
    return {
        "benchmark": "ingest_bench",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": load_start,
        "loadavg_end": list(os.getloadavg()),
        "neo4j_version": version,
        "neo4j": args.ingest_into,
        "neo4j_external": client.settings.external,
        "batch_size": args.batch_size,
        "lastfm_rows": rows,
        "lastfm_records_merged": records,
        "lastfm_seconds": round(lastfm_seconds, 3),
        "rows_per_second": round(rps, 1),
        "records_per_second": round(records / lastfm_seconds, 1),
        "lastfm_timings": summary["timings"],
        "lastfm_counts": counts,
        "naive_sample_rows": len(sample),
        "naive_seconds": round(naive_seconds, 3),
        "naive_rows_per_second": round(naive_rps, 1),
        "batched_sample_seconds": round(batched_sample_seconds, 3),
        "batched_sample_rows_per_second": round(batched_sample_rps, 1),
        "speedup": round(rps / naive_rps, 2),
        "sample_speedup": round(batched_sample_rps / naive_rps, 2),
    }


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    """Run a gnnrec command; (wall seconds, its JSON summary)."""
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return seconds, json.loads(proc.stdout.strip().splitlines()[-1])


def run_bulk(args: argparse.Namespace) -> dict[str, Any]:
    """Synthetic source files -> ``gnnrec ingest --bulk`` -> ``gnnrec export``, timed."""
    import shutil
    import tempfile

    from experiments.common import loadavg, machine
    from gnnrec.graph.server import LocalNeo4j, free_port
    from gnnrec.graph.settings import gnnrec_home
    from gnnrec.ingest.synthetic import generate

    work = Path(tempfile.mkdtemp(prefix="bulk-bench-", dir=args.work_dir))
    num_users, num_items = max(args.bulk // 20, 10), max(args.bulk // 100, 10)
    try:
        t0 = time.perf_counter()
        data = generate(num_users=num_users, num_items=num_items, seed=args.seed,
                        friend_density=min(1.0, 10 / num_users))
        files = {}
        for kind in ("users", "items", "interactions", "social"):
            files[kind] = work / f"{kind}.parquet"
            getattr(data, kind).to_parquet(files[kind], index=False)
        prepare_seconds = time.perf_counter() - t0
        sizes = {kind: len(getattr(data, kind)) for kind in files}
        del data

        env = {**os.environ, "GNNREC_HOME": str(work / "home"),
               "GNNREC_NEO4J_LIB": os.environ.get("GNNREC_NEO4J_LIB",
                                                  str(gnnrec_home() / "neo4j-lib"))}
        env.pop("NEO4J_URI", None)
        server = LocalNeo4j(home=work / "home", bolt_port=free_port(), http_port=free_port())
        os.environ["GNNREC_NEO4J_LIB"] = env["GNNREC_NEO4J_LIB"]
        server.start()
        try:
            gnnrec = [sys.executable, "-m", "gnnrec.cli"]
            load_before = loadavg()
            ingest_seconds, ingest_summary = _timed(
                [*gnnrec, "ingest", "--bulk", "--no-progress",
                 *[f"--{kind}={path}" for kind, path in files.items()]], env)
            load_between = loadavg()
            export_seconds, export_summary = _timed(
                [*gnnrec, "export", "--out", str(work / "graph.pt")], env)
            graph_mb = (work / "graph.pt").stat().st_size / 2**20
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if ingest_summary["rejected"] or export_summary["interactions"] != ingest_summary[
            "merged"]["INTERACTED"]:
        raise SystemExit(f"counts do not reconcile: {ingest_summary} / {export_summary}")
    return {
        "benchmark": "ingest_bench --bulk",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "source_rows": sizes,
        "prepare_seconds": round(prepare_seconds, 3),
        "bulk_seconds": round(ingest_seconds, 3),
        "bulk_rows_per_second": round(ingest_summary["read"] / ingest_seconds),
        "bulk_summary": {k: ingest_summary[k] for k in
                         ("read", "loaded", "rejected", "merged", "timings", "bulk")},
        "export_seconds": round(export_seconds, 3),
        "export_relationships_per_second": round(
            sum(export_summary[k] for k in ("interactions", "friendships", "item_tags",
                                             "taggings")) / export_seconds),
        "export_summary": export_summary,
        "graph_file_mb": round(graph_mb, 1),
        "loadavg_before": load_before, "loadavg_between": load_between,
        "loadavg_after": loadavg(),
        "goals": {"bulk_seconds": 120, "export_seconds": 60},
    }


def bulk_table(result: dict[str, Any]) -> str:
    s = result["bulk_summary"]
    e = result["export_summary"]
    return "\n".join([
        f"{'step':<34}{'rows':>12}{'seconds':>10}{'goal':>8}",
        f"{'gnnrec ingest --bulk':<34}{s['read']:>12,}{result['bulk_seconds']:>10.1f}{120:>8}",
        f"{'gnnrec export':<34}{e['interactions']:>12,}{result['export_seconds']:>10.1f}{60:>8}",
        "bulk steps: " + ", ".join(f"{k} {v:.1f}" for k, v in s["timings"].items()),
        f"graph: {e['users']:,} users, {e['items']:,} items, {e['tags']:,} tags, "
        f"{e['interactions']:,} interactions, {e['friendships']:,} friendships, "
        f"{e['item_tags']:,} item tags; file {result['graph_file_mb']} MB",
        f"load average before/between/after: {result['loadavg_before']} / "
        f"{result['loadavg_between']} / {result['loadavg_after']}",
    ])


def table(result: dict[str, Any]) -> str:
    """A plain-text table of the headline numbers."""
    lines = [
        f"{'path':<38}{'rows':>10}{'seconds':>10}{'rows/s':>12}",
        f"{'batched, all of LastFM':<38}{result['lastfm_rows']:>10,}"
        f"{result['lastfm_seconds']:>10.2f}{result['rows_per_second']:>12,.0f}",
        f"{'batched, sample':<38}{result['naive_sample_rows']:>10,}"
        f"{result['batched_sample_seconds']:>10.2f}"
        f"{result['batched_sample_rows_per_second']:>12,.0f}",
        f"{'one transaction per row, sample':<38}{result['naive_sample_rows']:>10,}"
        f"{result['naive_seconds']:>10.2f}{result['naive_rows_per_second']:>12,.0f}",
        f"speedup {result['speedup']}x (LastFM batched vs naive), "
        f"{result['sample_speedup']}x on the same sample",
        f"{result['platform']}, {result['cpu_count']} CPUs, Neo4j {result['neo4j_version']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    result = run_bulk(args) if args.bulk else run(args)
    print(bulk_table(result) if args.bulk else table(result))
    if args.json:
        write_json(args.json, result, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
