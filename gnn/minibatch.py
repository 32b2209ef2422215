"""Mini-batch training from sampled subgraphs (GraphSAGE and LightGCN; torch + PyG only).

Full-graph training (:mod:`gnnrec.gnn.train`) propagates over the WHOLE train graph at
every step, so its activation memory and its time per step grow with the graph. Here each
step sees only a :class:`~gnnrec.gnn.sampler.LinkBatchSampler` batch: ``B`` train
positives, their negatives and the ``L``-hop sampled in-neighbourhood of those seeds
(``num_neighbors`` per hop, one hop per layer), as in PyG's ``LinkNeighborLoader``.

* **GraphSAGE** (:class:`~gnnrec.gnn.models.HeteroGraphSAGE`): the model's own layers run on
  the sampled subgraph; each destination averages its SAMPLED in-neighbours per edge type
  (the model's mean aggregation, over a fan-out-bounded neighbour set). An item's input
  (id + features + mean of its tags) uses all its tags, exactly as the full model does.
* **LightGCN**: ``E^(l) = A_hat E^(l-1)`` is estimated on the subgraph with the FULL-graph
  normalisation ``w / sqrt(d_v d_u)`` and, per destination and edge type, the factor
  ``deg / sampled`` (an unbiased estimate of the full sum, exact where every neighbour is
  sampled). The output is the model's layer combination ``sum_l alpha_l E^(l)``.

With ``num_neighbors = [-1] * num_layers`` (all neighbours) both give exactly the
full-graph seed embeddings, which the tests check. Evaluation, checkpoints and the run
directory are those of full-graph training (the model keeps its full-graph ``score``), so
a mini-batch run is used like any other. Batches are pure functions of
``(seed, epoch, index)``: the in-process sampler and Ray sampler workers
(:mod:`gnnrec.gnn.distributed_sampling`, passed in as ``batches``) give the same stream, and
a resumed run re-reads the same batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import HeteroData
from tqdm.auto import tqdm

from gnnrec.gnn.data import IT, IU, TI, UI, UU
from gnnrec.gnn.evaluate import Evaluator
from gnnrec.gnn.models.base import mean_adjacency, ranking_loss, spmm, to_csr
from gnnrec.gnn.models.lightgcn import LightGCN
from gnnrec.gnn.models.sage import HeteroGraphSAGE
from gnnrec.gnn.run import Run
from gnnrec.gnn.sampler import EdgeType, LinkBatchSampler
from gnnrec.gnn.train import (
    EarlyStopping,
    TrainConfig,
    TrainingError,
    TrainResult,
    resolve_device,
)

BatchSource = Callable[[int], Iterable[HeteroData]]  # epoch -> that epoch's batches


@dataclass
class MiniBatchConfig:
    """How batches are sampled (optimisation settings stay in :class:`TrainConfig`).

    Args:
        num_neighbors: fan-out per hop (one hop per model layer); ``-1`` = all neighbours.
        sampler: ``inprocess`` or ``ray`` (sampler actors, :mod:`distributed_sampling`).
        sampler_workers: Ray sampler actors; prefetch: Ray batches in flight.
        replace: sample neighbours with replacement.
    """

    num_neighbors: list[int] = field(default_factory=lambda: [10, 5])
    sampler: Literal["inprocess", "ray"] = "inprocess"
    sampler_workers: int = 2
    prefetch: int = 4
    replace: bool = False

    def validate(self, model: nn.Module) -> None:
        if not isinstance(model, HeteroGraphSAGE | LightGCN):
            raise TrainingError(f"mini-batch training supports graphsage and lightgcn, not "
                                f"{type(model).__name__} (train it full-graph)")
        if isinstance(model, LightGCN) and model.config().get("tag_weight", 0.0) > 0:
            raise TrainingError("mini-batch LightGCN samples users and items only: train "
                                "a LightGCN with tag_weight > 0 full-graph")
        layers = int(model.num_layers)
        if len(self.num_neighbors) != layers:
            raise TrainingError(f"--num-neighbors needs one fan-out per layer: the model has "
                                f"{layers} layers, got {self.num_neighbors}")
        if any(k == 0 or k < -1 for k in self.num_neighbors):
            raise TrainingError(f"fan-outs must be >= 1 or -1 (all), got {self.num_neighbors}")
        if self.sampler not in ("inprocess", "ray"):
            raise TrainingError(f"sampler must be inprocess or ray, not {self.sampler!r}")
        if min(self.sampler_workers, self.prefetch) < 1:
            raise TrainingError("sampler_workers and prefetch must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_fanouts(model: nn.Module, num_neighbors: Sequence[int]) -> dict[EdgeType, list[int]]:
    """Per-edge-type fan-outs: the given ones for the edge types the model reads, 0 else."""
    ks, none = [int(k) for k in num_neighbors], [0] * len(num_neighbors)
    used = {UI, IU}
    if isinstance(model, HeteroGraphSAGE):
        used |= {UU} if model.use_friends else set()
        used |= {IT, TI} if model.use_tags else set()
    elif isinstance(model, LightGCN) and model.config()["social_weight"] > 0:
        used.add(UU)
    return {et: (ks if et in used else none) for et in (UI, IU, UU, IT, TI)}


def link_sampler(graph: HeteroData, model: nn.Module, config: TrainConfig,
                 mb: MiniBatchConfig, *, batch_size: int | None = None,
                 seed: int | None = None) -> LinkBatchSampler:
    """The BPR batch sampler of a mini-batch run (train edges of ``graph`` only)."""
    if config.negatives != "uniform":
        raise TrainingError("mini-batch training samples uniform negatives only")
    return LinkBatchSampler(graph, model_fanouts(model, mb.num_neighbors),
                            batch_size=batch_size or config.batch_size,
                            num_negatives=config.num_negatives, replace=mb.replace,
                            seed=config.seed if seed is None else seed)


# -- sampled forward passes -----------------------------------------------------------------
def _csr_rows(adj: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Entries of the CSR ``adj``'s ``rows`` (Long[n]): (position in rows, column, value)."""
    crow, col, val = adj.crow_indices(), adj.col_indices(), adj.values()
    start = crow[rows]
    count = crow[rows + 1] - start
    pos = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), count)
    first = torch.cumsum(count, 0) - count
    entry = start[pos] + torch.arange(pos.numel(), device=rows.device) - first[pos]
    return pos, col[entry], val[entry]


def _local_mean(batch: HeteroData, et: EdgeType, device: torch.device) -> Tensor:
    """Row-normalised CSR [n_dst, n_src] over the batch's sampled ``et`` edges."""
    ei = batch[et].edge_index.to(device)
    n_src, n_dst = int(batch[et[0]].num_nodes), int(batch[et[2]].num_nodes)
    return mean_adjacency(ei[1], ei[0], n_dst, n_src).to(device)


def sage_forward(model: HeteroGraphSAGE, batch: HeteroData) -> tuple[dict[str, Tensor],
                                                                    dict[str, Tensor]]:
    """(outputs, layer-0 inputs) ``{node type: Float[n_local, d]}`` on a sampled subgraph.

    Mirrors ``HeteroGraphSAGE.propagate`` with the batch's local nodes (``n_id``) and the
    mean over its sampled edges; rows follow ``batch[node_type].n_id``.
    """
    dev = model.user_id.weight.device
    nid = {nt: batch[nt].n_id.to(dev) for nt in ("user", "item", "tag")}
    user, item = model.user_id(nid["user"]), model.item_id(nid["item"])
    if model.training and model.id_dropout > 0:
        user = user * (torch.rand_like(user[:, :1]) >= model.id_dropout)
        item = item * (torch.rand_like(item[:, :1]) >= model.id_dropout)
    if model.user_proj is not None:
        user = user + model.user_proj(model.user_x[nid["user"]])
    if model.item_proj is not None:
        item = item + model.item_proj(model.item_x[nid["item"]])
    x = {"user": user, "item": item}
    if model.tag_embedding is not None:  # all of an item's tags, as the full model does
        tags = model.tag_embedding.weight
        row, col, val = _csr_rows(model.adj_rev_has_tag, nid["item"])
        x["item"] = item.index_add(0, row, tags[col] * val[:, None])
        x["tag"] = tags[nid["tag"]]
    types = [UI, IU] + ([UU] if model.use_friends else []) + ([TI, IT] if model.use_tags else [])
    adj = {et: _local_mean(batch, et, dev) for et in types}
    h = x
    for layer, conv in enumerate(model.convs):
        out = conv(h, adj)
        if layer < model.num_layers - 1:
            out = {k: F.dropout(F.relu(v), model.dropout, model.training) for k, v in out.items()}
        h = out
    return h, x


class _LightGCNSampling(nn.Module):
    """Full-graph degrees of a LightGCN, for its sampled propagation (non-persistent)."""

    def __init__(self, model: LightGCN, graph: HeteroData) -> None:
        super().__init__()
        u, i = graph[UI].edge_index[:, graph[UI].split == 0]
        nu, ni = model.num_users, model.num_items
        self.social = float(model.config()["social_weight"])
        ui_deg = torch.bincount(u, minlength=nu).float()
        fr_deg = torch.bincount(graph[UU].edge_index[1], minlength=nu).float()
        it_deg = torch.bincount(i, minlength=ni).float()
        deg = torch.cat([ui_deg + (self.social * fr_deg if self.social > 0 else 0.0), it_deg])
        dinv = deg.pow(-0.5)
        dinv[deg == 0] = 0.0
        for name, t in (("dinv", dinv), ("ui_deg", ui_deg), ("fr_deg", fr_deg), ("it_deg", it_deg)):
            self.register_buffer(name, t, persistent=False)

    def adjacency(self, batch: HeteroData, nu: int, num_users: int) -> Tensor:
        """Sparse CSR [n, n] over the local nodes (users ``0..nu-1``, then items)."""
        dev = self.dinv.device
        n_user, n_item = batch["user"].n_id.to(dev), batch["item"].n_id.to(dev)
        n = nu + n_item.numel()
        glob = torch.cat([n_user, n_item + num_users])
        parts = [(IU, 1.0, self.ui_deg, nu, 0), (UI, 1.0, self.it_deg, 0, nu)]
        if self.social > 0:
            parts.append((UU, self.social, self.fr_deg, 0, 0))
        rows, cols, vals = [], [], []
        for et, w, full_deg, src_off, dst_off in parts:
            ei = batch[et].edge_index.to(dev)
            src, dst = ei[0] + src_off, ei[1] + dst_off
            sampled = torch.bincount(dst, minlength=n).float()
            dst_g = glob[dst]
            deg_t = full_deg[dst_g - (num_users if dst_off else 0)]
            scale = deg_t / sampled[dst].clamp(min=1)
            rows.append(dst)
            cols.append(src)
            vals.append(w * self.dinv[glob[src]] * self.dinv[dst_g] * scale)
        idx = torch.stack([torch.cat(rows), torch.cat(cols)])
        coo = torch.sparse_coo_tensor(idx, torch.cat(vals), (n, n), check_invariants=False)
        return to_csr(coo.coalesce())


def lightgcn_forward(model: LightGCN, sampling: _LightGCNSampling, batch: HeteroData
                     ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(outputs, layer-0 inputs) ``{"user"|"item": Float[n_local, d]}`` on a subgraph."""
    dev = model.user_embedding.weight.device
    n_user, n_item = batch["user"].n_id.to(dev), batch["item"].n_id.to(dev)
    ego_u, ego_i = model.user_embedding(n_user), model.item_embedding(n_item)
    ego = torch.cat([ego_u, ego_i])
    adj = sampling.adjacency(batch, n_user.numel(), model.num_users)
    out, h = ego * model.layer_weights[0], ego
    for layer in range(1, model.num_layers + 1):
        h = spmm(adj, h)
        out = out + h * model.layer_weights[layer]
    user, item = out.split([n_user.numel(), n_item.numel()])
    return {"user": user, "item": item}, {"user": ego_u, "item": ego_i}


class SampledBPR(nn.Module):
    """``forward(batch) -> (loss, l2)`` of a model on one sampled link batch.

    The same loss as ``Recommender.bpr_loss`` (:func:`~gnnrec.gnn.models.base.ranking_loss`:
    BPR or sampled softmax over the K negatives; L2 of the ego embeddings / B), computed on
    the subgraph. Wrap THIS module in DDP (its only
    parameters are the model's): calling ``model.bpr_loss`` on a DDP-wrapped model would
    bypass DDP's forward and its gradient synchronisation.
    """

    def __init__(self, model: nn.Module, graph: HeteroData, loss: str = "bpr",
                 temperature: float = 1.0) -> None:
        super().__init__()
        self.model, self.loss, self.temperature = model, loss, temperature
        self.sampling = (_LightGCNSampling(model, graph) if isinstance(model, LightGCN)
                         else None)
        if not isinstance(model, HeteroGraphSAGE | LightGCN):
            raise TrainingError(f"no sampled forward for {type(model).__name__}")

    def forward(self, batch: HeteroData) -> tuple[Tensor, Tensor]:
        if isinstance(self.model, LightGCN):
            assert self.sampling is not None
            out, ego = lightgcn_forward(self.model, self.sampling, batch)
        else:
            out, ego = sage_forward(self.model, batch)  # type: ignore[arg-type]
        dev = out["user"].device
        return ranking_loss(out["user"], out["item"], ego["user"], ego["item"],
                            batch["user"].src_index.to(dev), batch["item"].dst_pos_index.to(dev),
                            batch["item"].dst_neg_index.to(dev), self.loss, self.temperature)


def run_epoch(step: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[HeteroData],
              l2: float, *, max_batches: int | None = None) -> dict[str, float]:
    """One pass over ``batches``: (bpr, reg, loss means weighted by batch size, batches)."""
    sums = torch.zeros(2, dtype=torch.float64)
    count = seen = 0
    for batch in batches:
        bpr, reg = step(batch)
        loss = bpr + l2 * reg
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        b = int(batch["user"].src_index.numel())
        sums += torch.stack([bpr.detach(), reg.detach()]).double().cpu() * b
        count, seen = count + b, seen + 1
        if max_batches is not None and seen >= max_batches:
            break
    bpr_mean, reg_mean = (sums / max(count, 1)).tolist()
    return {"bpr": bpr_mean, "reg": reg_mean, "loss": bpr_mean + l2 * reg_mean,
            "batches": seen, "positives": count}


def rng_checkpoint(seed: int) -> dict[str, Any]:
    """RNG states in the layout of ``train.py``'s ``last.pt`` (fresh generators), so a
    mini-batch or distributed run can also be resumed by the full-graph loop."""
    return {"torch": torch.get_rng_state(),
            "shuffle": torch.Generator().manual_seed(seed).get_state(),
            "sampler": torch.Generator().manual_seed(seed + 1).get_state()}


def train_minibatch(model: nn.Module, graph: HeteroData, config: TrainConfig,
                    mb: MiniBatchConfig, *, run: Run | None = None, resume: bool = False,
                    progress: bool = True, batches: BatchSource | None = None) -> TrainResult:
    """Train ``model`` on sampled link batches of ``graph``'s train edges.

    Same contract as :func:`gnnrec.gnn.train.train` (valid evaluation on the full graph
    every ``eval_every`` epochs, early stopping, ``model.pt`` / ``last.pt`` / meta in
    ``run``, the best weights loaded on return). ``batches(epoch)`` overrides the batch
    stream (e.g. Ray sampler workers); default: the in-process :func:`link_sampler`.
    """
    config.validate()
    mb.validate(model)
    device = resolve_device(config.device)
    model.to(device)
    step = SampledBPR(model, graph, config.loss, config.temperature).to(device)
    if batches is None:
        sampler = link_sampler(graph, model, config, mb)
        batches = sampler.iter_epoch
    evaluator = Evaluator(graph, "valid", batch_size=config.eval_batch_size)

    def validate_model() -> dict[str, float]:
        model.eval()
        metrics = evaluator(model.score, device=device)  # type: ignore[arg-type]
        model.train()
        return metrics

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    stopping, start = EarlyStopping(config), 1
    if resume:
        ckpt, start = stopping.resume(run, model, optimizer)
        torch.set_rng_state(ckpt["rng"]["torch"])
    if run is not None:
        run.update_meta(status="running", train_config=config.to_dict(), minibatch=mb.to_dict())
    stopped = "max_epochs"
    model.train()
    bar = tqdm(range(start, config.epochs + 1), desc="train (mini-batch)", unit="epoch",
               disable=not progress, initial=start - 1, total=config.epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        stats = run_epoch(step, optimizer, batches(epoch - 1), config.l2)
        if not math.isfinite(stats["loss"]):
            raise TrainingError(f"training diverged at epoch {epoch}: the loss is "
                                f"{stats['loss']}; lower --lr or check the model")
        record: dict[str, Any] = {"epoch": epoch, "loss": stats["loss"], "bpr": stats["bpr"],
                                  "reg": stats["reg"], "batches": stats["batches"],
                                  "seconds": round(time.perf_counter() - t0, 4)}
        if stopping.end_epoch(record, validate_model, model, optimizer,
                              lambda: rng_checkpoint(config.seed), run, bar):
            stopped = "early_stopping"
            break
    bar.close()
    return stopping.finish(model, run, stopped)


