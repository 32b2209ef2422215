"""A Ray cluster of several nodes on this host, started as a cluster user starts one.

``ray start --head`` and ``ray start --address HEAD`` (each with ``--block``, in a session of
its own) make the nodes; every node gets a custom resource ``node_<name>`` (plus any
others asked for), so a test can tell where things run. Killing a node SIGKILLs its whole
process group: the raylet, its object store, agents and every worker on it go at once, as
when a machine dies. Stopping the cluster stops only these processes: never ``ray stop``,
which would stop every Ray session on the machine.

Each node has its own short temp dir (Unix socket paths are limited to 107 bytes) and
free ports (GCS, dashboard, client server, agents). Node death is detected after the
GCS health checks fail: ``RAY_health_check_*`` below make that about 2 s instead of 15 s.

No Ray driver runs in the calling process: the cluster's state comes from the dashboard's
state API (``ray.util.state`` with an explicit address, plain HTTP), so a test session's
own local Ray (``ray_session``) is never disturbed. Drivers are subprocesses.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gnnrec.graph.server import free_port

BIN = Path(sys.executable).parent

# Settings of the whole cluster (every process started by a raylet inherits them).
CLUSTER_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    # Ray Train V2's controller polls workers every 2 s by default; each report waits on it.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # Ray's memory monitor kills workers when the HOST is at 95 % of its memory; with three
    # nodes on one shared host it measures everything else running there, not the node.
    "RAY_memory_monitor_refresh_ms": "0",
}


def cluster_env(**extra: str) -> dict[str, str]:
    """This process's environment for cluster processes and drivers: the venv's ``bin``
    first on ``PATH`` (the nodes' ``gnnrec`` and ``python``), no inherited ``RAY_ADDRESS``."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(CLUSTER_ENV)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@dataclass
class RayNode:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    node_id: str = ""
    alive: bool = True


@dataclass
class LocalRayCluster:
    """Head plus worker nodes on this host; use :meth:`start`, then :meth:`shutdown`."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gr-")))
    object_store_bytes: int = 80 * 1024 * 1024
    nodes: dict[str, RayNode] = field(default_factory=dict)
    gcs_port: int = 0
    dashboard_port: int = 0

    @property
    def address(self) -> str:
        """What drivers pass to ``ray.init`` / ``--address`` / ``RAY_ADDRESS``."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        """What ``ray job submit --address`` takes."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _ray_start(self, name: str, args: list[str], num_cpus: float,
                   resources: dict[str, float] | None) -> None:
        import json

        res = {f"node_{name}": 1.0, **(resources or {})}
        temp = self.root / name
        temp.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        cmd = [str(BIN / "ray"), "start", "--block", *args, "--num-cpus", str(num_cpus),
               "--resources", json.dumps(res), "--temp-dir", str(temp),
               "--object-store-memory", str(self.object_store_bytes),
               "--node-ip-address", "127.0.0.1",
               "--dashboard-agent-listen-port", str(free_port()),
               "--min-worker-port", "0", "--max-worker-port", "0"]
        with log.open("wb") as out:
            # RAY_ADDRESS: Ray's own helpers that look for "the" cluster (e.g. Ray Train's
            # placement-group cleaner) must find this one, not another Ray on the host.
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    env=cluster_env(RAY_ADDRESS=self.address),
                                    start_new_session=True)
        self.nodes[name] = RayNode(name, proc, log)

    def start(self, head_cpus: float, workers: dict[str, tuple[float, dict[str, float]]],
              head_resources: dict[str, float] | None = None, timeout: float = 120) -> None:
        """``ray start --head`` (with the dashboard: jobs and the state API), then one
        ``ray start --address`` per worker, all waited for."""
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self._ray_start("head", ["--head", "--port", str(self.gcs_port),
                                 "--dashboard-port", str(self.dashboard_port),
                                 "--dashboard-host", "127.0.0.1", "--include-dashboard", "true",
                                 "--ray-client-server-port", str(free_port())],
                        head_cpus, head_resources)
        self._wait_alive({"head"}, timeout)
        for name, (cpus, resources) in workers.items():
            self.add_node(name, cpus, resources, wait=False)
        self._wait_alive(set(workers), timeout)

    def add_node(self, name: str, num_cpus: float, resources: dict[str, float] | None = None,
                 wait: bool = True, timeout: float = 120) -> RayNode:
        if name in self.nodes and self.nodes[name].alive:
            raise ValueError(f"node {name} is already running")
        self._ray_start(name, ["--address", self.address], num_cpus, resources)
        if wait:
            self._wait_alive({name}, timeout)
        return self.nodes[name]

    def state(self) -> list[Any]:
        """The cluster's nodes as the state API lists them (alive and dead)."""
        from ray.util.state import list_nodes

        return list_nodes(address=self.dashboard, detail=True, raise_on_missing_output=False)

    def name_of(self, node_id: str) -> str:
        for node in self.nodes.values():
            if node.node_id == node_id:
                return node.name
        raise KeyError(node_id)

    def _wait_alive(self, names: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for name in names:
                code = self.nodes[name].process.poll()
                if code is not None:
                    raise RuntimeError(f"ray start for node {name} exited with {code}:\n"
                                       + self.nodes[name].log.read_text()[-3000:])
            try:
                found = {self._name(n): n.node_id for n in self.state()
                         if n.state == "ALIVE"}
            except Exception:  # noqa: BLE001 - the dashboard is still starting
                found = {}
            if names <= found.keys():
                for name in names:
                    self.nodes[name].node_id = found[name]
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes {sorted(names - found.keys())} not alive after "
                                   f"{timeout:.0f} s (logs in {self.root})")
            time.sleep(0.5)

    @staticmethod
    def _name(node: Any) -> str | None:
        names = [k[5:] for k in (node.resources_total or {}) if k.startswith("node_")]
        return names[0] if names else None

    def kill(self, name: str, timeout: float = 60) -> None:
        """SIGKILL every process of node ``name`` and wait until the cluster sees it dead."""
        node = self.nodes[name]
        if name == "head":
            raise ValueError("killing the head kills the cluster (no GCS fault tolerance)")
        os.killpg(node.process.pid, signal.SIGKILL)
        node.process.wait(timeout=30)
        node.alive = False
        deadline = time.monotonic() + timeout
        while not any(n.node_id == node.node_id and n.state == "DEAD" for n in self.state()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {name} not seen dead after {timeout:.0f} s")
            time.sleep(0.2)

    def group_pids(self, name: str) -> set[int]:
        """Running processes in node ``name``'s process group (its raylet, agents, workers);
        zombies (dead, not reaped yet by whoever inherited them) are not counted."""
        pgid = str(self.nodes[name].process.pid)
        pids = set()
        for entry in Path("/proc").iterdir():
            try:
                # /proc/PID/stat: "pid (comm) state ppid pgrp ..."; comm may hold spaces.
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[2] == pgid and fields[0] != "Z":
                pids.add(int(entry.name))
        return pids

    def shutdown(self, grace: float = 15) -> None:
        """Stop this cluster's processes only: SIGTERM each ``ray start --block`` (it stops
        its node), then SIGKILL whatever is left of the process groups."""
        live = [n for n in self.nodes.values() if n.process.poll() is None]
        for node in sorted(live, key=lambda n: n.name == "head"):  # workers first
            node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for node in live:
            try:
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for node in self.nodes.values():
            try:
                os.killpg(node.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if node.process.poll() is None:
                node.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)
