"""The benchmarks' graphs, through the product: ingest → Neo4j → export, with a cache.

    python -m experiments.graphs --dataset ml-1m        # prints the cached graph file

:func:`product_graph` gives a bundled dataset's graph exactly as a user gets it:
``gnnrec.ingest.pipeline.ingest`` into a real Neo4j, then
``gnnrec.graph.export.export_hetero`` (what ``gnnrec export`` runs), saved with
``gnnrec.gnn.graph_file.save_graph`` and read back with ``load_graph``. No split: each
benchmark applies its own seeded split (``gnnrec.gnn.split.apply_split``), and a model
built from it sees the train-only view of ``gnnrec.gnn.views.TrainView`` (which
drops the tagging events of held-out pairs where the export records ``tag_events``).

The Neo4j (``ingest_into``): ``temp`` starts a throw-away local server on free ports
under a temporary home (the project's jar cache) and stops it afterwards; ``configured``
uses the server ``gnnrec`` is configured for (``NEO4J_URI`` or the local one), whose
database is CLEARED first, which needs ``yes`` when it holds data, and keeps the dataset.

The cache (``<gnnrec_home()>/graphs``, or ``cache``) keys a graph file by the dataset,
its options, a sha256 of the dataset's source frames and of the ingest / export code
(``CODE``), so a second run skips Neo4j altogether and any change to the data or to
that code loads again. Next to each file, ``<file>.json`` records how it was made.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from torch_geometric.data import HeteroData

from experiments.common import portable

ROOT = Path(__file__).resolve().parents[1]
# The code a graph file depends on: a change to any of it makes a new cache key.
CODE = ("ingest", "graph/export.py", "graph/features.py", "graph/load.py", "graph/schema.py",
        "graph/client.py", "gnn/data.py", "gnn/graph_file.py")
INGEST_INTO = ("temp", "configured")


@dataclass(frozen=True)
class GraphSource:
    """Where a benchmark's graph comes from on a cache miss, and where the cache is."""

    ingest_into: str = "temp"  # "temp" or "configured"
    yes: bool = False  # the configured database may be cleared although it holds data
    cache: Path | None = None  # default: <gnnrec_home()>/graphs
    refresh: bool = False  # ingest and export again even when cached
    bulk: bool = False  # load a throw-away server with `gnnrec ingest --bulk` (large graphs)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GraphSource:
        return cls(ingest_into=args.ingest_into, yes=args.yes, cache=args.graph_cache,
                   refresh=args.refresh_graph)


def add_graph_arguments(parser: argparse.ArgumentParser, ingest_into: str = "temp") -> None:
    """The options of :class:`GraphSource` (``--ingest-into``, ``--yes``, ...)."""
    parser.add_argument("--ingest-into", choices=INGEST_INTO, default=ingest_into,
                        help="the Neo4j the dataset is ingested into: a throw-away local "
                             "server (temp) or the configured one (NEO4J_URI or `gnnrec neo4j "
                             f"start`; its database is CLEARED); default {ingest_into}")
    parser.add_argument("--yes", action="store_true",
                        help="clear the configured database even when it holds data")
    parser.add_argument("--graph-cache", type=Path, default=None,
                        help="folder of cached exported graphs (default .gnnrec/graphs)")
    parser.add_argument("--refresh-graph", action="store_true",
                        help="ingest and export again even when the graph is cached")


# -- Neo4j --------------------------------------------------------------------------------
@contextlib.contextmanager
def temp_server() -> Iterator[Any]:
    """A throw-away, started local Neo4j on free ports; yields its ``LocalNeo4j``."""
    from gnnrec.graph.server import LocalNeo4j, free_port
    from gnnrec.graph.settings import gnnrec_home

    home = Path(tempfile.mkdtemp(prefix="gnnrec-bench-neo4j-"))
    server = LocalNeo4j(home=home, bolt_port=free_port(), http_port=free_port())
    cached_jars = gnnrec_home() / "neo4j-lib"
    if cached_jars.is_dir():  # the project's jar cache: no second download
        server.lib = cached_jars
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def temp_neo4j() -> Iterator[Any]:
    """A throw-away local Neo4j on free ports; yields its ``Neo4jSettings``."""
    from gnnrec.graph.settings import Neo4jSettings

    with temp_server() as server:
        yield Neo4jSettings(uri=server.bolt_uri, user="neo4j", password=server.password())


@contextlib.contextmanager
def bulk_loaded_neo4j(dataset: str, sources: list[Any]) -> Iterator[tuple[Any, dict[str, Any]]]:
    """A throw-away local Neo4j loaded by ``gnnrec ingest --bulk``; yields (client, summary)."""
    from gnnrec.graph.client import GraphClient
    from gnnrec.graph.settings import Neo4jSettings
    from gnnrec.ingest.bulk import bulk_ingest
    from gnnrec.ingest.pipeline import IngestOptions

    with temp_server() as server:
        summary = bulk_ingest(sources, IngestOptions(progress=False, label=f"bench-{dataset}"),
                              server)
        with GraphClient(Neo4jSettings(server.bolt_uri, "neo4j", server.password())) as client:
            yield client, summary


@contextlib.contextmanager
def bench_neo4j(source: GraphSource) -> Iterator[Any]:
    """A ``GraphClient`` on an EMPTIED database with the schema in place.

    ``configured`` refuses (``SystemExit``) to clear a database that holds nodes unless
    ``source.yes``.
    """
    from gnnrec.graph.client import GraphClient
    from gnnrec.graph.load import graph_stats
    from gnnrec.graph.schema import clear_database, ensure_schema
    from gnnrec.graph.settings import Neo4jSettings

    if source.ingest_into not in INGEST_INTO:
        raise ValueError(f"ingest_into must be one of {INGEST_INTO}, not {source.ingest_into!r}")
    with contextlib.ExitStack() as stack:
        if source.ingest_into == "temp":
            settings = stack.enter_context(temp_neo4j())
        else:
            settings = Neo4jSettings.resolve()
        client = stack.enter_context(GraphClient(settings))
        if not client.ping():
            raise SystemExit(f"Neo4j is not reachable at {settings.uri}: start it (`gnnrec "
                             "neo4j start`) or pass --ingest-into temp")
        if source.ingest_into == "configured":
            held = sum(graph_stats(client)["nodes"].values())
            if held and not source.yes:
                raise SystemExit(f"refusing: the database at {settings.uri} holds {held:,} "
                                 "nodes; pass --yes to clear it, or --ingest-into temp")
            print(f"clearing the database at {settings.uri}", file=sys.stderr)
        clear_database(client)
        ensure_schema(client)
        yield client


# -- datasets -----------------------------------------------------------------------------
def dataset_sources(dataset: str, options: dict[str, Any] | None = None) -> list[Any]:
    """The ingest sources of a bundled dataset; ``options`` go to the synthetic generator
    (:func:`gnnrec.ingest.synthetic.generate`: ``num_users``, ``interactions_per_user``...)."""
    if options and dataset != "synthetic":
        raise ValueError(f"options apply to the synthetic dataset only, not {dataset!r}")
    if dataset == "synthetic":
        from gnnrec.ingest.synthetic import generate

        return generate(**(options or {})).sources()
    from gnnrec.ingest.datasets import load_dataset

    return load_dataset(dataset)


def ingest_dataset(client: Any, dataset: str, sources: list[Any]) -> dict[str, Any]:
    """``gnnrec ingest`` of ``sources`` into ``client``'s (empty) database; its summary."""
    from gnnrec.ingest.pipeline import IngestOptions, ingest

    return ingest(client, sources, IngestOptions(progress=False, label=f"bench-{dataset}"))


def _hash_column(h: Any, column: pd.Series) -> None:
    try:
        hashed = pd.util.hash_pandas_object(column, index=False)
    except TypeError:  # lists (tags): hash their text
        hashed = pd.util.hash_pandas_object(column.map(repr), index=False)
    h.update(hashed.to_numpy().tobytes())


def cache_key(dataset: str, options: dict[str, Any] | None, sources: list[Any]) -> str:
    """sha256 of the dataset, its options, its source frames and the ``CODE`` files."""
    h = hashlib.sha256(json.dumps([dataset, options or {}], sort_keys=True).encode())
    for src in sources:
        frame = src.frame
        h.update(f"{src.kind}:{len(frame)}:{list(map(str, frame.columns))};".encode())
        for col in frame.columns:
            _hash_column(h, frame[col])
    for rel in CODE:
        path = ROOT / rel
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(f"{file.relative_to(ROOT)};".encode() + file.read_bytes())
    return h.hexdigest()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cache_file(dataset: str, key: str, cache: Path | None = None) -> Path:
    from gnnrec.graph.settings import gnnrec_home

    return Path(cache or gnnrec_home() / "graphs") / f"{dataset}-{key[:16]}.pt"


def product_graph(dataset: str, source: GraphSource | None = None, *,
                  options: dict[str, Any] | None = None,
                  log: Callable[[str], None] = _stderr) -> tuple[HeteroData, dict[str, Any]]:
    """``(graph without split, info)`` of ``dataset`` through ingest → Neo4j → export.

    ``info`` records the route, the cache file (``graph_file``, absolute: results written
    with :func:`experiments.common.write_json` keep only its portable form), whether it
    was cached, the ingest summary (rows read / loaded / rejected per
    source), the export summary, the graph's sizes and its fingerprint.
    """
    from gnnrec.gnn.data import fingerprint
    from gnnrec.gnn.graph_file import load_graph, save_graph
    from gnnrec.graph.export import export_hetero
    from gnnrec.graph.load import graph_stats

    source = source or GraphSource()
    sources = dataset_sources(dataset, options)
    key = cache_key(dataset, options, sources)
    path = cache_file(dataset, key, source.cache)
    meta = path.with_name(path.name + ".json")
    if path.is_file() and meta.is_file() and not source.refresh:
        t0 = time.perf_counter()
        graph = load_graph(path)
        info = {**json.loads(meta.read_text()), "graph_file": str(path), "cached": True}
        log(f"{dataset}: cached export {_portable_path(path)} "
            f"(read in {time.perf_counter() - t0:.1f} s)")
        return graph, info
    route = "a throw-away Neo4j, ingest --bulk" if source.bulk else f"{source.ingest_into} Neo4j"
    log(f"{dataset}: ingest into {route}, then export (cache miss, key {key[:16]})")
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if source.bulk:  # the server starts, is stopped for the import, starts again
            client, summary = stack.enter_context(bulk_loaded_neo4j(dataset, sources))
            ready = t0
        else:
            client = stack.enter_context(bench_neo4j(source))
            ready = time.perf_counter()
            summary = ingest_dataset(client, dataset, sources)
        t1 = time.perf_counter()
        data, exported = export_hetero(client)
        t2 = time.perf_counter()
        stats, version = graph_stats(client), client.server_version()
    save_graph(data, path)
    graph = load_graph(path)
    info = {
        "dataset": dataset, **({"options": options} if options else {}),
        "source": ("bulk ingest (gnnrec.ingest.bulk.bulk_ingest, as `gnnrec ingest --bulk`)"
                   if source.bulk else "ingest (gnnrec.ingest.pipeline.ingest)")
                  + " -> Neo4j -> export (gnnrec.graph.export.export_hetero, as `gnnrec export`)",
        "neo4j": {"ingest_into": "temp" if source.bulk else source.ingest_into,
                  "version": version},
        "cache_key": key,
        "ingest": {k: summary[k] for k in ("read", "loaded", "rejected", "sources", "merged")},
        "neo4j_ready_seconds": round(ready - t0, 1), "ingest_seconds": round(t1 - ready, 1),
        "export_seconds": round(t2 - t1, 1),
        "export": exported, "counts": stats,
        "num_users": int(graph["user"].num_nodes), "num_items": int(graph["item"].num_nodes),
        "num_tags": int(graph["tag"].num_nodes),
        "num_interactions": int(graph["user", "interacts", "item"].edge_index.size(1)),
        "num_friendships": int(graph["user", "friend", "user"].edge_index.size(1) // 2),
        "num_tag_events": int(graph.tag_events.size(1)) if "tag_events" in graph else 0,
        "fingerprint": fingerprint(graph),
    }
    meta.write_text(json.dumps(portable(info), indent=1) + "\n")
    log(f"{dataset}: Neo4j ready in {ready - t0:.1f} s, ingested in {t1 - ready:.1f} s, "
        f"exported in {t2 - t1:.1f} s -> {_portable_path(path)}")
    return graph, {**info, "graph_file": str(path), "cached": False}


def _portable_path(path: Path) -> str:
    return str(portable(str(Path(path).resolve())))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.graphs",
                                description="Ingest, export and cache a bundled dataset's "
                                            "graph; print the graph file.")
    p.add_argument("--dataset", required=True)
    add_graph_arguments(p)
    args = p.parse_args(argv)
    _, info = product_graph(args.dataset, GraphSource.from_args(args))
    print(info["graph_file"])  # the file, for `gnnrec train --graph` or a GPU host
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
