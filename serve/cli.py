"""Commands ``serve`` (start the HTTP service) and ``explain`` (ask a running one).

``gnnrec recommend USER --server URL`` is registered by ``gnn/cli.py``; it calls
:func:`gnnrec.serve.client.recommend_via_server`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from gnnrec.errors import GnnrecError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sv = sub.add_parser(
        "serve", help="serve a run over HTTP with Ray Serve (recommend, explain, feedback)",
        description="Start a Ray Serve application answering /recommend, /similar, /explain "
                    "and feedback writes for a trained run; OpenAPI at http://HOST:PORT/docs.")
    sv.add_argument("--run", required=True, help="run directory (runs/NAME)")
    sv.add_argument("--replicas", type=int, default=1, help="Serve replicas (default 1)")
    sv.add_argument("--num-cpus", type=float, default=0.5, help="CPUs per replica (0.5)")
    sv.add_argument("--max-replicas-per-node", type=int, default=None,
                    help="at most this many replicas per Ray node (1: one per node)")
    sv.add_argument("--proxy-location", choices=["EveryNode", "HeadOnly"], default="EveryNode",
                    help="HTTP proxy on every Ray node (default) or on the head only")
    sv.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    sv.add_argument("--token", default=None,
                    help="API token for write endpoints (default $GNNREC_API_TOKEN; without "
                         "one, writes are refused)")
    sv.add_argument("--max-k", type=int, default=100, help="largest k a request may ask for")
    sv.add_argument("--ann-threshold", type=int, default=100_000,
                    help="catalogues of at least this many items are served through an "
                         "approximate item index (faiss IVF); 0 = always exact "
                         "(default 100000)")
    sv.add_argument("--ann-recall", type=float, default=0.95,
                    help="target recall@20 of the index against exact scoring: each replica "
                         "calibrates the lists it scans per request on 200 users' "
                         "embeddings when it loads the run (default 0.95)")
    sv.add_argument("--ann-nprobe", type=int, default=None,
                    help="scan this many index lists per request instead of calibrating")
    sv.add_argument("--max-body-bytes", type=int, default=1 << 20,
                    help="largest request body (default 1 MiB; larger: 413)")
    sv.add_argument("--no-neo4j", action="store_true",
                    help="do not use Neo4j: explanations from memory, writes memory-only")
    sv.add_argument("--forget-poll-s", type=float, default=2.0,
                    help="how often each replica asks Neo4j for users forgotten with "
                         "`gnnrec forget` (default 2 s)")
    sv.add_argument("--address", default=None,
                    help="existing Ray cluster to join (default: start a local Ray)")
    sv.add_argument("--ray-num-cpus", type=int, default=None,
                    help="CPUs of the local Ray (default: this machine's)")
    sv.set_defaults(handler=_serve)

    ex = sub.add_parser("explain", help="why an item for a user (asks a running server)")
    ex.add_argument("user")
    ex.add_argument("item")
    ex.add_argument("--server", default="http://127.0.0.1:8000", help="server URL")
    ex.add_argument("--json", action="store_true", help="print the JSON answer")
    ex.set_defaults(handler=_explain)


def _serve(args: argparse.Namespace) -> int:
    from pydantic import SecretStr, ValidationError

    from gnnrec.serve.ann import AnnOptions
    from gnnrec.serve.options import ResourceOptions, ServeOptions

    if not os.path.isfile(os.path.join(args.run, "meta.json")):
        raise GnnrecError(f"{args.run} is not a run directory (no meta.json)")
    neo4j = _neo4j_options(args.no_neo4j)
    try:
        options = ServeOptions.with_env_token(
            run=os.path.abspath(args.run),
            token=SecretStr(args.token) if args.token else None,
            max_k=args.max_k, max_body_bytes=args.max_body_bytes,
            neo4j=neo4j, ann=AnnOptions(threshold=args.ann_threshold, nprobe=args.ann_nprobe,
                                        target_recall=args.ann_recall),
            forget_poll_s=args.forget_poll_s)
        resources = ResourceOptions(replicas=args.replicas, num_cpus=args.num_cpus,
                                    max_replicas_per_node=args.max_replicas_per_node,
                                    host=args.host, port=args.port,
                                    proxy_location=args.proxy_location)
    except ValidationError as exc:
        raise GnnrecError(f"invalid option: {exc}") from exc
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from gnnrec.serve.app import run

    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=args.ray_num_cpus or os.cpu_count() or 2, include_dashboard=False)
    url = f"http://{args.host}:{args.port}"
    writes = "enabled" if options.token is not None else "disabled (no token)"
    print(f"serving {args.run} on {url}  (docs: {url}/docs; writes {writes}; "
          f"{args.replicas} replica(s)); Ctrl-C stops", file=sys.stderr)
    run(options, resources, blocking=True)
    return 0


def _neo4j_options(disabled: bool) -> Any:
    """Neo4j settings resolved here, so replicas need neither the env nor our cwd."""
    from pydantic import SecretStr

    from gnnrec.serve.options import Neo4jOptions

    if disabled:
        return Neo4jOptions(enabled=False)
    from gnnrec.graph.settings import Neo4jSettings

    try:
        s = Neo4jSettings.resolve()
    except Exception as exc:  # noqa: BLE001 - serve reads anyway; writes will answer 503
        print(f"warning: no Neo4j settings ({exc}); explanations come from memory and "
              "writes answer 503 (start Neo4j, set NEO4J_URI, or pass --no-neo4j)",
              file=sys.stderr)
        return Neo4jOptions()
    return Neo4jOptions(uri=s.uri, user=s.user, password=SecretStr(s.password),
                        database=s.database)


def _print_explanation(answer: dict[str, Any]) -> None:
    score = answer.get("score")
    print(f"{answer['user']} -> {answer['item']}  (from {answer['source']}"
          + (f", score {score:.4f}" if score is not None else "") + ")")
    if answer.get("note"):
        print(f"  note: {answer['note']}")
    sections = (
        ("friends who interacted with it", "friends",
         lambda r: f"{r['user']} ({r['items']} items)"),
        ("similar users who interacted with it", "co_users",
         lambda r: f"{r['user']} ({r['overlap']} shared items)"),
        ("tags shared with the user's history", "tags",
         lambda r: f"{r['tag']} ({r['count']} of the user's items)"),
    )
    for title, key, fmt in sections:
        rows = answer.get(key) or []
        print(f"  {title}: " + ("none" if not rows else ""))
        for row in rows:
            print(f"    {row['contribution']:.3f}  {fmt(row)}")


def _explain(args: argparse.Namespace) -> int:
    from gnnrec.serve.client import explain_via_server

    answer = explain_via_server(args.server, args.user, args.item)
    if args.json:
        print(json.dumps(answer, indent=1))
    else:
        _print_explanation(answer)
    return 0
