"""``gnnrec ingest --bulk``: the initial load of an empty database by Neo4j's offline importer.

The same reading, validation, pseudonymisation, ``--strict`` checks, reject file and
JSON summary as :func:`gnnrec.ingest.pipeline.ingest`, and the same graph (the rows are
shaped by :func:`~gnnrec.ingest.pipeline.graph_rows`, as the MERGE path writes them); only
the writing differs: the accepted rows become the importer's CSV files and
``neo4j-admin database import full`` builds the store while the local server is stopped
(:mod:`gnnrec.graph.bulk`). Steps:

1. refuse an external server (``NEO4J_URI``): its store cannot be written offline from here;
2. start the local server if it is not running and refuse a database that holds any node;
3. read and check every source, write the reject file;
4. write the import files under ``<home>/neo4j/import/``;
5. stop the server, import, start it again, create the constraints, check the counts;
   the import files are removed.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd

from gnnrec.graph.bulk import ImportFiles, bulk_load, count_nodes
from gnnrec.graph.client import GraphClient
from gnnrec.graph.forgotten import Tombstone, tombstones
from gnnrec.graph.server import LocalNeo4j
from gnnrec.graph.settings import Neo4jSettings
from gnnrec.ingest.errors import IngestError
from gnnrec.ingest.pipeline import (
    GraphRows,
    IngestOptions,
    graph_rows,
    prepare,
    reject_path,
    summarize,
    write_rejects,
)
from gnnrec.ingest.readers import Source


def _say(options: IngestOptions, message: str) -> None:
    if options.progress:
        print(f"bulk: {message}", file=sys.stderr, flush=True)


def _attributes(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in ("id", "row") if c in frame.columns])


def write_import_files(rows: GraphRows, files: ImportFiles,
                       tombstones: Sequence[Tombstone] = ()) -> ImportFiles:
    """Write ``rows`` as the importer's files: the graph the MERGE path would build, plus
    the forget ``tombstones`` the database held (the import replaces the whole store)."""
    if tombstones:
        files.nodes("Forgotten", "key", [t.key for t in tombstones], pd.DataFrame({
            "key_id": pd.Series([t.key_id for t in tombstones], dtype=object),
            "at": pd.Series([t.at for t in tombstones], dtype="Int64")}))
    files.nodes("User", "id", rows.users["id"].to_numpy(dtype=object), _attributes(rows.users))
    if rows.extra_users:
        files.nodes("User", "id", rows.extra_users)
    files.nodes("Item", "id", rows.items["id"].to_numpy(dtype=object), _attributes(rows.items))
    if rows.extra_items:
        files.nodes("Item", "id", rows.extra_items)
    files.nodes("Tag", "name", rows.tag_names["name"].to_numpy(dtype=object))
    if rows.interactions is not None:
        inter = rows.interactions
        files.relationships("INTERACTED", ("User", inter["user"].to_numpy(dtype=object)),
                            ("Item", inter["item"].to_numpy(dtype=object)),
                            {"weight": inter["weight"].astype("float64"),
                             "ts": inter["ts"].astype("Int64")})
    if rows.friendships is not None:
        pairs = rows.friendships
        files.relationships("FRIEND", ("User", pairs["a"].to_numpy(dtype=object)),
                            ("User", pairs["b"].to_numpy(dtype=object)))
    item_tags = rows.item_tags[["item", "tag", "weight"]]
    if rows.taggings is not None:  # a pair users tagged weighs its number of events
        events = rows.taggings
        counted = (events.groupby(["item", "tag"], sort=False).size().rename("weight")
                   .astype("float64").reset_index())
        keys = pd.MultiIndex.from_frame(counted[["item", "tag"]])
        listed = pd.MultiIndex.from_frame(item_tags[["item", "tag"]].astype(object))
        item_tags = pd.concat([item_tags[~listed.isin(keys)], counted], ignore_index=True)
        files.relationships("TAGGED", ("User", events["user"].to_numpy(dtype=object)),
                            ("Item", events["item"].to_numpy(dtype=object)),
                            {"tag": events["tag"].astype(object)})
    if len(item_tags):
        files.relationships("HAS_TAG", ("Item", item_tags["item"].to_numpy(dtype=object)),
                            ("Tag", item_tags["tag"].to_numpy(dtype=object)),
                            {"weight": item_tags["weight"].astype("float64")})
    return files


def local_server_for_bulk(home: os.PathLike[str] | None = None) -> LocalNeo4j:
    """The project-local server; an external ``NEO4J_URI`` is refused with the reason."""
    uri = os.environ.get("NEO4J_URI")
    if uri:
        raise IngestError(
            f"--bulk builds the database files of the project-local Neo4j while it is stopped; "
            f"NEO4J_URI points at another server ({uri}) whose files gnnrec cannot reach or "
            f"stop. Load it without --bulk (batched MERGE), or unset NEO4J_URI to bulk-load "
            f"the local server; nothing was written"
        )
    return LocalNeo4j(home)  # type: ignore[arg-type]


def bulk_ingest(
    sources: Sequence[Source], options: IngestOptions | None = None,
    server: LocalNeo4j | None = None,
) -> dict[str, Any]:
    """Check ``sources`` and import them into the empty local database; return the summary.

    The summary has the keys of :func:`gnnrec.ingest.pipeline.ingest` (``merged``: rows
    imported per label and type) plus ``bulk`` (the importer's counts, files with
    multi-line values, whether the server had to be started). The server runs at the end.
    """
    options = options or IngestOptions()
    server = server or local_server_for_bulk()
    database = os.environ.get("NEO4J_DATABASE", "neo4j")
    started = time.perf_counter()
    was_running = server.pid() is not None
    if not was_running:
        _say(options, "starting the local Neo4j to check that its database is empty")
        server.start()
    settings = Neo4jSettings(server.bolt_uri, "neo4j", server.password(), database)
    with GraphClient(settings) as client:
        held = count_nodes(client) - len(tombstones(client))  # forget tombstones are carried
        if held:
            raise IngestError(
                f"--bulk loads only into an empty database: {database!r} at {server.bolt_uri} "
                f"holds {held:,} nodes. Add to it with `gnnrec ingest` without --bulk "
                f"(incremental MERGE), or empty it first; nothing was written"
            )
        checked = prepare(client, sources, options)  # rejects rows of forgotten users
        kept = tombstones(client)  # less those --allow-forgotten removed
    timings: dict[str, float] = {"read_and_check": time.perf_counter() - started}
    reject_file = write_rejects(checked, reject_path(options, sources))
    t0 = time.perf_counter()
    folder = server.dir / "import" / f"bulk-{os.getpid()}-{int(time.time())}"
    try:
        _say(options, f"writing the import files under {folder}")
        files = write_import_files(graph_rows(checked), ImportFiles(folder), kept)
        timings["write_files"] = time.perf_counter() - t0
        _say(options, "stopping Neo4j, running neo4j-admin database import full, "
                      "starting Neo4j again")
        result = bulk_load(server, files, database)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    timings.update(result["timings"])
    summary = summarize(checked, options, reject_file, files.counts(), timings, started)
    summary["bulk"] = {**result["importer"], "database": database,
                       "server_started_for_the_load": not was_running}
    return summary

