"""Ray sampler workers feeding a trainer through a bounded prefetch queue.

The train view's CSR arrays (:class:`~gnnrec.gnn.views.TrainView`, plain numpy) are put in
Ray's object store **once**; every worker actor receives the reference and maps the arrays
zero-copy (read-only), then rebuilds the same batch sampler the driver holds
(:class:`~gnnrec.gnn.sampler.NodeBatchSampler` or :class:`LinkBatchSampler`). The stream
is cut into calls of ``batches_per_task`` consecutive batches, call ``j`` going to worker
``j % num_workers``; at most ``prefetch`` batches are in flight, so workers sample while
the trainer trains. Workers send numpy arrays (Int32 ids when the graph's ids fit: half
the bytes through the object store); the driver only widens them and builds the
``HeteroData``. Batches are yielded in order and each is a pure function of
``(seed, epoch, index)``: the stream is identical to the in-process one, whatever the
number of workers, and a retried batch is bit-identical to the lost one.

Placement: actors are spread over the cluster's nodes (``scheduling_strategy="SPREAD"``);
``resources`` (custom node resources, e.g. ``{"sampler": 1}``) keeps them on the nodes that
carry them. An actor on another node than the driver pulls the CSR arrays once from the
driver's object store (Ray's object transfer), then maps its node's copy.

Fault tolerance: a worker process that dies is restarted (``max_restarts``) and its
pending calls re-run (``max_task_retries``). ``GNNREC_SAMPLER_FAIL_ONCE=<path>`` in a
worker's environment (e.g. through ``runtime_env``) makes the first worker call that finds
no file at ``<path>`` create it and kill its process: fault injection for tests.

This is the only sampling module that imports ``ray``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from torch_geometric.data import HeteroData

from gnnrec.gnn.allocator import keep_freed_memory
from gnnrec.gnn.sampler import BatchSampler, SampledArrays, SamplerError

FAIL_ONCE_ENV = "GNNREC_SAMPLER_FAIL_ONCE"


@dataclass(frozen=True)
class RaySamplingParams:
    """Resources of the sampling workers (kept apart from what is sampled).

    Args:
        num_workers: sampler actors; prefetch: most batches requested from the workers and
        not yet received (whole calls, at least one call);
        batches_per_task: consecutive batches per worker call (amortises the per-call and
        per-object cost of Ray when batches take a few milliseconds);
        cpus_per_worker: Ray CPUs reserved per actor; max_restarts / max_task_retries:
        how often a dead actor is restarted and its calls retried (-1 = forever);
        runtime_env: optional Ray runtime environment of the actors;
        resources: custom Ray resources reserved per actor (only nodes that carry them
        host sampler actors); scheduling_strategy: ``"SPREAD"`` (default: over the nodes)
        or ``"DEFAULT"`` (Ray's: fill the driver's node first).
    """

    num_workers: int = 2
    prefetch: int = 4
    batches_per_task: int = 1
    cpus_per_worker: float = 1.0
    max_restarts: int = 3
    max_task_retries: int = 3
    runtime_env: dict[str, Any] | None = None
    resources: dict[str, float] | None = None
    scheduling_strategy: str = "SPREAD"


def _ship(sampler: BatchSampler, epoch: int, index: int) -> SampledArrays:
    """A batch as the worker sends it: Int32 ids when the graph's ids fit (half the bytes)."""
    a = sampler.batch_arrays(epoch, index)
    g = sampler.sampler.graph
    if any(c.table.dtype != np.int32 for c in g.csr.values()) or max(
            g.num_nodes.values(), default=0) >= 2**31:
        return a

    def small(d: dict[Any, np.ndarray]) -> dict[Any, np.ndarray]:
        return {k: v.astype(np.int32) if v.dtype == np.int64 else v for k, v in d.items()}
    return dataclasses.replace(a, n_id=small(a.n_id), edge_index=small(a.edge_index),
                               e_id=small(a.e_id), seed_local=small(a.seed_local),
                               meta=small(a.meta))


class _SamplerWorker:
    """One sampler actor: the batch sampler rebuilt around the shared CSR arrays."""

    def __init__(self, refs: list[ray.ObjectRef], cls: type[BatchSampler]) -> None:
        # Measured: in a Ray worker process every temporary above 128 KiB went back to the
        # OS on free and was page-faulted in afresh, and the same batches took 1.7x the CPU
        # of the driver process; keeping blocks up to 32 MiB, the actor samples as fast.
        keep_freed_memory()
        # The refs come wrapped in a list so Ray passes them unresolved; the driver keeps
        # them alive, so a restarted actor fetches the same objects again (zero-copy).
        graph, kwargs = ray.get(refs)
        self.sampler = cls(graph, **kwargs)

    def batches(self, keys: list[tuple[int, int]]) -> list[SampledArrays]:
        marker = os.environ.get(FAIL_ONCE_ENV)
        if marker and not Path(marker).exists():
            Path(marker).touch()
            os._exit(1)
        return [_ship(self.sampler, epoch, index) for epoch, index in keys]

    def ping(self) -> int:
        return os.getpid()

    def node(self) -> str:
        return str(ray.get_runtime_context().get_node_id())


class RaySampledBatches:
    """The batches of a :class:`NodeBatchSampler` / :class:`LinkBatchSampler`, sampled by Ray.

    ``for data in RaySampledBatches(sampler, params)`` yields, epoch by epoch, exactly what
    ``for data in sampler`` yields (same ``HeteroData`` content for the same seed). Needs
    ``ray.init()`` done by the caller. Use as a context manager, or call :meth:`close`.

    Args:
        sampler: the in-process batch sampler (holds the graph; it also assembles the
            ``HeteroData`` on the driver side).
        params: worker count, prefetch depth, CPUs and retry settings.
    """

    def __init__(self, sampler: BatchSampler, params: RaySamplingParams | None = None) -> None:
        self.sampler = sampler
        self.params = params or RaySamplingParams()
        if min(self.params.num_workers, self.params.prefetch, self.params.batches_per_task) < 1:
            raise SamplerError(f"num_workers, prefetch and batches_per_task must be >= 1, "
                               f"got {self.params}")
        if self.params.scheduling_strategy not in ("SPREAD", "DEFAULT"):
            raise SamplerError(f"scheduling_strategy must be SPREAD or DEFAULT, got "
                               f"{self.params.scheduling_strategy!r}")
        if not ray.is_initialized():
            raise SamplerError("RaySampledBatches needs a running Ray (call ray.init() first)")
        self.epoch = 0
        self.graph_ref = ray.put(sampler.sampler.graph)
        self.kwargs_ref = ray.put(sampler.rebuild_kwargs())
        p = self.params
        options: dict[str, Any] = dict(num_cpus=p.cpus_per_worker, max_restarts=p.max_restarts,
                                       max_task_retries=p.max_task_retries,
                                       scheduling_strategy=p.scheduling_strategy)
        if p.resources:
            options["resources"] = dict(p.resources)
        if p.runtime_env:
            options["runtime_env"] = p.runtime_env
        actor = ray.remote(_SamplerWorker).options(**options)
        self.workers = [actor.remote([self.graph_ref, self.kwargs_ref], type(sampler))
                        for _ in range(p.num_workers)]
        self._next_worker = 0
        self.max_in_flight = 0

    def __len__(self) -> int:
        return len(self.sampler)

    def wait_ready(self) -> list[int]:
        """Block until every worker is built; returns the workers' process ids."""
        return list(ray.get([w.ping.remote() for w in self.workers]))

    def nodes(self) -> list[str]:
        """The Ray node id of each worker actor (where it samples), in worker order."""
        return list(ray.get([w.node.remote() for w in self.workers]))

    def stream(self, keys: Iterable[tuple[int, int]]) -> Iterator[HeteroData]:
        """Batches for ``(epoch, index)`` keys, in order, with at most ``prefetch`` in flight.

        Keys are cut into calls of ``batches_per_task``; call ``j`` goes to worker
        ``j % num_workers``. A call is submitted as soon as one is taken off the queue,
        before its batches are handed to the caller, so sampling overlaps training.
        """
        todo = iter(keys)
        per_call = self.params.batches_per_task
        calls = max(1, self.params.prefetch // per_call)
        in_flight: deque[ray.ObjectRef] = deque()

        def submit() -> bool:
            chunk = list(itertools.islice(todo, per_call))
            if not chunk:
                return False
            worker = self.workers[self._next_worker % len(self.workers)]
            self._next_worker += 1
            in_flight.append(worker.batches.remote(chunk))
            self.max_in_flight = max(self.max_in_flight, len(in_flight) * per_call)
            return True

        while len(in_flight) < calls and submit():
            pass
        try:
            while in_flight:
                arrays = ray.get(in_flight.popleft())
                submit()  # keep the workers busy while the caller trains on these batches
                for a in arrays:
                    yield self.sampler.to_data(a)
        finally:
            for ref in in_flight:  # an abandoned stream drops its queued batches
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 - cancelling is best effort
                    pass

    def iter_epoch(self, epoch: int) -> Iterator[HeteroData]:
        return self.stream((epoch, i) for i in range(len(self.sampler)))

    def iter_epochs(self, num_epochs: int, start: int = 0) -> Iterator[HeteroData]:
        """Several epochs as one stream (the queue stays full across epoch boundaries)."""
        n = len(self.sampler)
        return self.stream((e, i) for e in range(start, start + num_epochs) for i in range(n))

    def __iter__(self) -> Iterator[HeteroData]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self.iter_epoch(epoch)

    def close(self) -> None:
        """Kill the worker actors (frees their CPUs)."""
        for w in self.workers:
            ray.kill(w)
        self.workers = []

    def __enter__(self) -> RaySampledBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
