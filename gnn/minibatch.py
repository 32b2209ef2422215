"""Mini-batch training from sampled subgraphs (GraphSAGE and LightGCN; torch + PyG only).

Full-graph training propagates over the WHOLE train graph at every step, so its activation
memory and its time per step grow with the graph. Here each step sees only a
:class:`~gnnrec.gnn.sampler.LinkBatchSampler` batch: ``B`` train positives, their
negatives and the ``L``-hop sampled in-neighbourhood of those seeds (``num_neighbors`` per
hop, one hop per layer), as in PyG's ``LinkNeighborLoader``. The model turns the batch into
its block (``model.block(batch, inputs)``: the sampled adjacency over the batch's local
nodes) and runs its own ``forward`` on it, the same forward as on the full graph:

* **GraphSAGE**: each destination averages its SAMPLED in-neighbours per edge type; an
  item's input (id + features + mean of its tags) uses all its tags, as on the full graph.
* **LightGCN**: ``E^(l) = A_hat E^(l-1)`` is estimated on the subgraph with the FULL-graph
  normalisation ``w / sqrt(d_v d_u)`` and, per destination and edge type, the factor
  ``deg / sampled`` (an unbiased estimate of the full sum, exact where every neighbour is
  sampled).

With ``num_neighbors = [-1] * num_layers`` (all neighbours) both give exactly the
full-graph seed embeddings, which the tests check. The loop is :func:`gnnrec.gnn.train.fit`
with :class:`~gnnrec.gnn.batches.SampledBatches`: evaluation, checkpoints and the run
directory are those of full-graph training. Batches are pure functions of ``(seed, epoch,
index)``: the in-process sampler and Ray sampler workers
(:mod:`gnnrec.gnn.distributed_sampling`, passed in as ``batches``) give the same stream, and
a resumed run re-reads the same batches.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from torch import nn
from torch_geometric.data import HeteroData

from gnnrec.gnn.allocator import TRAINING_LIMIT, keep_freed_memory
from gnnrec.gnn.batches import SampledBatches
from gnnrec.gnn.data import EDGE_TYPES, EdgeType
from gnnrec.gnn.run import Run
from gnnrec.gnn.sampler import LinkBatchSampler
from gnnrec.gnn.train import Session, TrainConfig, TrainingError, TrainResult, fit
from gnnrec.gnn.views import TrainView

BatchStream = Callable[[int], Iterable[HeteroData]]  # sampler epoch (from 0) -> its batches


@dataclass
class MiniBatchConfig:
    """How batches are sampled (optimisation settings stay in :class:`TrainConfig`).

    Args:
        num_neighbors: fan-out per hop (one hop per model layer); ``-1`` = all neighbours.
        sampler: ``inprocess`` or ``ray`` (sampler actors, :mod:`distributed_sampling`).
        sampler_workers: Ray sampler actors; prefetch: Ray batches in flight.
        replace: sample neighbours with replacement.
        ahead: steps sampled and turned into blocks by a background thread while the
            model trains on the current one (0: none; the steps are the same either way).
        keep_memory: the training process keeps the memory it frees for the next step
            (:func:`gnnrec.gnn.allocator.keep_freed_memory` up to 1 GiB blocks): no page
            faults for a step's large temporaries (a 10M-interaction GraphSAGE epoch:
            265.5 -> 142.3 s, peak RSS 3.76 -> 4.67 GB); the steps are the same.
    """

    num_neighbors: list[int] = field(default_factory=lambda: [10, 5])
    sampler: Literal["inprocess", "ray"] = "inprocess"
    sampler_workers: int = 2
    prefetch: int = 4
    replace: bool = False
    ahead: int = 1
    keep_memory: bool = False

    def validate(self, model: nn.Module) -> None:
        if not getattr(model, "sampled", False):
            from gnnrec.gnn.models import MODELS

            names = sorted(name for name, cls in MODELS.items() if cls.sampled)
            listed = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
            raise TrainingError(f"mini-batch training supports {listed}, not "
                                f"{type(model).__name__} (train it full-graph)")
        if (reason := model.cannot_sample()) is not None:  # type: ignore[operator]
            raise TrainingError(reason)
        layers = int(model.num_layers)  # type: ignore[arg-type]
        if len(self.num_neighbors) != layers:
            raise TrainingError(f"--num-neighbors needs one fan-out per layer: the model has "
                                f"{layers} layers, got {self.num_neighbors}")
        if any(k == 0 or k < -1 for k in self.num_neighbors):
            raise TrainingError(f"fan-outs must be >= 1 or -1 (all), got {self.num_neighbors}")
        if self.sampler not in ("inprocess", "ray"):
            raise TrainingError(f"sampler must be inprocess or ray, not {self.sampler!r}")
        if min(self.sampler_workers, self.prefetch) < 1:
            raise TrainingError("sampler_workers and prefetch must be at least 1")
        if self.ahead < 0:
            raise TrainingError(f"ahead must be >= 0, got {self.ahead}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def apply_memory(self) -> None:
        """Apply ``keep_memory`` to this process (a process-wide malloc setting)."""
        if self.keep_memory and not keep_freed_memory(TRAINING_LIMIT, TRAINING_LIMIT):
            warnings.warn("keep_memory: not glibc's malloc, nothing changed", stacklevel=2)


def model_fanouts(model: nn.Module, num_neighbors: Sequence[int]) -> dict[EdgeType, list[int]]:
    """Per-edge-type fan-outs: the given ones for the edge types the model reads, 0 else."""
    ks, none = [int(k) for k in num_neighbors], [0] * len(num_neighbors)
    used = model.edge_types()  # type: ignore[operator]
    return {et: (ks if et in used else none) for et in EDGE_TYPES}


def link_sampler(graph: HeteroData | TrainView, model: nn.Module, config: TrainConfig,
                 mb: MiniBatchConfig, *, batch_size: int | None = None,
                 seed: int | None = None) -> LinkBatchSampler:
    """The BPR batch sampler of a mini-batch run (the train view of ``graph``)."""
    if config.negatives != "uniform":
        raise TrainingError("mini-batch training samples uniform negatives only")
    if config.loss == "full":  # a block holds only some items: no softmax over all of them
        raise TrainingError("loss full (softmax over every item) needs full-graph training; "
                            "mini-batch training takes bpr or softmax")
    return LinkBatchSampler(graph, model_fanouts(model, mb.num_neighbors),
                            batch_size=batch_size or config.batch_size,
                            num_negatives=config.num_negatives, replace=mb.replace,
                            seed=config.seed if seed is None else seed)


def train_minibatch(model: nn.Module, graph: HeteroData | TrainView, config: TrainConfig,
                    mb: MiniBatchConfig, *, run: Run | None = None, resume: bool = False,
                    progress: bool = True, batches: BatchStream | None = None) -> TrainResult:
    """:func:`~gnnrec.gnn.train.fit` on sampled link batches of ``graph``'s train edges.

    Same contract as :func:`gnnrec.gnn.train.train` (valid evaluation on the full graph
    every ``eval_every`` epochs, early stopping, ``model.pt`` / ``last.pt`` / meta in
    ``run``, the best weights loaded on return). ``batches(epoch)`` overrides the batch
    stream (e.g. Ray sampler workers); default: the in-process :func:`link_sampler`.
    """
    config.validate()
    mb.validate(model)
    mb.apply_memory()
    view = graph if isinstance(graph, TrainView) else TrainView.from_graph(graph)
    stream = batches or link_sampler(view, model, config, mb).iter_epoch
    if run is not None:
        run.update_meta(minibatch=mb.to_dict())
    session = Session(run, resume=resume, progress=progress)
    session.desc = "train (mini-batch)"

    def sampled(inputs: Any, device: Any) -> SampledBatches:
        return SampledBatches(model, inputs, stream, config.seed, device, ahead=mb.ahead)

    return fit(model, view, config, batches=sampled, session=session, sampled=True)
