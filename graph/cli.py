"""Commands ``neo4j start|stop|status|install``, ``cypher``, ``export`` and ``writeback``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from gnnrec.errors import GnnrecError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    neo = sub.add_parser("neo4j", help="run the project-local Neo4j server")
    neo_sub = neo.add_subparsers(dest="neo4j_command", required=True, metavar="ACTION")
    start = neo_sub.add_parser("start", help="start Neo4j (Bolt on localhost) and wait for it")
    start.add_argument("--bolt-port", type=int, default=None, help="default 7687")
    start.add_argument("--http-port", type=int, default=None, help="default 7474 (Browser)")
    start.add_argument("--timeout", type=float, default=180.0)
    start.add_argument("--allow-csv-urls", action="store_true", default=None,
                       help="let LOAD CSV fetch http(s)/ftp URLs (refused by default; also "
                            "GNNREC_NEO4J_ALLOW_CSV_URLS=1)")
    start.set_defaults(handler=_start)
    stop = neo_sub.add_parser("stop", help="shut the local server down cleanly")
    stop.set_defaults(handler=_stop)
    status = neo_sub.add_parser("status", help="is it running, where, which version")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)
    install = neo_sub.add_parser("install", help="fetch the Neo4j jars with Maven (idempotent)")
    install.set_defaults(handler=_install)
    reset = neo_sub.add_parser(
        "reset", help="delete every node and relationship of the configured database",
        description="Empty the database (the local server, or NEO4J_URI's) in batches of "
                    "--batch-size, so no transaction outgrows the server's memory; "
                    "constraints, indexes and the forget tombstones stay (a re-ingest "
                    "of an old file does not bring a forgotten user back). Asks for "
                    "confirmation unless --yes.")
    reset.add_argument("--yes", action="store_true", help="do not ask")
    reset.add_argument("--drop-tombstones", action="store_true",
                       help="delete the forget tombstones too")
    reset.add_argument("--batch-size", type=int, default=10_000)
    reset.set_defaults(handler=_reset)

    cy = sub.add_parser("cypher", help="run a Cypher query (read-only unless --write)")
    cy.add_argument("query")
    cy.add_argument(
        "--param", "-p", action="append", default=[], metavar="NAME[:TYPE]=VALUE",
        help="query parameter, text by default (ids are text); TYPE is int, float, bool or json",
    )
    cy.add_argument("--write", action="store_true",
                    help="allow writes: run in an auto-commit transaction (so CALL { ... } IN "
                         "TRANSACTIONS works); without it the query must only read")
    cy.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    cy.set_defaults(handler=_cypher)

    ex = sub.add_parser("export", help="export the Neo4j graph to a PyG HeteroData file")
    ex.add_argument("--out", required=True, help="output file (.pt)")
    ex.add_argument("--page-size", type=int, default=50_000)
    ex.add_argument("--split", choices=["random", "temporal", "none"], default="random",
                    help="add a seeded train/valid/test split to the file (default random)")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--no-progress", action="store_true", help="no progress bar")
    ex.add_argument("--key-file", type=Path, default=None,
                    help="the key of the forget tombstones, read only when there are some "
                         "(default $GNNREC_KEY_FILE or <home>/pseudonym.key)")
    ex.set_defaults(handler=_export)

    wb = sub.add_parser("writeback", help="write a run's top-k and embeddings into Neo4j")
    wb.add_argument("--run", required=True, help="run directory (runs/NAME)")
    wb.add_argument("--k", type=int, default=20)
    wb.add_argument("--batch-size", type=int, default=5_000)
    wb.add_argument("--no-embeddings", action="store_true", help="write recommendations only")
    wb.add_argument("--no-progress", action="store_true", help="no progress bar")
    wb.set_defaults(handler=_writeback)


def _local(args: argparse.Namespace):  # noqa: ANN202 - LocalNeo4j, imported lazily
    from gnnrec.graph.server import LocalNeo4j

    return LocalNeo4j(
        bolt_port=getattr(args, "bolt_port", None), http_port=getattr(args, "http_port", None),
        allow_csv_urls=getattr(args, "allow_csv_urls", None),
    )


def _external_note() -> bool:
    if os.environ.get("NEO4J_URI"):
        print(f"NEO4J_URI is set ({os.environ['NEO4J_URI']}): using that server; "
              "the local one is not managed", file=sys.stderr)
        return True
    return False


def _start(args: argparse.Namespace) -> int:
    if _external_note():
        return 0
    status, started = _local(args).start(timeout=args.timeout)
    if started:
        print(f"Neo4j {status.version} started (pid {status.pid}) on {status.uri}")
    else:
        print(f"Neo4j is already running (pid {status.pid}) on {status.uri}")
    print(f"Browser: {status.browser_url}  (user neo4j, password in {status.home}/password)")
    return 0


def _stop(args: argparse.Namespace) -> int:
    if _external_note():
        return 0
    print("Neo4j stopped" if _local(args).stop() else "Neo4j was not running")
    return 0


def _install(args: argparse.Namespace) -> int:
    print(f"Neo4j jars in {_local(args).install()}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from gnnrec.graph.settings import Neo4jSettings

    if os.environ.get("NEO4J_URI"):
        from gnnrec.graph.client import GraphClient

        settings = Neo4jSettings.resolve()
        with GraphClient.connect(settings) as client:  # one clear line when it cannot
            version = client.server_version()
        info: dict[str, Any] = {"running": True, "uri": settings.uri, "version": version,
                                "external": True}
    else:
        info = _local(args).status().to_dict()
    if args.json:
        print(json.dumps(info))
    else:
        state = "running" if info["running"] else "not running"
        print(f"Neo4j {info['version']} {state} at {info['uri']}")
    return 0


_PARAM_TYPES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": lambda v: {"true": True, "false": False}[v.lower()],
    "json": json.loads,
}


def parse_param(text: str) -> tuple[str, Any]:
    """``name=value`` -> (name, "value"); ``name:int=5`` -> (name, 5).

    Values are text unless a type is given, because node ids are stored as text.
    """
    key, sep, raw = text.partition("=")
    name, _, kind = key.partition(":")
    if not sep or not name:
        raise GnnrecError(f"--param {text!r}: expected NAME[:TYPE]=VALUE")
    convert = _PARAM_TYPES.get(kind or "str")
    if convert is None:
        known = ", ".join(_PARAM_TYPES)
        raise GnnrecError(f"--param {text!r}: unknown type {kind!r} (use {known})")
    try:
        return name, convert(raw)
    except (ValueError, KeyError) as exc:
        raise GnnrecError(f"--param {text!r}: {raw!r} is not a valid {kind}") from exc


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows as a plain aligned text table (values JSON-encoded when not scalars)."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])

    def cell(v: Any) -> str:
        return v if isinstance(v, str) else json.dumps(v, default=str, ensure_ascii=False)

    body = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    out = [line, sep]
    out += ["  ".join(v.ljust(w) for v, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(out) + f"\n({len(rows)} row{'s' if len(rows) != 1 else ''})"


def _cypher(args: argparse.Namespace) -> int:
    from neo4j.exceptions import Neo4jError

    from gnnrec.graph.client import GraphClient

    params = dict(parse_param(p) for p in args.param)
    with GraphClient.connect() as client:
        try:
            if args.write:  # auto-commit: CALL { ... } IN TRANSACTIONS needs it
                rows = client.run_auto(args.query, params)
            else:
                client.check_read_only(args.query, params)
                rows = client.read(args.query, params)
        except Neo4jError as exc:
            hint = " (this looks like a write: add --write)" if "write" in str(exc).lower() else ""
            raise GnnrecError(f"Cypher failed: {exc.message}{hint}") from exc
    if args.json:
        print(json.dumps(rows, default=str, ensure_ascii=False))
    else:
        print(format_table(rows))
    return 0


def _export(args: argparse.Namespace) -> int:
    from gnnrec.graph.client import GraphClient
    from gnnrec.graph.export import export_hetero

    with GraphClient.connect() as client:
        data, summary = export_hetero(client, page_size=args.page_size,
                                      progress=not args.no_progress, key_file=args.key_file)
    from gnnrec.gnn.graph_file import save_graph

    if args.split != "none":
        from gnnrec.gnn.split import apply_split

        data = apply_split(data, kind=args.split, seed=args.seed)
    save_graph(data, args.out)
    print(json.dumps({**summary, "out": str(args.out), "split": args.split}))
    return 0


def _reset(args: argparse.Namespace) -> int:
    """Empty the configured database after a confirmation (or ``--yes``)."""
    from gnnrec.graph.client import GraphClient
    from gnnrec.graph.load import graph_stats
    from gnnrec.graph.schema import clear_database

    with GraphClient.connect() as client:
        target = f"database {client.settings.database!r} at {client.settings.uri}"
        if not args.yes:
            if not sys.stdin.isatty():
                raise GnnrecError(f"refusing to empty {target} without a confirmation: "
                                  "add --yes")
            print(f"Delete every node and relationship of {target}? Type 'yes': ", end="",
                  file=sys.stderr, flush=True)
            if sys.stdin.readline().strip().lower() != "yes":
                raise GnnrecError("not confirmed; nothing was deleted")
        before = graph_stats(client)
        clear_database(client, batch_size=args.batch_size,
                       keep_forgotten=not args.drop_tombstones)
    tombstones = before["tombstones"]["Forgotten"]
    nodes, rels = (sum(part.values()) for part in (before["nodes"], before["relationships"]))
    if args.drop_tombstones:
        nodes, tail = nodes + tombstones, ""
    else:
        tail = (f", {tombstones:,} forget tombstones kept (--drop-tombstones deletes them)"
                if tombstones else "")
    print(f"emptied {target}: deleted {nodes:,} nodes and {rels:,} relationships "
          f"(constraints and indexes kept{tail})")
    return 0


def _writeback(args: argparse.Namespace) -> int:
    """Score every user with the run's model, then write top-k and embeddings to Neo4j."""
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from gnnrec.gnn.jobs import recommender_of_run
    from gnnrec.graph.client import GraphClient
    from gnnrec.graph.writeback import writeback

    ranker, model, meta = recommender_of_run(args.run)
    items, scores = ranker.top_k_indices(torch.arange(len(ranker.users)), args.k)
    user_emb = item_emb = None
    if not args.no_embeddings and any(True for _ in model.parameters()):
        user_emb, item_emb = ranker.user_emb.cpu().numpy(), ranker.item_emb.cpu().numpy()
    rows = len(ranker.users) * (1 if user_emb is None else 2)
    rows += 0 if item_emb is None else len(ranker.item_ids)
    with GraphClient.connect() as client, tqdm(total=rows, desc="writeback", unit="row",
                                               disable=args.no_progress, leave=False) as bar:
        summary = writeback(
            client, run=Path(args.run).name, model=meta["model"]["name"],
            user_ids=ranker.users.ext_ids, item_ids=ranker.item_ids,
            top_items=items.numpy(), top_scores=scores.numpy(),
            user_emb=user_emb, item_emb=item_emb, batch_size=args.batch_size,
            progress=bar.update,
        )
    print(json.dumps(summary))
    return 0
