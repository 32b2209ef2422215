"""The interface every recommender implements, and the sparse helpers the models share.

A model holds only what it learns (its ``state_dict``). It is built from the shape of the
graph (:class:`GraphSizes`) and plain typed hyper-parameters, so a run rebuilds it
without the graph, as nanoGPT rebuilds ``GPT(GPTConfig(**model_args))``::

    view = TrainView.from_graph(graph)                  # the train-only view, built once
    model = LightGCN(view.sizes, embedding_dim=64, num_layers=3)
    again = LightGCN(view.sizes, **model.config())      # same structure
    again.load_state_dict(model.state_dict())           # same weights

What a model reads from the graph (adjacency, node features) is its *input*, passed to
``forward`` as PyG models take ``edge_index``: :meth:`Recommender.inputs` builds the
full-graph input from the train view once, :meth:`Recommender.block` the input of one
sampled subgraph (mini-batch training), and the same ``forward`` runs on either::

    inputs = model.inputs(view)
    out = model(inputs)                       # Propagation: user [U, d], item [I, d], egos
    out = model(model.block(batch, inputs))   # rows of the batch's local users and items

A new model family subclasses :class:`Recommender`: a constructor taking ``sizes`` and
typed hyper-parameters (kept in ``self._hparams`` for :meth:`config`), ``forward(inputs)
-> Propagation`` and, when it reads the graph, ``inputs(view)``; for mini-batch training
``sampled = True``, :meth:`block` and :meth:`edge_types`. ``gnnrec.gnn.train.fit`` trains
gradient models with :meth:`loss` on their output (the ranking loss, plus what a model
adds). A model trained without gradients (iALS's sweeps, EASE's closed form, popularity's
counts) has no trainable parameters (``trainable = False``) and implements :meth:`solve`,
which fit calls once per epoch, evaluating after each, until it reports ``converged``.
Every model is scored, evaluated, served and written back through its final embeddings
(``score = user_emb @ item_emb.T``).
Registering the class in ``gnnrec.gnn.models.MODELS`` makes it a ``--model``.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from gnnrec.gnn.data import IU, UI, EdgeType

if TYPE_CHECKING:
    from gnnrec.gnn.views import TrainView


@dataclass(frozen=True)
class GraphSizes:
    """The shape of the graph a model is built for: all its parameter shapes depend on.

    Stored in the run next to the model's hyper-parameters, so the model is rebuilt from
    its checkpoint without the graph. ``friend_edges`` and ``tag_edges`` (train edges of
    those types) let a model decide whether it uses them.
    """

    num_users: int
    num_items: int
    num_tags: int = 0
    user_features: int = 0
    item_features: int = 0
    friend_edges: int = 0
    tag_edges: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GraphSizes:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: int(v) for k, v in values.items() if k in known})


class Propagation(NamedTuple):
    """Output of a model's ``forward``.

    ``user`` [U, d] and ``item`` [I, d] are the final (scoring) embeddings;
    ``user_ego`` [U, d0] and ``item_ego`` [I, d0] the layer-0 inputs that the L2
    regulariser of :func:`ranking_loss` is applied to. On a sampled block the rows are
    the block's local users and items. ``extra``: whatever else a model's own
    :meth:`Recommender.loss` needs from the same forward pass (e.g. XSimGCL's views).
    """

    user: Tensor
    item: Tensor
    user_ego: Tensor
    item_ego: Tensor
    extra: dict[str, Tensor] | None = None


def _move(value: Any, device: torch.device | str | None, dtype: torch.dtype | None) -> Any:
    if isinstance(value, Tensor):
        value = value.to(device) if device is not None else value
        return value.to(dtype) if dtype is not None and value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _move(v, device, dtype) for k, v in value.items()}
    return value


class Inputs:
    """Base of a model's input (a dataclass): :meth:`to` moves every tensor it holds."""

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> Any:
        """A copy on ``device``; ``dtype`` converts the floating-point tensors only."""
        changes = {f.name: _move(getattr(self, f.name), device, dtype)
                   for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def check_range(edge_index: Tensor, num_src: int, num_dst: int, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` when an index is outside [0, num_src/num_dst)."""
    if edge_index.numel() == 0:
        return
    for row, n, side in ((0, num_src, "source"), (1, num_dst, "destination")):
        lo, hi = int(edge_index[row].min()), int(edge_index[row].max())
        if lo < 0 or hi >= n:
            raise ValueError(f"{what}: {side} index range [{lo}, {hi}] outside [0, {n})")


def unique_edges(edge_index: Tensor, num_dst: int) -> Tensor:
    """Long [2, E']: ``edge_index`` without repeated (src, dst) pairs, sorted by src, dst."""
    if edge_index.numel() == 0:
        return edge_index.view(2, 0).long()
    code = torch.unique(edge_index[0].long() * num_dst + edge_index[1].long())
    return torch.stack([code // num_dst, code % num_dst])


def spmm(adj: Tensor, x: Tensor, symmetric: bool = False) -> Tensor:
    """``adj @ x`` for a sparse CSR ``adj`` [N, M] and dense ``x`` [M, d] -> [N, d].

    Computed as a weighted ``embedding_bag`` over ``adj``'s rows (gather the rows of
    ``x`` each row of ``adj`` names, scale, sum): measured 3x faster than
    ``torch.sparse.mm`` on 2 CPU threads (490k rows, 1.4M entries, d = 64). The backward
    pass multiplies by ``adj`` itself when ``symmetric`` and otherwise by a transpose
    cached on the ``adj`` tensor object, the same way, instead of converting ``adj.t()``
    to CSR on every backward (about 2x faster forward + backward for a fixed adjacency).
    """
    if not x.requires_grad:
        return _bag_mm(adj, x)
    return _SpMM.apply(adj, x, symmetric)


def _bag_mm(adj: Tensor, x: Tensor) -> Tensor:
    """``adj @ x`` (``adj`` sparse CSR) by ``F.embedding_bag`` in ``sum`` mode, in the
    precision of ``x``."""
    if x.dim() != 2 or adj.layout != torch.sparse_csr or not x.is_floating_point():
        return torch.sparse.mm(adj, x)
    crow = adj.crow_indices()
    if adj.size(0) == 0 or x.size(0) == 0:
        return x.new_zeros(adj.size(0), x.size(1))
    # in x's precision (a bf16 step: the float32 adjacency's values rounded to bf16)
    return F.embedding_bag(adj.col_indices(), x, crow[:-1], mode="sum",
                           per_sample_weights=adj.values().to(x.dtype))


def spmm_head(adj: Tensor, x: Tensor, keep: int, weight: Tensor) -> tuple[Tensor, Tensor]:
    """``(adj @ x, weight * x[:keep])`` for a sparse CSR ``adj`` (not symmetric) and dense
    ``x``; ``weight`` a 0-dim tensor. The backward pass adds the second output's gradient
    into the first rows of the product's ``x`` gradient in place (an autograd slice would
    build a zero-padded full-size gradient and add it)."""
    if not x.requires_grad:
        return _bag_mm(adj, x), x[:keep] * weight
    return _SpMMHead.apply(adj, x, keep, weight)


def cached_transpose(adj: Tensor) -> Tensor:
    """``adj.T`` as CSR, cached on the ``adj`` tensor object (what :func:`spmm`'s backward
    multiplies by; building it ahead moves that work off the backward pass)."""
    adj_t = getattr(adj, "_gnnrec_transpose", None)
    if adj_t is None:
        adj_t = transpose_csr(adj)
        adj._gnnrec_transpose = adj_t
    return adj_t


class _SpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, adj: Tensor, x: Tensor, symmetric: bool) -> Tensor:
        ctx.adj = adj
        ctx.symmetric = symmetric
        return _bag_mm(adj, x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        adj_t = ctx.adj if ctx.symmetric else cached_transpose(ctx.adj)
        return None, _bag_mm(adj_t, grad.contiguous()), None


class _SpMMHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, adj: Tensor, x: Tensor, keep: int,
                weight: Tensor) -> tuple[Tensor, Tensor]:
        ctx.adj, ctx.keep = adj, keep
        ctx.save_for_backward(weight)
        return _bag_mm(adj, x), x[:keep] * weight

    @staticmethod
    def backward(ctx: Any, grad: Tensor, grad_head: Tensor) -> tuple[None, Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        grad_x = _bag_mm(cached_transpose(ctx.adj), grad.contiguous())
        grad_x[: ctx.keep].addcmul_(grad_head, weight)
        return None, grad_x, None, None


class _PermuteRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, order: Tensor, position: Tensor) -> Tensor:
        ctx.position = position
        return x[order]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return grad[ctx.position], None, None


def permute_rows(x: Tensor, order: Tensor, position: Tensor) -> Tensor:
    """``x[order]`` for a permutation ``order`` whose inverse is ``position``
    (``order[position] = arange``): the backward pass is the gather ``grad[position]``
    (not a scatter into zeros)."""
    return _PermuteRows.apply(x, order, position)


def radix_order(keys: np.ndarray) -> np.ndarray:
    """Int64[n]: the stable sorting permutation of the non-negative ints ``keys``, by an LSD
    radix sort over 16-bit digits (numpy's stable sort of uint16 is a counting sort: ~5x
    torch.sort on 2M keys)."""
    order = np.arange(keys.size)
    top = int(keys.max(initial=0))
    shift = 0
    while shift == 0 or top >> shift:
        digit = ((keys[order] if shift else keys) >> shift & 0xFFFF).astype(np.uint16)
        step = np.argsort(digit, kind="stable")
        order = step if shift == 0 else order[step]
        shift += 16
    return order


def transpose_csr(adj: Tensor) -> Tensor:
    """The sparse CSR ``adj.T`` [M, N] of the sparse CSR ``adj`` [N, M] (the same CSR as
    ``adj.t().to_sparse_csr()``: a row's entries by ascending column), by a radix sort on
    the CPU."""
    if adj.device.type != "cpu":
        return to_csr(adj.t())
    crow, col, val = (t.detach().numpy() for t in (adj.crow_indices(), adj.col_indices(),
                                                   adj.values()))
    n, m = adj.shape
    order = radix_order(col)
    row = np.repeat(np.arange(n, dtype=col.dtype), np.diff(crow))
    crow_t = np.zeros(m + 1, dtype=crow.dtype)
    np.cumsum(np.bincount(col, minlength=m), out=crow_t[1:])
    return torch.sparse_csr_tensor(torch.from_numpy(crow_t), torch.from_numpy(row[order]),
                                   torch.from_numpy(val[order]), (m, n), check_invariants=False)


def to_csr(t: Tensor) -> Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return t.to_sparse_csr()


def first_rows(adj: Tensor, rows: int, cols: int) -> Tensor:
    """The first ``rows`` rows of the sparse CSR ``adj`` as [rows, cols] (a view of its
    arrays; the caller knows those rows name no column past ``cols``: a block's rows are
    ordered by hop, and so are the columns they name)."""
    if rows == adj.size(0) and cols == adj.size(1):
        return adj
    crow = adj.crow_indices()[: rows + 1]
    end = int(crow[-1])
    return torch.sparse_csr_tensor(crow, adj.col_indices()[:end], adj.values()[:end],
                                   (rows, cols), check_invariants=False)


def rows_csr(parts: list[tuple[Tensor, Tensor, Tensor]], num_rows: int,
             num_cols: int) -> Tensor:
    """Sparse CSR [num_rows, num_cols] of the entries ``(row, col, value)`` of ``parts``.

    When each part's rows are sorted (a sampled block's edges are, by destination), the
    CSR is laid out by counting (a row's entries: the first part's, then the next
    part's, each in its order), without a sort; otherwise by ``coalesce``. Repeated
    ``(row, col)`` pairs sum either way.
    """
    if not all(bool((r[1:] >= r[:-1]).all()) for r, _, _ in parts):
        row, col, val = (torch.cat(t) for t in zip(*parts, strict=True))
        coo = torch.sparse_coo_tensor(torch.stack([row, col]), val,
                                      (num_rows, num_cols), check_invariants=False)
        return to_csr(coo.coalesce())
    counts = [torch.bincount(r, minlength=num_rows) for r, _, _ in parts]
    crow = torch.zeros(num_rows + 1, dtype=torch.long, device=parts[0][0].device)
    torch.cumsum(sum(counts), 0, out=crow[1:])
    if len(parts) == 1:
        _, col, val = parts[0]
    else:
        nnz = int(crow[-1])
        col = parts[0][1].new_empty(nnz)
        val = parts[0][2].new_empty(nnz)
        done = torch.zeros_like(crow[1:])  # entries of earlier parts per row
        for (r, c, v), cnt in zip(parts, counts, strict=True):
            start = torch.cumsum(cnt, 0) - cnt  # a row's first entry within this part
            pos = crow[r] + done[r] - start[r] + torch.arange(r.numel(), device=r.device)
            col[pos], val[pos] = c, v
            done += cnt
    return torch.sparse_csr_tensor(crow, col, val, (num_rows, num_cols), check_invariants=False)


def mean_adjacency(dst: Tensor, src: Tensor, num_dst: int, num_src: int,
                   distinct: bool = False) -> Tensor:
    """Row-normalised sparse CSR [num_dst, num_src] with ``1 / deg(dst)`` per edge.

    ``A @ x_src`` is the mean of each destination's source neighbours (0 when it has
    none). Repeated (dst, src) pairs are merged first; ``distinct``: the caller knows there
    are none (a sampled block's edges), so none is looked for.
    """
    if distinct:
        deg = torch.bincount(dst, minlength=num_dst).clamp(min=1).float()
        return rows_csr([(dst, src, 1.0 / deg[dst])], num_dst, num_src)
    ei = unique_edges(torch.stack([dst.long(), src.long()]), num_src)
    deg = torch.bincount(ei[0], minlength=num_dst).clamp(min=1).float()
    values = 1.0 / deg[ei[0]]
    coo = torch.sparse_coo_tensor(
        ei, values, (num_dst, num_src), is_coalesced=True, check_invariants=False
    )
    return to_csr(coo)


LOSSES = ("bpr", "softmax", "full")


def ranking_loss(user: Tensor, item: Tensor, user_ego: Tensor, item_ego: Tensor, users: Tensor,
                 pos: Tensor, neg: Tensor, loss: str = "bpr",
                 temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(loss, l2)`` of a batch from final and ego embeddings (full graph or a subgraph).

    ``users``/``pos`` Long [B] and ``neg`` Long [B, K] index the rows of ``user``/``item``
    (and of the ego tensors). ``"bpr"``: mean ``softplus(s_neg - s_pos)`` over the B*K
    pairs. ``"softmax"``: sampled softmax, the mean over B of
    ``-log(exp(s_pos/t) / (exp(s_pos/t) + sum_k exp(s_neg_k/t)))``: each positive is
    ranked against all its K negatives at once, which the many-negatives recommender
    literature (e.g. Wu et al., "On the effectiveness of sampled softmax loss for item
    recommendation", 2023) finds stronger than BPR for LightGCN. ``"full"``: full
    softmax, the cross-entropy of each positive over ALL the ``item`` rows,
    ``-log(exp(s_pos/t) / sum_i exp(s_i/t))`` averaged over B (the negatives enter only
    the ``l2`` term); the log-sum-exp is computed once per distinct user of the batch
    (a [distinct users, I] score matrix), which on catalogues of thousands of items costs
    about one sampled-softmax step. On a sampled block the rows are only the block's
    items, so mini-batch training refuses it. ``l2`` as in :meth:`Recommender.bpr_loss`.
    """
    eu = user[users]  # [B, d]
    pos_score = (eu * item[pos]).sum(-1)  # [B]
    if loss == "bpr":
        neg_score = (eu.unsqueeze(1) * item[neg]).sum(-1)  # [B, K]
        value = F.softplus(neg_score - pos_score.unsqueeze(1)).mean()
    elif loss == "softmax":
        neg_score = (eu.unsqueeze(1) * item[neg]).sum(-1)  # [B, K]
        logits = torch.cat([pos_score.unsqueeze(1), neg_score], dim=1) / temperature
        value = (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
    elif loss == "full":
        distinct, row = torch.unique(users, return_inverse=True)
        lse = torch.logsumexp(user[distinct] @ item.t() / temperature, dim=1)  # [B_u]
        value = (lse[row] - pos_score / temperature).mean()
    else:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
    l2 = 0.5 * (user_ego[users].pow(2).sum() + item_ego[pos].pow(2).sum()
                + item_ego[neg].pow(2).sum() / neg.size(1)) / max(users.numel(), 1)
    return value, l2

def select_rows(adj: Tensor, rows: Tensor) -> Tensor:
    """Sparse CSR [len(rows), M]: the ``rows`` (Long[n]) of the sparse CSR ``adj`` [N, M]."""
    crow, col, val = adj.crow_indices(), adj.col_indices(), adj.values()
    start = crow[rows]
    count = crow[rows + 1] - start
    pos = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), count)
    first = torch.cumsum(count, 0) - count
    entry = start[pos] + torch.arange(pos.numel(), device=rows.device) - first[pos]
    new_crow = torch.cat([count.new_zeros(1), torch.cumsum(count, 0)])
    return torch.sparse_csr_tensor(new_crow, col[entry], val[entry], (rows.numel(), adj.size(1)),
                                   check_invariants=False)


class Recommender(torch.nn.Module):
    """Base class of the model families (see the module docstring).

    Attributes:
        name: registry key (``"lightgcn"``, ...), stored in runs.
        trainable: ``False`` for models without gradient training (they implement
            :meth:`solve`, or have nothing to fit).
        sampled: the model trains on sampled blocks (mini-batch) as well.
        sizes, num_users, num_items: the graph shape the model was built for.
        train_defaults: the training settings this model uses by default.
        sparse_grads: a block's id embeddings are gathered with ``sparse=True`` (:meth:`rows`),
            so that a sampled step's gradient holds only the block's rows
            (:class:`gnnrec.gnn.train.Adam` applies it); single-process mini-batch
            training turns it on, DDP keeps dense gradients.
    """

    name: ClassVar[str] = ""
    trainable: ClassVar[bool] = True
    sampled: ClassVar[bool] = False
    # TrainConfig settings `gnnrec train --model NAME` uses unless a flag says otherwise
    # (the loss, lr, l2... this model trains well with; chosen by tuning, see the README).
    train_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, sizes: GraphSizes) -> None:
        super().__init__()
        self.sizes = sizes
        self.num_users, self.num_items = sizes.num_users, sizes.num_items
        if self.num_users == 0 or self.num_items == 0:
            raise ValueError(
                f"graph needs users and items, got {self.num_users} users and "
                f"{self.num_items} items"
            )
        self._hparams: dict[str, Any] = {}
        self.sparse_grads = False

    def rows(self, table: torch.nn.Embedding, ids: Tensor) -> Tensor:
        """``table``'s rows ``ids`` (a block's nodes): a sparse gradient when
        :attr:`sparse_grads` is on."""
        return F.embedding(ids, table.weight, sparse=self.sparse_grads)

    # -- to implement ---------------------------------------------------------
    def forward(self, inputs: Any) -> Propagation:
        """Propagation over ``inputs`` (the full graph's or a sampled block's)."""
        raise NotImplementedError

    def inputs(self, view: TrainView) -> Any:
        """What :meth:`forward` reads of the full train graph (default: nothing)."""
        self.check_view(view)
        return None

    def block_inputs(self, view: TrainView) -> Any:
        """What :meth:`block` reads of the full train graph (default: :meth:`inputs`).

        Mini-batch training holds these during the epoch and builds the full-graph
        inputs only to evaluate; a model whose blocks read less of the graph than its
        full-graph forward (degrees, features) returns only that.
        """
        return self.inputs(view)

    def block(self, batch: HeteroData, inputs: Any) -> Any:
        """The input of a sampled link batch (local nodes ``batch[type].n_id``)."""
        raise NotImplementedError(f"{type(self).__name__} has no sampled forward")

    def edge_types(self) -> set[EdgeType]:
        """The edge types :meth:`forward` reads (what a mini-batch sampler samples)."""
        return {UI, IU}

    def cannot_sample(self) -> str | None:
        """Why this model cannot train on sampled blocks (None: it can)."""
        return None if self.sampled else f"{type(self).__name__} has no sampled forward"

    def solve(self, view: TrainView, epoch: int) -> dict[str, float]:
        """One epoch of a model trained without gradients (closed form, ALS sweep): update
        the state from ``view``; return the epoch's figures (``converged`` > 0 stops)."""
        raise NotImplementedError(f"{type(self).__name__} is trained by gradient steps")

    def loss(self, out: Propagation, users: Tensor, pos: Tensor, neg: Tensor,
             loss: str = "bpr", temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        """``(loss, l2)`` of a batch from this model's output (default: :func:`ranking_loss`;
        a model adds its own terms here, e.g. XSimGCL's contrastive one)."""
        return ranking_loss(out.user, out.item, out.user_ego, out.item_ego, users, pos, neg,
                            loss, temperature)

    # -- public interface -----------------------------------------------------
    def embeddings(self, inputs: Any) -> tuple[Tensor, Tensor]:
        """(user_emb [U, d], item_emb [I, d]) after propagation over ``inputs``."""
        out = self(inputs)
        return out.user, out.item

    def bpr_loss(self, inputs: Any, users: Tensor, pos: Tensor, neg: Tensor,
                 loss: str = "bpr", temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        """Ranking loss and L2 regulariser for a batch (see :func:`ranking_loss`).

        Args:
            inputs: the full graph's inputs (or a block's: then indices are local).
            users: Long [B] user indices.
            pos: Long [B] positive (train) item per user.
            neg: Long [B] or [B, K] sampled negative items.
            loss: ``"bpr"`` (default), ``"softmax"`` (sampled softmax) or ``"full"``
                (softmax over every item; see :func:`ranking_loss`).
            temperature: divides the scores of the softmax losses.

        Returns:
            ``(loss, l2)``: with ``"bpr"`` the mean of ``softplus(s_neg - s_pos)`` over
            the B*K pairs; ``l2`` = 0.5 * (||e_u||^2 + ||e_pos||^2 + mean_k ||e_neg_k||^2)
            summed over the batch / B, on the ego (layer-0) embeddings (LightGCN
            paper; with K=1 exactly the paper's term). The caller multiplies ``l2``
            by its weight decay and adds the two.
        """
        if neg.dim() not in (1, 2) or users.shape != pos.shape or neg.size(0) != users.size(0):
            raise ValueError(
                f"bpr_loss: users {list(users.shape)}, pos {list(pos.shape)} and neg "
                f"{list(neg.shape)} must be [B], [B] and [B] or [B, K]"
            )
        return self.loss(self(inputs), users, pos, neg.view(neg.size(0), -1), loss, temperature)

    def score(self, users: Tensor, inputs: Any) -> Tensor:
        """Float [B, I]: score of every item for each of the B ``users``."""
        user, item = self.embeddings(inputs)
        return user[users] @ item.t()

    def config(self) -> dict[str, Any]:
        """JSON-serialisable hyper-parameters: ``type(self)(sizes, **config())``."""
        return copy.deepcopy(self._hparams)

    def check_view(self, view: TrainView) -> None:
        """Raise ``ValueError`` when ``view`` is not a graph of this model's shape."""
        got = (view.num_users, view.num_items)
        if got != (self.num_users, self.num_items):
            raise ValueError(f"{type(self).__name__} was built for {self.num_users} users and "
                             f"{self.num_items} items, the graph has {got[0]} and {got[1]}")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self._hparams.items())
