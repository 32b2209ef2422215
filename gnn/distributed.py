"""Distributed training with Ray Train V2 (``TorchTrainer``, DDP on gloo for CPU, nccl for GPU).

``train_distributed`` runs ``num_workers`` Ray Train workers. Each builds the model from the
graph (shipped once through Ray's object store), wraps a loss module in DDP
(``ray.train.torch.prepare_model``) and trains on ITS SHARD of every global batch:

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
system or ``s3://``); the graph travels through the object store from the driver's node.

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

Model buffers (sparse adjacencies, edge lists, features) are rebuilt from the graph by every
worker and excluded from DDP's broadcast (``_ddp_params_and_buffers_to_ignore``): DDP cannot
broadcast sparse CSR tensors and there is nothing to synchronise.

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData

from gnnrec.errors import GnnrecError
from gnnrec.gnn.data import UI
from gnnrec.gnn.evaluate import Evaluator
from gnnrec.gnn.minibatch import (
    BatchSource,
    MiniBatchConfig,
    SampledBPR,
    link_sampler,
    rng_checkpoint,
    run_epoch,
)
from gnnrec.gnn.negative import NegativeSampler
from gnnrec.gnn.run import Run, build_model
from gnnrec.gnn.train import (
    EarlyStopping,
    TrainConfig,
    TrainingError,
    TrainResult,
    seed_everything,
)

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
                resources: dict[str, float] | None = None) -> Iterator[BatchSource]:
    """``epoch -> batches`` of ``sampler`` (a ``LinkBatchSampler``) sampled by Ray actors
    (spread over the cluster's nodes; ``resources``: custom resources per actor)."""
    from gnnrec.gnn.distributed_sampling import RaySampledBatches, RaySamplingParams

    init_ray(address)
    with RaySampledBatches(sampler, RaySamplingParams(num_workers=workers, prefetch=prefetch,
                                                      resources=resources)) as remote:
        yield remote.iter_epoch


def _seed(*parts: int) -> int:
    """A torch seed derived from integers (epoch, rank, ...), stable across processes."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))


class FullBPR(nn.Module):
    """``forward(users, pos, neg) -> model.bpr_loss(...)``: the DDP-wrapped full-graph step."""

    def __init__(self, model: nn.Module, loss: str = "bpr", temperature: float = 1.0) -> None:
        super().__init__()
        self.model, self.loss, self.temperature = model, loss, temperature

    def forward(self, users: Tensor, pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.bpr_loss(users, pos, neg, self.loss,  # type: ignore[operator]
                                   self.temperature)


def _full_epoch(step: nn.Module, optimizer: torch.optim.Optimizer, users: Tensor, items: Tensor,
                negatives: NegativeSampler, config: TrainConfig, epoch: int, rank: int,
                world: int, device: torch.device) -> dict[str, float]:
    """This worker's share of one full-graph epoch (global batches split by rank)."""
    n, bs, k = users.numel(), config.batch_size, config.num_negatives
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(config.seed, epoch)))
    negatives.generator.manual_seed(_seed(config.seed, epoch, rank, 1))
    sums, count = torch.zeros(2, dtype=torch.float64), 0
    for b in range(0, n, bs):
        idx = perm[b : b + bs]
        if idx.numel() < world:  # too small to give every worker an edge: skipped by all
            continue
        local = idx[rank::world]
        u, p = users[local], items[local]
        neg = negatives.sample(u, k)  # [B, K]
        bpr, reg = step(u.to(device), p.to(device), neg.to(device))
        loss = bpr + config.l2 * reg
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sums += torch.stack([bpr.detach(), reg.detach()]).double().cpu() * local.numel()
        count += local.numel()
    bpr_mean, reg_mean = (sums / max(count, 1)).tolist()
    return {"bpr": bpr_mean, "reg": reg_mean, "loss": bpr_mean + config.l2 * reg_mean}


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


def _worker_loop(cfg: dict[str, Any]) -> None:
    """The per-worker training function (runs inside a Ray Train worker)."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    graph: HeteroData = ray.get(cfg["graph"][0])
    config = TrainConfig.from_dict(cfg["train_config"])
    mb = MiniBatchConfig(**cfg["minibatch"]) if cfg["minibatch"] else None
    seed_everything(config.seed, config.deterministic)
    model = build_model(cfg["model_name"], graph, cfg["hyper"])
    device = ray.train.torch.get_device()
    module: nn.Module = (SampledBPR(model, graph, config.loss, config.temperature) if mb
                         else FullBPR(model, config.loss, config.temperature))
    # Buffers are rebuilt from the graph on every worker: never broadcast them.
    module._ddp_params_and_buffers_to_ignore = [n for n, _ in module.named_buffers()]  # type: ignore[assignment]
    step = ray.train.torch.prepare_model(module)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)

    # Resume: the newer of the job's last checkpoint and the state the driver passed.
    candidates: list[tuple[dict[str, Any], dict[str, Tensor] | None]] = []
    if (ckpt := ray.train.get_checkpoint()) is not None:
        with ckpt.as_directory() as d:
            candidates.append(_load_dir(d))
    if cfg["initial"] is not None:
        candidates.append(ray.get(cfg["initial"][0]))
    stopping, start = EarlyStopping(config), 1
    resumes: list[int] = []  # epochs the job (re)started from, across worker-group restarts
    placements = [_placement(world)]  # nodes of the ranks, one list per attempt
    if candidates:
        state, best_state = max(candidates, key=lambda c: int(c[0]["epoch"]))
        resumes = [*state.get("resumes", []), int(state["epoch"])]
        placements = [*state.get("placements", []), *placements]
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = stopping.load_state(state, best_state)

    users = items = sampler = negatives = None
    if mb:
        sampler = link_sampler(graph, model, config, mb,
                               batch_size=max(1, config.batch_size // world))
        steps = len(sampler) // world
    else:
        mask = graph[UI].split == 0
        users, items = graph[UI].edge_index[0, mask], graph[UI].edge_index[1, mask]
        negatives = NegativeSampler(users, items, int(graph["user"].num_nodes),
                                    int(graph["item"].num_nodes), seed=config.seed + 1)
    evaluator = Evaluator(graph, "valid", batch_size=config.eval_batch_size) if rank == 0 else None
    stopped = "max_epochs"
    model.train()
    for epoch in range(start, config.epochs + 1):
        _maybe_fail(cfg["fault"], rank, epoch, placements[-1])
        torch.manual_seed(_seed(config.seed, epoch, rank, 2))  # dropout etc., per rank
        t0 = time.perf_counter()
        if sampler is not None:
            batches = (sampler.batch(epoch - 1, j) for j in range(rank, steps * world, world))
            stats = run_epoch(step, optimizer, batches, config.l2)
        else:
            stats = _full_epoch(step, optimizer, users, items, negatives, config,  # type: ignore[arg-type]
                                epoch, rank, world, device)
        if not math.isfinite(stats["loss"]):
            raise TrainingError(f"training diverged at epoch {epoch} on worker {rank}: "
                                f"the loss is {stats['loss']}")
        record: dict[str, Any] = {"epoch": epoch, "loss": stats["loss"], "bpr": stats["bpr"],
                                  "reg": stats["reg"], "workers": world,
                                  "seconds": round(time.perf_counter() - t0, 4)}
        stopping.history.append(record)
        if not stopping.evaluates(epoch):
            continue
        value = torch.zeros(1, dtype=torch.float64)
        if evaluator is not None:
            model.eval()
            record["valid"] = metrics = evaluator(model.score, device=device)  # type: ignore[arg-type]
            model.train()
            value[0] = metrics[config.metric]
        if world > 1:  # every rank takes rank 0's early-stopping decision
            value = value.to(device)
            torch.distributed.broadcast(value, 0)
        stopping.observe(epoch, float(value[0]), model if rank == 0 else None, None)
        if stopping.should_stop:
            stopped = "early_stopping"
        report = {"epoch": epoch, "loss": stats["loss"], "seconds": record["seconds"]}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                report.update(record["valid"])
                torch.save({"epoch": epoch, "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(), **stopping.state(),
                            "stopped": stopped, "resumes": resumes,
                            "placements": placements},
                           Path(tmp) / STATE_FILE)
                if stopping.best_state is not None:
                    torch.save(stopping.best_state, Path(tmp) / BEST_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(report, checkpoint=checkpoint)
        if stopped == "early_stopping":
            break


def _cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", os.cpu_count() or 1))


def _check_v2() -> None:
    if os.environ.get("RAY_TRAIN_V2_ENABLED", "1").strip().lower() in ("0", "false", "no"):
        raise DistributedError("gnnrec's distributed training uses Ray Train V2: unset "
                               "RAY_TRAIN_V2_ENABLED=0 (V2 is the default since Ray 2.51)")


def train_distributed(model: nn.Module, graph: HeteroData, config: TrainConfig,
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
    ``{"rank", "epoch", "marker", "action"}`` kills that worker once with SIGKILL or pauses
    it (default: ``$GNNREC_TRAIN_FAULT``, see the module docstring).
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
    cfg = {"model_name": model_name, "hyper": model.config(),  # type: ignore[operator]
           "graph": [ray.put(graph)], "train_config": config.to_dict(),
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
    return _finish(run, model, result.checkpoint, initial, config)


def _finish(run: Run, model: nn.Module, checkpoint: Any, initial: list[Any] | None,
            config: TrainConfig) -> TrainResult:
    """Write the job's outcome into the run directory (model.pt, last.pt, then meta)."""
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
                   "optimizer": state["optimizer"], "rng": rng_checkpoint(config.seed),
                   **stopping.state()})
    run.update_meta(distributed={**(run.meta().get("distributed") or {}),
                                 "resumes": state.get("resumes", []),
                                 "placements": state.get("placements", [])})
    return stopping.finish(model, run, state.get("stopped", "max_epochs"))
