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
"""

from __future__ import annotations

import argparse
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
    result = run(args)
    print(table(result))
    if args.json:
        write_json(args.json, result, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
