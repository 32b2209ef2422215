"""A real three-node Ray cluster on this host (``ray start --head`` + two ``ray start
--address``): sampler actors on other nodes than the driver, a ``ray job submit`` training
job whose two workers sit on two nodes, a whole node killed mid-job and the job resumed on
the others to the same end, and serving that keeps answering when a replica's node dies.

Nodes: ``head`` (1 CPU), ``a`` and ``b`` (1 CPU and one ``sampler`` resource each); each
carries ``node_<name>``, so every placement is checked by node. Drivers are subprocesses
(``gnnrec`` commands, ``ray job submit``, ``tests/cluster_driver.py``): this process never
joins the cluster, so the suite's shared local Ray (``ray_session``) is left alone. Killing
a node SIGKILLs its whole process group (raylet, object store, agents, workers).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_cluster import BIN, LocalRayCluster, cluster_env  # noqa: E402

from gnnrec.graph.server import free_port  # noqa: E402

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
TRAIN = ["--model", "lightgcn", "--epochs", "4", "--batch-size", "256", "--lr", "0.01",
         "--seed", "2", "--embedding-dim", "8", "--num-layers", "2", "--no-progress",
         "--workers", "2", "--placement-strategy", "STRICT_SPREAD"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    c = LocalRayCluster()
    try:
        c.start(head_cpus=1, workers={"a": (1, {"sampler": 1}), "b": (1, {"sampler": 1})})
        yield c
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The "shared storage" of the cluster (one host: any path every node sees)."""
    from gnnrec.gnn.generators import synthetic_graph
    from gnnrec.gnn.graph_file import save_graph
    from gnnrec.gnn.split import apply_split

    root = tmp_path_factory.mktemp("shared")
    save_graph(apply_split(synthetic_graph(120, 60, num_tags=6, mean_interactions=10.0,
                                           friends_per_user=3.0, seed=0), "random", seed=0),
               root / "g.pt")
    return root


def _run(cmd: list[str], cwd: Path = REPO, timeout: float = 600,
         **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=cluster_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def _meta(run: Path) -> dict:
    return json.loads((run / "meta.json").read_text())


def test_a_source_tree_imports_itself(tmp_path: Path) -> None:
    """``--working-dir .`` puts the shipped repository first on ``PYTHONPATH``: every
    ``gnnrec.*`` module then comes from it, never from an install elsewhere."""
    for name in ("gnnrec", "gnn", "graph", "ingest", "serve"):
        shutil.copytree(REPO / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    code = ("import importlib.util as u; print(*(u.find_spec(m).origin for m in "
            "('gnnrec.gnn.distributed', 'gnnrec.serve.options')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / "gnn" / "distributed.py"),
                                   str(tmp_path / "serve" / "options.py")]


def test_placement_options_are_checked(tmp_path: Path) -> None:
    from gnnrec.cli import main
    from gnnrec.gnn.distributed import DistributedError, RayTrainParams
    from gnnrec.serve.options import ResourceOptions

    RayTrainParams(placement_strategy="STRICT_SPREAD", resources_per_worker={"t": 1}).validate()
    with pytest.raises(DistributedError, match="placement_strategy"):
        RayTrainParams(placement_strategy="ANYWHERE").validate()
    with pytest.raises(DistributedError, match="custom resources"):
        RayTrainParams(resources_per_worker={"CPU": 2}).validate()
    with pytest.raises(DistributedError, match="custom resources"):
        RayTrainParams(resources_per_worker={"trainer": 0}).validate()
    for bad in ("[1]", "{}", "{\"a\": \"x\"}", "nope"):
        with pytest.raises(SystemExit):
            main(["train", "--model", "mf", "--graph", "g.pt", "--out", str(tmp_path),
                  "--worker-resources", bad])
    with pytest.raises(ValueError):
        ResourceOptions(proxy_location="Somewhere")
    with pytest.raises(ValueError):
        ResourceOptions(max_replicas_per_node=0)


def test_sampler_actors_read_the_graph_from_other_nodes(cluster: LocalRayCluster) -> None:
    done = _run([sys.executable, str(REPO / "tests" / "cluster_driver.py"), "sampling"],
                RAY_ADDRESS=cluster.address)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert cluster.name_of(got["driver"]) == "head"
    # Only a and b carry "sampler"; SPREAD puts the two actors on different nodes.
    assert sorted(cluster.name_of(n) for n in got["actors"]) == ["a", "b"]
    # The graph was put on the driver's node and pulled through the object store by both.
    assert sorted(cluster.name_of(n) for n in got["graph_copies"]) == ["a", "b", "head"]
    assert got["batches"] > 3  # each equal to the in-process batch (checked by the driver)


@dataclass
class Submitted:
    run: Path
    logs: str


@pytest.fixture(scope="module")
def submitted(cluster: LocalRayCluster, shared: Path) -> Submitted:
    """The README's command: ``ray job submit --working-dir . -- gnnrec train ...``."""
    run = shared / "runs" / "lgcn-job"
    done = _run([str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard,
                 "--working-dir", ".", "--", "gnnrec", "train", "--graph",
                 str(shared / "g.pt"), "--out", str(run), *TRAIN])
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return Submitted(run, done.stdout + done.stderr)


def test_ray_job_submit_trains_on_two_nodes(submitted: Submitted,
                                            cluster: LocalRayCluster) -> None:
    assert "succeeded" in submitted.logs and "lightgcn: best epoch" in submitted.logs
    meta = _meta(submitted.run)
    assert meta["status"] == "finished" and [r["epoch"] for r in meta["history"]] == [1, 2, 3, 4]
    dist = meta["distributed"]
    assert dist["num_workers"] == 2 and dist["resumes"] == []
    assert dist["placement_strategy"] == "STRICT_SPREAD"
    (placement,) = dist["placements"]
    nodes = [cluster.name_of(r["node"]) for r in placement]
    assert len(set(nodes)) == 2, nodes
    # Run directory and checkpoints on the shared storage, not in the job's working dir.
    assert Path(dist["storage_path"]) == submitted.run / "ray_train"
    assert {"model.pt", "last.pt", "id_maps.json"} <= {p.name for p in submitted.run.iterdir()}


def test_ray_job_submit_tunes_on_the_cluster(cluster: LocalRayCluster, shared: Path) -> None:
    """``gnnrec tune`` submitted the same way: trials on several nodes, the best
    configuration refit into a run directory on the shared storage."""
    from ray.util.state import list_actors

    out = shared / "runs" / "ials-tuned"
    done = _run([str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard,
                 "--working-dir", ".", "--", "gnnrec", "tune", "--model", "ials", "--graph",
                 str(shared / "g.pt"), "--out", str(out), "--trials", "3",
                 "--max-evaluations", "3", "--grace", "1", "--no-progress", "--json"])
    logs = done.stdout + done.stderr
    assert done.returncode == 0 and "succeeded" in logs, logs[-4000:]
    summary = json.loads(next(line for line in done.stdout.splitlines()
                              if line.startswith('{"family"')))
    assert summary["trials"] == 3 and summary["errors"] == 0
    assert summary["run"] == str(out) and summary["experiment"].startswith(str(out))
    assert summary["refit_valid"]["recall@20"] == pytest.approx(
        summary["best_valid_in_tuning"], abs=1e-9)
    assert _meta(out)["status"] == "finished" and (out / "trials.csv").is_file()
    # the trials ran on several nodes (the state API may answer partially on a loaded host:
    # ask again for a while before concluding)
    nodes: set[str] = set()
    for _ in range(30):
        trials = list_actors(address=cluster.dashboard,
                             filters=[("class_name", "=", "ImplicitFunc")],
                             raise_on_missing_output=False, limit=1000)
        nodes = {t.node_id for t in trials}
        if len(nodes) >= 2:
            break
        time.sleep(1)
    assert len(nodes) >= 2, nodes


def test_a_killed_node_and_the_job_resumes_on_the_others(
        submitted: Submitted, cluster: LocalRayCluster, shared: Path, tmp_path: Path) -> None:
    """Rank 0 pauses at epoch 3 (after epoch 2's checkpoint is registered); the test kills a
    worker node that holds a rank; the job restarts on the nodes left and ends exactly where
    the uninterrupted ``ray job submit`` run ended."""
    run, marker = shared / "runs" / "lgcn-node-loss", tmp_path / "paused.json"
    fault = {"rank": 0, "epoch": 3, "marker": str(marker), "action": "pause"}
    job = subprocess.Popen(
        [str(BIN / "gnnrec"), "train", "--graph", str(shared / "g.pt"), "--out", str(run),
         "--address", cluster.address, *TRAIN], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        env=cluster_env(GNNREC_TRAIN_FAULT=json.dumps(fault)))
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert job.poll() is None, job.stdout.read()[-4000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the job never reached epoch 3"
            time.sleep(0.2)
        first = [r["node"] for r in json.loads(marker.read_text())["placement"]]
        victim = next(n for n in map(cluster.name_of, first) if n != "head")
        processes = cluster.group_pids(victim)
        assert len(processes) >= 3  # ray start, raylet, agents, workers
        cluster.kill(victim)
        assert not cluster.group_pids(victim)  # every process of the node is gone
        out, _ = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, out[-4000:]
    meta = _meta(run)
    assert meta["status"] == "finished"
    assert meta["distributed"]["resumes"] == [2]  # from epoch 2's checkpoint
    before, after = ([cluster.name_of(r["node"]) for r in p]
                     for p in meta["distributed"]["placements"])
    assert victim in before and victim not in after and len(set(after)) == 2
    clean = _meta(submitted.run)["history"]
    assert [r["loss"] for r in meta["history"]] == [r["loss"] for r in clean]
    assert meta["best_valid"] == _meta(submitted.run)["best_valid"]
    got = torch.load(run / "last.pt", weights_only=True)["model"]
    want = torch.load(submitted.run / "last.pt", weights_only=True)["model"]
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def test_the_client_retries_reads_not_writes() -> None:
    """A read that meets a replica dying with its node (500) is asked again; a write never."""
    import http.server

    from gnnrec.serve.client import ServeClient

    seen: list[str] = []

    class Flaky(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(self.command)
            status = 500 if len(seen) in (1, 3) else 200
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"ok": true}')

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = ServeClient(f"http://127.0.0.1:{server.server_address[1]}")
        assert client.request("GET", "/health") == (200, {"ok": True})  # 500, then 200
        assert client.request("POST", "/users", {"user": "x"})[0] == 500  # not retried
        assert seen == ["GET", "GET", "POST"]
        assert ServeClient(client.url, read_retries=0).request("GET", "/health")[0] == 200
    finally:
        server.shutdown()


def _replica_nodes(cluster: LocalRayCluster) -> list[str]:
    from ray.util.state import list_actors

    actors = list_actors(address=cluster.dashboard, filters=[("state", "=", "ALIVE")],
                         raise_on_missing_output=False, limit=1000)
    return sorted(cluster.name_of(a.node_id) for a in actors
                  if a.class_name.startswith("ServeReplica:gnnrec:Recommender"))


def test_serving_keeps_answering_when_a_node_dies(submitted: Submitted,
                                                  cluster: LocalRayCluster) -> None:
    from gnnrec.serve.client import ServeClient, ServerError

    workers = [n for n, node in cluster.nodes.items() if node.alive and n != "head"]
    if not workers:  # run alone or after the node-loss test took the last one
        cluster.add_node("c", 1)
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "gnnrec"), "serve", "--run", str(submitted.run), "--replicas", "2",
         "--max-replicas-per-node", "1", "--num-cpus", "0.25", "--proxy-location", "HeadOnly",
         "--port", str(port), "--no-neo4j", "--address", cluster.address],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=cluster_env())
    client = ServeClient(f"http://127.0.0.1:{port}", timeout=10)
    user = json.loads((submitted.run / "id_maps.json").read_text())["user"][0]
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if client.health()["status"] == "ok" and len(_replica_nodes(cluster)) == 2:
                    break
            except ServerError:
                pass
            assert server.poll() is None, server.stdout.read()[-4000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "serving never came up on 2 replicas"
            time.sleep(0.5)
        nodes = _replica_nodes(cluster)
        assert len(set(nodes)) == 2, nodes  # one replica per node
        expected = client.recommend(user, 5)["items"]
        answers: list[tuple[float, str]] = []
        stop = threading.Event()

        def ask() -> None:
            while not stop.is_set():
                try:
                    ok = client.recommend(user, 5)["items"] == expected
                    answers.append((time.monotonic(), "same" if ok else "different"))
                except ServerError as exc:
                    answers.append((time.monotonic(), str(exc)))
                time.sleep(0.01)

        askers = [threading.Thread(target=ask, daemon=True) for _ in range(3)]
        for asker in askers:
            asker.start()
        time.sleep(1.0)
        victim = next(n for n in nodes if n != "head")
        killed = time.monotonic()
        cluster.kill(victim)
        dead = time.monotonic()
        time.sleep(3.0)
        stop.set()
        for asker in askers:
            asker.join(timeout=30)
        after = [a for t, a in answers if t > dead]
        print(f"{len(answers)} answers, {sum(a != 'same' for _, a in answers)} not the same; "
              f"node dead after {dead - killed:.1f} s; failures: "
              f"{[(round(t - killed, 2), a) for t, a in answers if a != 'same']}")
        assert len([a for t, a in answers if t < killed]) > 5 and len(after) > 5
        assert all(a == "same" for _, a in answers), [
            (round(t - killed, 2), a) for t, a in answers if a != "same"]
        assert victim not in _replica_nodes(cluster)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
