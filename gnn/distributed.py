"""Distributed training with Ray Train V2 (``TorchTrainer``, DDP on gloo for CPU, nccl for GPU).

``train_distributed`` runs ``num_workers`` Ray Train workers. Each builds the model for the
train view (shipped once through Ray's object store: numpy arrays, read zero-copy) and runs
the same loop as a single process, :func:`gnnrec.gnn.train.fit`, with a
:class:`WorkerSession`: the ranking step wrapped in DDP (``ray.train.torch.prepare_model``),
training on ITS SHARD of every global batch (:mod:`gnnrec.gnn.batches`):

* full-graph models: epoch ``e`` shuffles the train ``(user, pos)`` edges with a seed all
  workers share; of each global batch of ``batch_size`` edges, worker ``r`` of ``W`` takes
  every ``W``-th edge from ``r`` (``get_world_rank()``). DDP averages the gradients, so a
  step sees the same global batch as the single-process loop (``--batch-size`` stays the
  GLOBAL batch). Every worker still propagates over the whole graph at each step.
* mini-batch (``minibatch``, :mod:`gnnrec.gnn.minibatch`): link batches of
  ``batch_size / W`` positives; worker ``r`` samples batch indices ``r, r + W, ...`` (the
  last ``< W`` batches of an epoch are skipped so every worker makes the same number of
  steps).

Rank 0 evaluates on valid every ``eval_every`` epochs and broadcasts the metric (every
worker takes the same early-stopping decision); all workers call ``ray.train.report`` and
rank 0 attaches a checkpoint (``state.pt``: model, optimiser, epoch, early-stopping state,
history; ``best.pt``: the best weights so far). A restarted worker group
(``FailureConfig(max_failures)``) resumes from ``ray.train.get_checkpoint()``: after a worker
process dies, and after a whole node dies (its raylet with it; Ray declares the node dead
after its health checks fail), the group is placed again on the nodes still alive. For
that, checkpoints (``storage_path``) must be on storage every node reaches (a shared file
system or ``s3://``); the train view travels through the object store from the driver's
node.

Placement: ``placement_strategy`` is the worker group's placement-group strategy (``PACK``
by default; ``STRICT_SPREAD`` puts every worker on its own node) and ``resources_per_worker``
adds custom node resources to each worker's reservation. Every attempt of the job records
the node of each rank (``meta.json: distributed.placements``, one list per attempt that
reported a checkpoint). When the job
ends the driver writes the best model, ``last.pt`` and meta into the run directory with the
same layout as single-process training (each file atomically, meta last), so
``gnnrec evaluate / recommend / writeback / serve`` read it unchanged, and ``--resume`` works
with or without ``--workers``.

Fault injection for tests: ``GNNREC_TRAIN_FAULT`` (JSON, read by the driver) or the
``fault`` argument: ``{"rank", "epoch", "marker", "action"}``, where ``action`` ``"kill"``
SIGKILLs that worker once and ``"pause"`` writes ``marker`` (JSON: rank, pid, placement)
and waits there (up to ``pause_s``, default 300 s) so that a test can kill a node mid-job.

The model's inputs (sparse adjacencies, features) are built from the view by every worker
and passed to ``forward``; buffers derived from the hyper-parameters are excluded from DDP's
broadcast (``_ddp_params_and_buffers_to_ignore``): there is nothing to synchronise.

This is the only training module that imports ``ray`` (with
:mod:`gnnrec.gnn.distributed_sampling`, used here for ``--sampler ray``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData

from gnnrec.errors import GnnrecError
from gnnrec.gnn.batches import FullBatches, SampledBatches, derived_seed, fresh_generators
from gnnrec.gnn.minibatch import BatchStream, MiniBatchConfig, link_sampler
from gnnrec.gnn.run import Run, build_model, final_embeddings
from gnnrec.gnn.train import (
    EarlyStopping,
    Session,
    TrainConfig,
    TrainingError,
    TrainResult,
    fit,
    seed_everything,
)
from gnnrec.gnn.views import TrainView

STATE_FILE, BEST_FILE = "state.pt", "best.pt"
FAULT_ENV = "GNNREC_TRAIN_FAULT"
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class DistributedError(GnnrecError):
    """The Ray Train job cannot start or did not finish."""


@dataclass(frozen=True)
class RayTrainParams:
    """Resources of a Ray Train job (model and optimisation settings live elsewhere).

    Args:
        num_workers: training workers (DDP ranks).
        gpus_per_worker: GPUs per worker (> 0: CUDA + nccl, else CPU + gloo).
        cpus_per_worker: CPUs per worker (default: the cluster's CPUs / workers, >= 1);
            also the worker's torch threads.
        address: Ray cluster to join (``auto``, ``ray://host:10001``; default
            ``RAY_ADDRESS``, else a local Ray with every CPU of this machine).
        storage_path: where Ray Train keeps checkpoints (default ``RUN/ray_train``; on a
            multi-node cluster a path every node sees, e.g. NFS or ``s3://bucket/dir``).
        max_failures: worker-group restarts from the last checkpoint before giving up
            (a worker process or a whole node lost counts one).
        placement_strategy: placement-group strategy of the workers (``PACK``, ``SPREAD``,
            ``STRICT_PACK``, ``STRICT_SPREAD``: one worker per node).
        resources_per_worker: custom Ray resources each worker reserves besides its CPUs
            and GPUs (e.g. ``{"trainer": 1}``: only nodes started with that resource).
    """

    num_workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None
    address: str | None = None
    storage_path: str | None = None
    max_failures: int = 2
    placement_strategy: str = "PACK"
    resources_per_worker: dict[str, float] | None = None

    def validate(self) -> None:
        if self.num_workers < 1 or self.gpus_per_worker < 0 or self.max_failures < -1:
            raise DistributedError(f"bad Ray Train settings {self}")
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise DistributedError(f"placement_strategy must be one of "
                                   f"{', '.join(PLACEMENT_STRATEGIES)}, got "
                                   f"{self.placement_strategy!r}")
        bad = {k: v for k, v in (self.resources_per_worker or {}).items()
               if k in ("CPU", "GPU") or not v > 0}
        if bad:
            raise DistributedError(f"resources_per_worker takes custom resources > 0 (CPUs and "
                                   f"GPUs have their own settings), got {bad}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise DistributedError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")


def init_ray(address: str | None = None) -> None:
    """Join ``address`` / ``RAY_ADDRESS`` or start a local Ray (no dashboard, no usage stats)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False)


@contextmanager
def ray_batches(sampler: Any, workers: int, prefetch: int, address: str | None = None,
                resources: dict[str, float] | None = None) -> Iterator[BatchStream]:
    """``epoch -> batches`` of ``sampler`` (a ``LinkBatchSampler``) sampled by Ray actors
    (spread over the cluster's nodes; ``resources``: custom resources per actor)."""
    from gnnrec.gnn.distributed_sampling import RaySampledBatches, RaySamplingParams

    init_ray(address)
    with RaySampledBatches(sampler, RaySamplingParams(num_workers=workers, prefetch=prefetch,
                                                      resources=resources)) as remote:
        yield remote.iter_epoch


def _load_dir(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Tensor] | None]:
    state = torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)
    best = Path(path) / BEST_FILE
    return state, (torch.load(best, map_location="cpu", weights_only=True)
                   if best.is_file() else None)


def _maybe_fail(fault: dict[str, Any] | None, rank: int, epoch: int,
                placement: list[dict[str, str]]) -> None:
    """Test hook: at ``fault['epoch']`` on ``fault['rank']``, once (the first attempt creates
    ``fault['marker']``; a restarted worker finds it), SIGKILL this worker (``action``
    ``"kill"``) or wait there (``"pause"``) for a test to kill a node. It first waits until
    Ray Train has registered every checkpoint reported so far, so the job deterministically
    resumes from the previous epoch's checkpoint."""
    if not fault or rank != fault["rank"] or epoch != fault["epoch"]:
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    import ray.train

    ray.train.get_all_reported_checkpoints(timeout_s=60)
    marker.parent.mkdir(parents=True, exist_ok=True)
    if fault.get("action", "kill") == "pause":
        tmp = marker.with_name(marker.name + ".tmp")
        tmp.write_text(json.dumps({"rank": rank, "epoch": epoch, "pid": os.getpid(),
                                   "placement": placement}))
        tmp.replace(marker)
        time.sleep(float(fault.get("pause_s", 300)))
        return
    marker.write_text(f"killed rank {rank} at epoch {epoch}, pid {os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def _placement(world: int) -> list[dict[str, str]]:
    """Where every rank of this worker group runs: ``[{"node": id, "ip": address}]``."""
    ctx = ray.get_runtime_context()
    here = {"node": str(ctx.get_node_id()), "ip": ray.util.get_node_ip_address()}
    if world == 1:
        return [here]
    everyone: list[Any] = [None] * world
    torch.distributed.all_gather_object(everyone, here)
    return everyone


class WorkerSession(Session):
    """:func:`~gnnrec.gnn.train.fit` on one Ray Train worker: the step wrapped in DDP,
    dropout seeded per epoch and rank, rank 0 evaluating (the metric is broadcast, so every
    rank takes the same early-stopping decision), checkpoints reported to Ray Train, and a
    start from the job's last checkpoint or the run state the driver passed."""

    desc = "train (Ray Train worker)"

    def __init__(self, cfg: dict[str, Any], rank: int, world: int) -> None:
        super().__init__(None, progress=False)
        self.cfg, self.rank, self.world = cfg, rank, world
        self.where, self.extra = f" on worker {rank}", {"workers": world}
        self.keeps_best = rank == 0
        self.resumes: list[int] = []  # epochs the job (re)started from, across restarts
        self.placements: list[list[dict[str, str]]] = []  # nodes of the ranks, per attempt
        self._device: torch.device | None = None

    def device(self, config: TrainConfig) -> torch.device:
        import ray.train.torch

        self._device = ray.train.torch.get_device()
        return self._device

    def wrap(self, step: nn.Module) -> nn.Module:
        import ray.train.torch

        step._ddp_params_and_buffers_to_ignore = [n for n, _ in step.named_buffers()]  # type: ignore[assignment]
        return ray.train.torch.prepare_model(step)

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer | None,
              stopping: EarlyStopping, batches: Any, config: TrainConfig) -> int:
        """The newer of the job's last checkpoint and the state the driver passed."""
        import ray.train

        candidates: list[tuple[dict[str, Any], dict[str, Tensor] | None]] = []
        if (ckpt := ray.train.get_checkpoint()) is not None:
            with ckpt.as_directory() as d:
                candidates.append(_load_dir(d))
        if self.cfg["initial"] is not None:
            candidates.append(ray.get(self.cfg["initial"][0]))
        self.placements = [_placement(self.world)]
        if not candidates:
            return 1
        state, best_state = max(candidates, key=lambda c: int(c[0]["epoch"]))
        self.resumes = [*state.get("resumes", []), int(state["epoch"])]
        self.placements = [*state.get("placements", []), *self.placements]
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        return stopping.load_state(state, best_state)

    def begin_epoch(self, epoch: int) -> None:
        _maybe_fail(self.cfg["fault"], self.rank, epoch, self.placements[-1])
        seed = int(self.cfg["train_config"]["seed"])
        torch.manual_seed(derived_seed(seed, epoch, self.rank, 2))  # dropout etc., per rank

    def validate(self, evaluate: Callable[[], dict[str, float]],
                 metric: str) -> tuple[float, dict[str, float] | None]:
        value, metrics = torch.zeros(1, dtype=torch.float64), None
        if self.rank == 0:
            metrics = evaluate()
            value[0] = metrics[metric]
        if self.world > 1:  # every rank takes rank 0's early-stopping decision
            value = value.to(self._device)
            torch.distributed.broadcast(value, 0)
        return float(value[0]), metrics

    def checkpoint(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                   stopping: EarlyStopping, stopped: str, rng: dict[str, Any],
                   embeddings: tuple[Tensor, Tensor] | None = None) -> None:
        import ray.train

        record = stopping.history[-1]
        report = {"epoch": epoch, "loss": record["loss"], "seconds": record["seconds"]}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.rank == 0:
                report.update(record.get("valid", {}))  # none in a final fit
                torch.save({"epoch": epoch, "model": model.state_dict(),
                            "optimizer": optimizer.state_dict() if optimizer else {},
                            **stopping.state(), "stopped": stopped, "resumes": self.resumes,
                            "placements": self.placements},
                           Path(tmp) / STATE_FILE)
                if stopping.best_state is not None:
                    torch.save(stopping.best_state, Path(tmp) / BEST_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(report, checkpoint=checkpoint)

    def finish(self, model: nn.Module, stopping: EarlyStopping, stopped: str) -> TrainResult:
        # The driver writes the run directory from the last reported checkpoint.
        return TrainResult(stopping.best_epoch, {}, stopping.history, stopped)


def _worker_loop(cfg: dict[str, Any]) -> None:
    """The per-worker training function (runs inside a Ray Train worker)."""
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    view: TrainView = ray.get(cfg["view"][0])
    config = TrainConfig.from_dict(cfg["train_config"])
    mb = MiniBatchConfig(**cfg["minibatch"]) if cfg["minibatch"] else None
    if mb is not None:
        mb.apply_memory()
    seed_everything(config.seed, config.deterministic)
    model = build_model(cfg["model_name"], view, cfg["hyper"])

    def shards(inputs: Any, device: torch.device) -> Any:
        if mb is None:
            return FullBatches(view, config, inputs, device, shard=(rank, world))
        sampler = link_sampler(view, model, config, mb,
                               batch_size=max(1, config.batch_size // world))
        steps = len(sampler) // world  # every worker makes the same number of steps

        def stream(epoch: int) -> Iterator[HeteroData]:
            return (sampler.batch(epoch, j) for j in range(rank, steps * world, world))

        return SampledBatches(model, inputs, stream, config.seed, device)

    fit(model, view, config, batches=shards, session=WorkerSession(cfg, rank, world),
        sampled=mb is not None)


def _cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", os.cpu_count() or 1))


def _check_v2() -> None:
    if os.environ.get("RAY_TRAIN_V2_ENABLED", "1").strip().lower() in ("0", "false", "no"):
        raise DistributedError("gnnrec's distributed training uses Ray Train V2: unset "
                               "RAY_TRAIN_V2_ENABLED=0 (V2 is the default since Ray 2.51)")


def train_distributed(model: nn.Module, graph: HeteroData | TrainView, config: TrainConfig,
                      params: RayTrainParams, *, run: Run,
                      minibatch: MiniBatchConfig | None = None, resume: bool = False,
                      fault: dict[str, Any] | None = None) -> TrainResult:
    """Train ``model`` (as built for ``run``) on ``params.num_workers`` Ray Train workers.

    Every worker rebuilds the model from the run's model name and ``model.config()`` (the
    same initial weights: seeded, then DDP broadcasts rank 0's). ``run`` (created by the
    caller, as for :func:`gnnrec.gnn.train.train`) receives the best model, ``last.pt`` and
    meta when the job ends; on return ``model`` holds the best weights (eval mode).
    ``resume`` continues ``run``: from the Ray Train storage of its last distributed job
    when that holds a newer checkpoint, else from its ``last.pt``. ``fault`` (tests only):
    ``{"rank", "epoch", "marker"}`` kills that worker once with SIGKILL.
    """
    _check_v2()
    params.validate()
    if fault is None and os.environ.get(FAULT_ENV):
        fault = json.loads(os.environ[FAULT_ENV])
    config.validate()
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if "v2" not in TorchTrainer.__module__:
        raise DistributedError(f"expected Ray Train V2's TorchTrainer, got "
                               f"{TorchTrainer.__module__}")
    meta = run.meta()
    model_name = meta["model"]["name"]
    if not getattr(model, "trainable", True) or not any(p.requires_grad
                                                       for p in model.parameters()):
        raise DistributedError(f"{model_name} has nothing to train: run it without --workers")
    if minibatch is not None:
        minibatch.validate(model)
        if minibatch.sampler != "inprocess":
            raise DistributedError("Ray Train workers sample their shards in-process: drop "
                                   "--sampler ray (it is for single-process mini-batches)")
    init_ray(params.address)
    previous = (meta.get("distributed") or {}) if resume else {}
    default_storage = run.path.resolve() / "ray_train"
    storage = params.storage_path or previous.get("storage_path") or str(default_storage)
    name = previous.get("ray_name") or (
        f"{run.path.name}-{_dt.datetime.now(_dt.UTC).strftime('%Y%m%d-%H%M%S')}")
    if not resume and storage == str(default_storage) and default_storage.is_dir():
        shutil.rmtree(default_storage)  # a replaced run's old jobs
    initial = None
    if resume:
        last = run.load_last()
        if last is None:
            raise TrainingError("nothing to resume: the run has no last.pt yet")
        best = run.load_model_state() if last.get("best_epoch") else None
        initial = [ray.put((last, best))]
    cpus = params.cpus_per_worker or max(1.0, math.floor(_cluster_cpus() / params.num_workers))
    use_gpu = params.gpus_per_worker > 0
    resources = {"CPU": cpus, **({"GPU": params.gpus_per_worker} if use_gpu else {}),
                 **(params.resources_per_worker or {})}
    run.update_meta(status="running", train_config=config.to_dict(),
                    minibatch=minibatch.to_dict() if minibatch else None,
                    distributed={**asdict(params), "cpus_per_worker": cpus, "ray_name": name,
                                 "storage_path": storage, "backend": "nccl" if use_gpu else "gloo",
                                 "ray_version": ray.__version__})
    view = graph if isinstance(graph, TrainView) else TrainView.from_graph(graph)
    cfg = {"model_name": model_name, "hyper": model.config(),  # type: ignore[operator]
           "view": [ray.put(view)], "train_config": config.to_dict(),
           "minibatch": minibatch.to_dict() if minibatch else None, "initial": initial,
           "threads": max(1, int(cpus)), "fault": fault}
    trainer = TorchTrainer(
        _worker_loop, train_loop_config=cfg,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=params.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy=params.placement_strategy),
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=params.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    try:
        result = trainer.fit()
    except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors; keep the cause visible
        run.update_meta(status="failed", error=str(exc)[-2000:])
        raise DistributedError(f"Ray Train job {name} failed (checkpoints in {storage}/{name}; "
                               f"continue with --resume): {exc}") from exc
    return _finish(run, model, view, result.checkpoint, initial, config)


def _finish(run: Run, model: nn.Module, view: TrainView, checkpoint: Any,
            initial: list[Any] | None, config: TrainConfig) -> TrainResult:
    """Write the job's outcome into the run directory (model.pt and its final embeddings,
    last.pt, then meta)."""
    if checkpoint is not None:
        try:
            with checkpoint.as_directory() as d:
                state, best = _load_dir(d)
        except FileNotFoundError as exc:
            raise DistributedError(
                f"the job's last checkpoint {checkpoint.path} is not readable on the driver's "
                f"node: on a multi-node cluster --storage-path must be storage every node "
                f"shares (a shared file system or s3://...); {exc}") from exc
    elif initial is not None:  # nothing left to train (already finished or stopped early)
        state, best = ray.get(initial[0])
    else:
        raise DistributedError("the Ray Train job reported no checkpoint")
    if best is None:
        raise TrainingError("no evaluation happened: no best model to keep")
    stopping = EarlyStopping(config)
    stopping.load_state(state, best)
    run.save_model(best)
    run.save_last({"epoch": state["epoch"], "model": state["model"],
                   "optimizer": state["optimizer"],
                   "rng": {"torch": torch.get_rng_state(), **fresh_generators(config.seed)},
                   **stopping.state()})
    run.update_meta(distributed={**(run.meta().get("distributed") or {}),
                                 "resumes": state.get("resumes", []),
                                 "placements": state.get("placements", [])})
    result = Session(run).finish(model, stopping, state.get("stopped", "max_epochs"))
    run.save_embeddings(*final_embeddings(model, view))
    return result
