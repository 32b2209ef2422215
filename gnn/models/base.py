"""The interface every recommender implements, and graph helpers shared by the models.

A model is built from a :class:`~torch_geometric.data.HeteroData` (see
``gnn/data.py`` for the layout) plus plain typed hyper-parameters::

    model = LightGCN(graph, embedding_dim=64, num_layers=3)
    again = LightGCN(graph, **model.config())      # same structure
    again.load_state_dict(model.state_dict())      # same weights

Structure derived from the graph (adjacency matrices, edge lists, counts used as
features) is registered as *non-persistent* buffers: it moves with ``.to(device)``
but is not part of the ``state_dict``, which holds only what was learned. Models
use only TRAIN interactions (``split == 0``) to build that structure.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

USER, ITEM, TAG = "user", "item", "tag"
INTERACTS = (USER, "interacts", ITEM)
REV_INTERACTS = (ITEM, "rev_interacts", USER)
FRIEND = (USER, "friend", USER)
HAS_TAG = (ITEM, "has_tag", TAG)
REV_HAS_TAG = (TAG, "rev_has_tag", ITEM)

TRAIN = 0


class Propagation(NamedTuple):
    """Output of :meth:`Recommender.propagate`.

    ``user`` [U, d] and ``item`` [I, d] are the final (scoring) embeddings;
    ``user_ego`` [U, d0] and ``item_ego`` [I, d0] the layer-0 inputs that the L2
    regulariser of :meth:`Recommender.bpr_loss` is applied to.
    """

    user: Tensor
    item: Tensor
    user_ego: Tensor
    item_ego: Tensor


def num_nodes(graph: HeteroData, node_type: str) -> int:
    """Number of nodes of ``node_type`` (0 when the type is absent)."""
    if node_type not in graph.node_types:
        return 0
    n = graph[node_type].num_nodes
    return int(n) if n is not None else 0


def edge_index_or_empty(graph: HeteroData, edge_type: tuple[str, str, str]) -> Tensor:
    """``graph[edge_type].edge_index`` as Long [2, E], or an empty [2, 0] when absent."""
    if edge_type not in graph.edge_types or "edge_index" not in graph[edge_type]:
        return torch.empty(2, 0, dtype=torch.long)
    ei = graph[edge_type].edge_index
    if ei.dim() != 2 or ei.size(0) != 2:
        raise ValueError(f"{edge_type}: edge_index must have shape [2, E], got {list(ei.shape)}")
    return ei.long()


def train_mask(graph: HeteroData, edge_type: tuple[str, str, str] = INTERACTS) -> Tensor:
    """Bool [E]: which interaction edges are training edges (``split == 0``).

    A graph without a ``split`` attribute has not been split, so every edge counts
    as training (there is no held-out edge that could leak).
    """
    ei = edge_index_or_empty(graph, edge_type)
    store = graph[edge_type] if edge_type in graph.edge_types else None
    if store is None or "split" not in store:
        return torch.ones(ei.size(1), dtype=torch.bool)
    split = store.split
    if split.numel() != ei.size(1):
        raise ValueError(
            f"{edge_type}: split has {split.numel()} entries but edge_index has {ei.size(1)} edges"
        )
    return split == TRAIN


def train_edge_index(graph: HeteroData) -> Tensor:
    """Long [2, E_train]: (user, item) pairs of the training interactions only."""
    ei = edge_index_or_empty(graph, INTERACTS)[:, train_mask(graph)]
    check_range(ei, num_nodes(graph, USER), num_nodes(graph, ITEM), str(INTERACTS))
    return ei


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

    Same as ``torch.sparse.mm`` but the backward pass reuses ``adj`` itself when
    ``symmetric`` and otherwise a transpose cached on the ``adj`` tensor object,
    instead of converting ``adj.t()`` to CSR on every backward (about 2x faster
    forward + backward on CPU for a fixed adjacency).
    """
    if not x.requires_grad:
        return torch.sparse.mm(adj, x)
    return _SpMM.apply(adj, x, symmetric)


class _SpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, adj: Tensor, x: Tensor, symmetric: bool) -> Tensor:
        ctx.adj = adj
        ctx.symmetric = symmetric
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        adj = ctx.adj
        if ctx.symmetric:
            adj_t = adj
        else:
            adj_t = getattr(adj, "_gnnrec_transpose", None)
            if adj_t is None:
                adj_t = to_csr(adj.t())
                adj._gnnrec_transpose = adj_t
        return None, torch.sparse.mm(adj_t, grad), None


def to_csr(t: Tensor) -> Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return t.to_sparse_csr()


def mean_adjacency(dst: Tensor, src: Tensor, num_dst: int, num_src: int) -> Tensor:
    """Row-normalised sparse CSR [num_dst, num_src] with ``1 / deg(dst)`` per edge.

    ``A @ x_src`` is the mean of each destination's source neighbours (0 when it has
    none). Repeated (dst, src) pairs are merged first.
    """
    ei = unique_edges(torch.stack([dst.long(), src.long()]), num_src)
    deg = torch.bincount(ei[0], minlength=num_dst).clamp(min=1).float()
    values = 1.0 / deg[ei[0]]
    coo = torch.sparse_coo_tensor(
        ei, values, (num_dst, num_src), is_coalesced=True, check_invariants=False
    )
    return to_csr(coo)


LOSSES = ("bpr", "softmax")


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
    recommendation", 2023) finds stronger than BPR for LightGCN. ``l2`` as in
    :meth:`Recommender.bpr_loss`.
    """
    eu = user[users]  # [B, d]
    pos_score = (eu * item[pos]).sum(-1)  # [B]
    neg_score = (eu.unsqueeze(1) * item[neg]).sum(-1)  # [B, K]
    if loss == "bpr":
        value = F.softplus(neg_score - pos_score.unsqueeze(1)).mean()
    elif loss == "softmax":
        logits = torch.cat([pos_score.unsqueeze(1), neg_score], dim=1) / temperature
        value = (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
    else:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
    l2 = 0.5 * (user_ego[users].pow(2).sum() + item_ego[pos].pow(2).sum()
                + item_ego[neg].pow(2).sum() / neg.size(1)) / max(users.numel(), 1)
    return value, l2


class Recommender(torch.nn.Module):
    """Base class: full-graph propagation, BPR loss, full-ranking scores.

    Subclasses implement :meth:`propagate` and set ``self._hparams`` to the
    JSON-serialisable constructor arguments (without the graph).

    Attributes:
        name: registry key (``"lightgcn"``, ...), stored in checkpoints.
        train_defaults: the training settings this model uses by default.
        trainable: ``False`` for models with no parameters (the training loop
            skips optimisation for them).
        num_users, num_items: U and I of the graph the model was built from.
    """

    name: ClassVar[str] = ""
    trainable: ClassVar[bool] = True
    # TrainConfig settings `gnnrec train --model NAME` uses unless a flag says otherwise
    # (the loss, lr, l2... this model trains well with; chosen by tuning, see the README).
    train_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, graph: HeteroData) -> None:
        super().__init__()
        self.num_users = num_nodes(graph, USER)
        self.num_items = num_nodes(graph, ITEM)
        if self.num_users == 0 or self.num_items == 0:
            raise ValueError(
                f"graph needs users and items, got {self.num_users} users and "
                f"{self.num_items} items"
            )
        self._hparams: dict[str, Any] = {}
        self._cache: tuple[tuple[Any, ...], Tensor, Tensor] | None = None

    # -- to implement ---------------------------------------------------------
    def propagate(self) -> Propagation:
        """Full-graph forward over the training structure."""
        raise NotImplementedError

    # -- public interface -----------------------------------------------------
    def forward(self) -> tuple[Tensor, Tensor]:
        """Same as :meth:`embeddings`."""
        return self.embeddings()

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """(user_emb [U, d], item_emb [I, d]) after propagation."""
        out = self.propagate()
        return out.user, out.item

    def bpr_loss(self, users: Tensor, pos: Tensor, neg: Tensor, loss: str = "bpr",
                 temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        """Ranking loss and L2 regulariser for a batch (see :func:`ranking_loss`).

        Args:
            users: Long [B] user indices.
            pos: Long [B] positive (train) item per user.
            neg: Long [B] or [B, K] sampled negative items.
            loss: ``"bpr"`` (default) or ``"softmax"`` (sampled softmax).
            temperature: divides the scores of the softmax loss.

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
        out = self.propagate()
        return ranking_loss(out.user, out.item, out.user_ego, out.item_ego, users, pos,
                            neg.view(neg.size(0), -1), loss, temperature)

    def score(self, users: Tensor) -> Tensor:
        """Float [B, I]: score of every item for each of the B ``users``.

        In eval mode the propagated embeddings are cached (without autograd) and
        reused until a parameter or buffer changes (in-place optimiser steps and
        ``load_state_dict`` bump tensor versions), the device changes or
        :meth:`train` is called.
        """
        if self.training:
            user, item = self.embeddings()
        else:
            user, item = self._cached_embeddings()
        return user[users] @ item.t()

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor hyper-parameters: ``type(self)(graph, **config())``."""
        return copy.deepcopy(self._hparams)

    # -- caching --------------------------------------------------------------
    def _state_key(self) -> tuple[Any, ...]:
        tensors = list(self.parameters()) + list(self.buffers())
        return tuple((id(t), t._version, t.device) for t in tensors)

    def _cached_embeddings(self) -> tuple[Tensor, Tensor]:
        key = self._state_key()
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                user, item = self.embeddings()
            self._cache = (key, user, item)
        return self._cache[1], self._cache[2]

    def invalidate_cache(self) -> None:
        """Drop cached embeddings (done automatically; public for explicit use)."""
        self._cache = None

    def train(self, mode: bool = True) -> Recommender:
        self._cache = None
        return super().train(mode)

    def _apply(self, fn: Any, recurse: bool = True) -> Recommender:
        self._cache = None
        return super()._apply(fn, recurse)

    def __deepcopy__(self, memo: dict[int, Any]) -> Recommender:
        # torch cannot deepcopy sparse CSR tensors (no storage): clone those buffers
        # first so deepcopy finds them in ``memo``; drop the cached embeddings.
        for buf in self.buffers():
            if buf.layout != torch.strided and id(buf) not in memo:
                memo[id(buf)] = buf.clone()
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = None if key == "_cache" else copy.deepcopy(value, memo)
        return new

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self._hparams.items())
