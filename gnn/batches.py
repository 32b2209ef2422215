"""What one training step sees: the batches :func:`gnnrec.gnn.train.fit` iterates.

A batch source is called with the epoch (from 1) and yields ``(inputs, users, pos, neg)``
steps: the model's input (the full graph's, or a sampled block's) and the rows of its
output that the batch's users, positives (Long[B]) and negatives (Long[B, K]) are.

* :class:`FullBatches`: every train ``(user, positive)`` edge once per epoch, in a seeded
  random order, in batches of ``batch_size``, with ``num_negatives`` negatives per
  positive (never a train item of the user); the full graph's inputs with each.
* :class:`SampledBatches`: the link batches of a :class:`~gnnrec.gnn.sampler.LinkBatchSampler`
  (in-process, or streamed by Ray sampler actors), each turned into the model's block.

Both shard a global batch over the workers of a Ray Train job (``shard=(rank, world)``):
a full-graph worker takes every ``world``-th edge of each global batch, reseeded per
epoch so that a restarted worker group repeats an epoch exactly; a mini-batch worker
takes batch indices ``rank, rank + world, ...``.
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from torch_geometric.data import HeteroData

from gnnrec.gnn.negative import NegativeSampler
from gnnrec.gnn.train import Step, TrainConfig
from gnnrec.gnn.views import TrainView

T = TypeVar("T")


def derived_seed(*parts: int) -> int:
    """A torch seed derived from integers (epoch, rank, ...), stable across processes."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def fresh_generators(seed: int) -> dict[str, Any]:
    """Generator states in the layout of :class:`FullBatches` before its first epoch (what
    a mini-batch or distributed run checkpoints, so the full-graph loop can resume it)."""
    return {"shuffle": torch.Generator().manual_seed(seed).get_state(),
            "sampler": torch.Generator().manual_seed(seed + 1).get_state()}


class FullBatches:
    """Full-graph steps: shuffled train edges with sampled negatives and the full inputs.

    In one process the shuffle and negative generators are seeded once (``seed`` and
    ``seed + 1``) and their states go into checkpoints (:meth:`state_dict`). With
    ``shard=(rank, world)`` (a Ray Train worker) they are reseeded at every epoch from
    ``(seed, epoch)`` and ``(seed, epoch, rank)``, and the worker takes every ``world``-th
    edge of each global batch of ``batch_size`` (a batch smaller than ``world`` is skipped
    by every worker), so DDP's averaged gradient is that of the global batch.
    """

    def __init__(self, view: TrainView, config: TrainConfig, inputs: Any,
                 device: torch.device | str = "cpu",
                 shard: tuple[int, int] | None = None) -> None:
        self.users, self.items = view.train_pairs()
        self.inputs, self.device, self.shard = inputs, torch.device(device), shard
        self.batch_size, self.k, self.seed = config.batch_size, config.num_negatives, config.seed
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self.negatives = NegativeSampler.from_view(
            view, seed=config.seed + 1, popularity=config.negatives == "popularity")

    def __call__(self, epoch: int) -> Iterator[Step]:
        rank, world = self.shard or (0, 1)
        if self.shard is not None:
            self.shuffle.manual_seed(derived_seed(self.seed, epoch))
            self.negatives.generator.manual_seed(derived_seed(self.seed, epoch, rank, 1))
        perm = torch.randperm(self.users.numel(), generator=self.shuffle)
        dev = self.device
        for b in range(0, perm.numel(), self.batch_size):
            idx = perm[b : b + self.batch_size]
            if self.shard is not None:
                if idx.numel() < world:
                    continue
                idx = idx[rank::world]
            users, pos = self.users[idx], self.items[idx]
            neg = self.negatives.sample(users, self.k)  # [B, K]
            yield self.inputs, users.to(dev), pos.to(dev), neg.to(dev)

    def state_dict(self) -> dict[str, Any]:
        return {"shuffle": self.shuffle.get_state(),
                "sampler": self.negatives.state_dict()["generator"]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shuffle.set_state(state["shuffle"])
        self.negatives.load_state_dict({"generator": state["sampler"]})


class SampledBatches:
    """Mini-batch steps: sampled link batches, each as the model's block.

    ``stream(epoch)`` yields the ``HeteroData`` batches of a sampler epoch (from 0; e.g.
    ``LinkBatchSampler.iter_epoch`` or a Ray sampler stream); the block is built with
    ``model.block(batch, inputs)`` on the inputs' device. With ``ahead > 0`` a background
    thread samples and builds up to ``ahead`` steps while the caller trains on the current
    one (numpy and torch release the GIL in their array work); the steps are the same.
    Batches are pure functions of ``(seed, epoch, index)``, so there is no generator state
    to checkpoint: the states written are fresh ones (:func:`fresh_generators`).
    """

    def __init__(self, model: nn.Module, inputs: Any,
                 stream: Callable[[int], Iterable[HeteroData]], seed: int,
                 device: torch.device | str = "cpu", ahead: int = 0) -> None:
        self.model, self.inputs, self.stream = model, inputs, stream
        self.seed, self.device, self.ahead = seed, torch.device(device), ahead

    def __call__(self, epoch: int) -> Iterator[Step]:
        steps = self._steps(epoch)
        return background(steps, self.ahead) if self.ahead > 0 else steps

    def _steps(self, epoch: int) -> Iterator[Step]:
        dev = self.device
        for batch in self.stream(epoch - 1):
            block = self.model.block(batch, self.inputs)  # type: ignore[operator]
            step = (block, batch["user"].src_index.to(dev), batch["item"].dst_pos_index.to(dev),
                    batch["item"].dst_neg_index.to(dev))
            del batch, block  # the step holds what training reads: the batch goes now
            yield step
            del step  # not held while the next batch is sampled

    def state_dict(self) -> dict[str, Any]:
        return fresh_generators(self.seed)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


_LIVE: set[tuple[threading.Event, threading.Thread]] = set()


@atexit.register
def _stop_producers() -> None:
    """Stop and join the producer threads still running when the interpreter exits (a
    daemon thread left inside a torch op at shutdown aborts the process)."""
    for stop, _ in list(_LIVE):
        stop.set()
    for _, thread in list(_LIVE):
        thread.join(timeout=600)


def background(items: Iterator[T], ahead: int = 1) -> Iterator[T]:
    """The items of ``items``, computed by a daemon thread up to ``ahead`` items in advance.

    An exception of ``items`` is raised to the caller at the item where it happened; when
    the caller stops early (or the returned generator is closed), the thread stops after
    the item it is computing and is joined; one still running at exit is stopped and
    joined then.
    """
    box: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def put(entry: tuple[str, Any]) -> bool:  # False: the consumer has gone
        while not stop.is_set():
            try:
                box.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(("error", exc))

    thread = threading.Thread(target=produce, name="gnnrec-batches", daemon=True)
    live = (stop, thread)
    _LIVE.add(live)
    thread.start()
    try:
        while True:
            kind, value = box.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()  # not left computing at interpreter exit (torch aborts the process)
        _LIVE.discard(live)
