"""Export benchmark: the paged column-list export against a naive ``.data()`` export.

    python -m experiments.export_bench --dataset ml-1m --yes \
        --json experiments/results/export_bench_ml-1m.json

With ``--yes`` the database of the configured Neo4j (``NEO4J_URI`` or the local
server) is CLEARED and the dataset ingested first (ML-1M takes about a minute);
without it the graph already in the database is exported as it is.
``--ingest-into temp`` ingests into a throw-away local server instead (the configured
database is left alone).

In one process, on the same graph, alternating ``--repeats`` times:

* ours: ``gnnrec.graph.export.export_hetero`` (node passes, then relationships in
  pages of start nodes looked up by internal id, each page one record of lists);
* naive: one ``session.run(...).data()`` per relationship type returning external
  ids, mapped to indices with Python dicts, then tensors (what one writes first).

Both produce the same edges (checked). ``rels_per_second`` counts INTERACTED,
FRIEND and HAS_TAG relationships over the whole export time (nodes included).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from pathlib import Path

from experiments.common import write_json
from experiments.graphs import (
    INGEST_INTO,
    GraphSource,
    bench_neo4j,
    dataset_sources,
    ingest_dataset,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.export_bench")
    parser.add_argument("--dataset", default="ml-1m", help="dataset to ingest with --yes")
    parser.add_argument("--yes", action="store_true", help="CLEAR the database and ingest")
    parser.add_argument("--ingest-into", choices=INGEST_INTO, default="configured",
                        help="temp: ingest --dataset into a throw-away local Neo4j instead")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--page-size", type=int, default=50_000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    load_start = os.getloadavg()

    from gnnrec.graph.client import GraphClient
    from gnnrec.graph.export import export_hetero, naive_export
    from gnnrec.graph.load import graph_stats

    ingests = args.yes or args.ingest_into == "temp"
    with contextlib.ExitStack() as stack:
        if ingests:  # an emptied database (the configured one only with --yes)
            client = stack.enter_context(bench_neo4j(GraphSource(args.ingest_into, yes=True)))
            print(f"ingesting {args.dataset} into {client.settings.uri} ...", flush=True)
            ingest_dataset(client, args.dataset, dataset_sources(args.dataset))
        else:
            client = stack.enter_context(GraphClient())
        stats = graph_stats(client)
        ours_s, naive_s = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            data, summary = export_hetero(client, page_size=args.page_size)
            ours_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            naive = naive_export(client)
            naive_s.append(time.perf_counter() - t0)
    rels = summary["interactions"] + summary["friendships"] + summary["item_tags"]
    assert naive["INTERACTED"].shape[1] == summary["interactions"]
    ours, slow = statistics.median(ours_s), statistics.median(naive_s)
    result = {
        "dataset": args.dataset if ingests else "as found in the database",
        "neo4j": args.ingest_into if ingests else "configured, as found",
        "graph": stats,
        "relationships": rels,
        "ours_seconds": [round(s, 3) for s in ours_s],
        "naive_seconds": [round(s, 3) for s in naive_s],
        "rels_per_second": round(rels / ours),
        "naive_rels_per_second": round(rels / slow),
        "speedup": round(slow / ours, 2),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_start": load_start, "loadavg": os.getloadavg()},
    }
    print(f"{'path':<8}{'median s':>10}{'rels/s':>12}")
    print(f"{'ours':<8}{ours:>10.2f}{result['rels_per_second']:>12,}")
    print(f"{'naive':<8}{slow:>10.2f}{result['naive_rels_per_second']:>12,}")
    print(f"speedup {result['speedup']}x on {rels:,} relationships")
    if args.json:
        write_json(args.json, result, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
