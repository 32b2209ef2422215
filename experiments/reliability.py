"""Fault cases at scale: kill -9 of Neo4j and of the ingest CLI, Neo4j down while serving.

    python -m experiments.reliability --rows 1000000 --writes 5000 \\
        --json experiments/results/reliability.json

Every case runs against a Neo4j of its own (started here under a temporary home, on free
ports, and killed with SIGKILL on purpose), through the product's own commands:

* ``ingest_kill_neo4j``: ``gnnrec ingest`` of ``--rows`` distinct interactions; Neo4j is
  killed when a third of them is committed, restarted, the same ingest run again;
* ``ingest_kill_cli``: the same, killing the ingest process instead of Neo4j;
* ``feedback_kill_neo4j``: ``--writes`` concurrent ``POST /interactions`` bodies through the
  serving service (``RecommenderService``, as each replica runs it); Neo4j is killed after a
  third are acknowledged; while it is down reads are served and writes refused (503); after a
  restart every acknowledged write must be in Neo4j, once.

The JSON table has one row per case: ``writes_acknowledged`` (rows the final ingest
reported loaded, or feedback writes answered 200), ``writes_found`` (in Neo4j afterwards),
``duplicates`` ((user, item) pairs with more than one relationship), ``rejects``, ``lost``
(acknowledged but not found: must be 0) and the seconds taken. ``tests/test_faults.py``
runs the same cases small, from the same functions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gnnrec.graph.client import GraphClient
from gnnrec.graph.load import graph_stats
from gnnrec.graph.server import LocalNeo4j, free_port
from gnnrec.graph.settings import Neo4jSettings

START_TIMEOUT = 600.0  # seconds a (re)start may take: recovery after kill -9, a loaded host


# -- the server under test -----------------------------------------------------------------------
def fault_server(home: Path, extra_settings: dict[str, str] | None = None) -> LocalNeo4j:
    """A local Neo4j of its own under ``home`` (free ports), not started."""
    from gnnrec.graph.settings import gnnrec_home

    os.environ.setdefault("GNNREC_NEO4J_LIB", str(gnnrec_home() / "neo4j-lib"))
    return LocalNeo4j(home=home, bolt_port=free_port(), http_port=free_port(),
                      extra_settings=extra_settings)


def settings_of(server: LocalNeo4j) -> Neo4jSettings:
    return Neo4jSettings(server.bolt_uri, "neo4j", server.password())


def env_of(server: LocalNeo4j) -> dict[str, str]:
    return {**os.environ, "NEO4J_URI": server.bolt_uri, "NEO4J_USER": "neo4j",
            "NEO4J_PASSWORD": server.password()}


def kill_neo4j(server: LocalNeo4j) -> None:
    """SIGKILL the server and wait until it is gone."""
    pid = server.pid()
    if pid is None:
        raise RuntimeError("Neo4j is not running")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while server.pid() is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    if server.pid() is not None:
        raise RuntimeError(f"Neo4j (pid {pid}) survived SIGKILL for 30 s")


# -- ingest cases ----------------------------------------------------------------------------------
def interactions_csv(path: Path, rows: int, seed: int = 0) -> tuple[Path, int, int]:
    """``rows`` distinct (user, item) pairs as CSV; returns the path, pairs and users."""
    rng = np.random.default_rng(seed)
    users = max(10, rows // 10)
    items = max(10, rows // 20)
    codes = rng.choice(users * items, size=rows, replace=False)
    frame = pd.DataFrame({"user": [f"u{c // items}" for c in codes],
                          "item": [f"i{c % items}" for c in codes],
                          "weight": rng.integers(1, 9, size=rows)})
    frame.to_csv(path, index=False)
    return path, rows, int(frame["user"].nunique())


def ingest_cli(path: Path, server: LocalNeo4j, batch_size: int = 500) -> subprocess.Popen[str]:
    """``gnnrec ingest --interactions path`` in a child process, against ``server``."""
    return subprocess.Popen(
        [sys.executable, "-m", "gnnrec.cli", "ingest", "--interactions", str(path),
         "--batch-size", str(batch_size), "--no-progress",
         "--reject-file", str(path) + ".rejects"],
        env=env_of(server), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_interactions(client: GraphClient, proc: subprocess.Popen[str], at_least: int,
                          timeout: float = 600) -> int:
    """Poll until ``at_least`` interactions are committed while ``proc`` still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = int(graph_stats(client)["relationships"]["INTERACTED"])
        if n >= at_least:
            return n
        if proc.poll() is not None:
            raise RuntimeError(f"the ingest ended before the fault: {proc.communicate()}")
        time.sleep(0.05)
    raise RuntimeError(f"the ingest committed fewer than {at_least} rows in {timeout:.0f} s")


def duplicate_pairs(client: GraphClient, prefix: str = "") -> int:
    """(user, item) pairs holding more than one INTERACTED relationship."""
    rows = client.read("MATCH (u:User)-[r:INTERACTED]->(i:Item) WHERE u.id STARTS WITH $p "
                       "WITH u, i, count(r) AS n WHERE n > 1 RETURN count(*) AS n", {"p": prefix})
    return int(rows[0]["n"])


def ingest_case(server: LocalNeo4j, path: Path, pairs: int, users: int, fault: str,
                batch_size: int = 500) -> dict[str, Any]:
    """Ingest, inject ``fault`` ("neo4j" or "cli") when a third is committed, restart, rerun."""
    from gnnrec.graph.schema import clear_database, ensure_schema

    started = time.perf_counter()
    with GraphClient(settings_of(server)) as client:
        clear_database(client, batch_size=1_000)
        ensure_schema(client)
        proc = ingest_cli(path, server, batch_size)
        at_fault = wait_for_interactions(client, proc, max(1, pairs // 3))
    if fault == "neo4j":
        kill_neo4j(server)
    else:
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    first_error = err.strip().splitlines()
    if fault == "neo4j":
        server.start(timeout=START_TIMEOUT)
    rerun = ingest_cli(path, server, batch_size)
    out, err = rerun.communicate(timeout=3_600)
    if rerun.returncode != 0:
        raise RuntimeError(f"the re-run failed: {err}")
    summary = json.loads(out)
    with GraphClient(settings_of(server)) as client:
        stats = graph_stats(client)
        found = int(stats["relationships"]["INTERACTED"])
        dups = duplicate_pairs(client)
    return {
        "case": f"ingest_kill_{fault}", "rows": pairs, "committed_at_fault": at_fault,
        "fault_exit_code": proc.returncode, "fault_message_lines": len(first_error),
        "writes_acknowledged": summary["loaded"], "writes_found": found,
        "users_expected": users, "users_found": int(stats["nodes"]["User"]),
        "duplicates": dups, "rejects": summary["rejected"],
        "lost": max(0, summary["loaded"] - found),
        "seconds": round(time.perf_counter() - started, 1),
    }


# -- feedback case ---------------------------------------------------------------------------------
def feedback_case(server: LocalNeo4j, run: Path, writes: int, concurrency: int = 8,
                  kill_after: int | None = None) -> dict[str, Any]:
    """``writes`` feedback writes through the serving service; Neo4j killed mid-burst."""
    from pydantic import SecretStr

    from gnnrec.serve.errors import Neo4jUnavailableError
    from gnnrec.serve.options import Neo4jOptions, ServeOptions
    from gnnrec.serve.schemas import InteractionIn
    from gnnrec.serve.service import RecommenderService

    started = time.perf_counter()
    s = settings_of(server)
    service = RecommenderService(ServeOptions(
        run=str(run), token=SecretStr("t"),
        neo4j=Neo4jOptions(uri=s.uri, user=s.user, password=SecretStr(s.password))))
    items = [f"i{k}" for k in range(service.state.num_items)]  # the synthetic graph's ids
    kill_after = writes // 3 if kill_after is None else kill_after
    acknowledged: list[tuple[str, str]] = []
    refused: list[tuple[str, str]] = []
    killed = False

    async def burst() -> None:
        nonlocal killed
        queue: asyncio.Queue[int] = asyncio.Queue()
        for k in range(writes):
            queue.put_nowait(k)

        async def worker() -> None:
            nonlocal killed
            while not queue.empty():
                k = queue.get_nowait()
                pair = (f"burst-{k}", items[k % len(items)])
                try:
                    await service.record_interactions([InteractionIn(user=pair[0],
                                                                     item=pair[1])])
                except Neo4jUnavailableError:
                    refused.append(pair)
                else:
                    acknowledged.append(pair)
                if len(acknowledged) >= kill_after and not killed:
                    killed = True
                    await asyncio.to_thread(kill_neo4j, server)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    try:
        asyncio.run(burst())
        user = service.state.user_ids()[1]
        before = [x.id for x in service.state.recommend(user, 5).items]
        down_refused = 0
        try:  # down: reads from memory, writes refused, nothing folded in
            asyncio.run(service.record_interactions([InteractionIn(user=user, item=items[0])]))
        except Neo4jUnavailableError:
            down_refused = 1
        reads_ok = [x.id for x in service.state.recommend(user, 5).items] == before
        folded_refused = sum(service.state.has_user(u) for u, _ in refused)
        server.start(timeout=START_TIMEOUT)
        with GraphClient(s) as client:
            stored = {(r["u"], r["i"]) for r in client.read(
                "MATCH (u:User)-[:INTERACTED]->(i:Item) WHERE u.id STARTS WITH 'burst-' "
                "RETURN u.id AS u, i.id AS i")}
            dups = duplicate_pairs(client, "burst-")
        asyncio.run(service.record_interactions([InteractionIn(user="after-restart",
                                                               item=items[0])]))
        writes_after_restart = service.state.has_user("after-restart")
    finally:
        service.close()
    return {
        "case": "feedback_kill_neo4j", "rows": writes, "concurrency": concurrency,
        "writes_acknowledged": len(acknowledged), "writes_refused_503": len(refused),
        "writes_found": len(set(acknowledged) & stored),
        "refused_but_committed": len(set(refused) & stored),
        "refused_folded_in": folded_refused, "duplicates": dups, "rejects": 0,
        "lost": len(set(acknowledged) - stored),
        "reads_served_while_down": reads_ok, "write_refused_while_down": bool(down_refused),
        "writes_taken_after_restart": writes_after_restart,
        "seconds": round(time.perf_counter() - started, 1),
    }


def make_feedback_run(path: Path) -> Path:
    """A small real run directory (untrained LightGCN on a synthetic graph) to serve."""
    from gnnrec.gnn.generators import synthetic_graph
    from gnnrec.gnn.graph_file import save_graph
    from gnnrec.gnn.run import Run, build_model, final_embeddings
    from gnnrec.gnn.split import apply_split

    graph = apply_split(synthetic_graph(200, 100, num_tags=6, seed=0), seed=0)
    graph_path = save_graph(graph, path.parent / f"{path.name}.graph.pt")
    model = build_model("lightgcn", graph, {"embedding_dim": 8, "num_layers": 2})
    run = Run.create(path, model_name="lightgcn", model=model, graph=graph,
                     graph_path=graph_path, train_config={})
    run.save_model(model.state_dict())
    run.save_embeddings(*final_embeddings(model, graph))
    run.update_meta(status="finished", metrics={})
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="interactions to ingest")
    parser.add_argument("--batch-size", type=int, default=5_000)
    parser.add_argument("--writes", type=int, default=5_000, help="feedback writes")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--cases", nargs="+", default=["ingest_kill_neo4j", "ingest_kill_cli",
                                                        "feedback_kill_neo4j"])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--append", action="store_true",
                        help="keep the --json file's rows of other cases (run cases apart)")
    args = parser.parse_args(argv)
    cases: dict[str, Callable[[LocalNeo4j, Path], dict[str, Any]]] = {}
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gnnrec-reliability-") as tmp:
        work = Path(tmp)
        server = fault_server(work / "home")
        server.start(timeout=START_TIMEOUT)
        try:
            path, pairs, users = interactions_csv(work / "interactions.csv", args.rows)
            cases = {
                "ingest_kill_neo4j": lambda s, _: ingest_case(s, path, pairs, users, "neo4j",
                                                              args.batch_size),
                "ingest_kill_cli": lambda s, _: ingest_case(s, path, pairs, users, "cli",
                                                            args.batch_size),
                "feedback_kill_neo4j": lambda s, w: feedback_case(
                    s, make_feedback_run(w / "run"), args.writes, args.concurrency),
            }
            for name in args.cases:
                if server.pid() is None:
                    server.start(timeout=START_TIMEOUT)
                row = cases[name](server, work)
                print(json.dumps(row), flush=True)
                results.append(row)
        finally:
            server.stop()
    command = " ".join(["python -m experiments.reliability", *(argv or sys.argv[1:])])
    for row in results:
        row.update(command=command, load_average=[round(x, 1) for x in os.getloadavg()])
    if args.append and args.json and args.json.exists():
        ran = {row["case"] for row in results}
        kept = [r for r in json.loads(args.json.read_text())["cases"] if r["case"] not in ran]
        results = kept + results
    report = {"cases": results, "cpus": os.cpu_count()}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'case':<22}{'acknowledged':>14}{'found':>10}{'lost':>6}{'duplicates':>12}"
          f"{'rejects':>9}")
    for row in results:
        print(f"{row['case']:<22}{row['writes_acknowledged']:>14,}{row['writes_found']:>10,}"
              f"{row['lost']:>6}{row['duplicates']:>12}{row['rejects']:>9}")
    return 0 if all(row["lost"] == 0 and row["duplicates"] == 0 for row in results) else 1


if __name__ == "__main__":
    sys.exit(main())
