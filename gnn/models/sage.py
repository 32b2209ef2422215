"""Heterogeneous, inductive GraphSAGE over users, items and tags.

Each layer is a :class:`torch_geometric.nn.HeteroConv` of
:class:`torch_geometric.nn.SAGEConv` over the edge types

    user -interacts-> item,  item -rev_interacts-> user,  user -friend-> user,
    tag -rev_has_tag-> item,  item -has_tag-> tag

built from TRAIN interactions only. The mean aggregation is a precomputed
row-normalised sparse CSR adjacency per edge type (``1 / deg`` values, passed to
``SAGEConv(aggr="sum")`` as ``adj_t``), so a full-graph layer is a few
``torch.sparse.mm`` calls: about 3x faster on CPU than scatter over ``edge_index``.

Node inputs are an id embedding PLUS what a node is known by without its id:

    user: id + Linear(user.x)                       (user.x when present)
    item: id + Linear(item.x) + mean of its tags' embeddings
    tag:  tag embedding

During training each node's id embedding is dropped with probability
``id_dropout``, so the network also learns to embed a node from its features and
neighbours alone. That is what :meth:`HeteroGraphSAGE.embed_new_user` and
:meth:`HeteroGraphSAGE.embed_new_item` do for a node not seen in training.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.nn import HeteroConv, SAGEConv

from .base import (
    FRIEND,
    HAS_TAG,
    INTERACTS,
    ITEM,
    REV_HAS_TAG,
    REV_INTERACTS,
    TAG,
    USER,
    Propagation,
    Recommender,
    check_range,
    edge_index_or_empty,
    mean_adjacency,
    num_nodes,
    spmm,
    train_edge_index,
    unique_edges,
)

EdgeType = tuple[str, str, str]
_ADJ_NAMES: dict[EdgeType, str] = {
    INTERACTS: "adj_interacts",
    REV_INTERACTS: "adj_rev_interacts",
    FRIEND: "adj_friend",
    HAS_TAG: "adj_has_tag",
    REV_HAS_TAG: "adj_rev_has_tag",
}


class _SAGEConv(SAGEConv):
    """:class:`SAGEConv` whose sparse aggregation uses :func:`spmm` (cached
    transpose in the backward pass). Pass a row-normalised CSR ``adj_t`` and
    ``aggr="sum"`` for mean aggregation."""

    def message_and_aggregate(self, adj_t: Any, x: Any) -> Tensor:
        if isinstance(adj_t, Tensor) and adj_t.layout == torch.sparse_csr and self.aggr == "sum":
            return spmm(adj_t, x[0])
        return super().message_and_aggregate(adj_t, x)


def _friend_pairs(edge_index: Tensor, num_users: int) -> Tensor:
    """Long [2, F]: distinct friendships in both directions, no self-loops."""
    a, b = edge_index.long()
    keep = a != b
    both = torch.stack([torch.cat([a[keep], b[keep]]), torch.cat([b[keep], a[keep]])])
    return unique_edges(both, num_users)


class HeteroGraphSAGE(Recommender):
    """Inductive heterogeneous GraphSAGE recommender; scores by dot product.

    Args:
        graph: the HeteroData (train interactions, friendships, item tags,
            optional ``graph['user'].x`` [U, Fu] and ``graph['item'].x`` [I, Fi]).
        embedding_dim: d, the width of every layer.
        num_layers: number of HeteroConv layers (2 by default).
        dropout: feature dropout between layers.
        id_dropout: probability of dropping a node's id embedding in training.
        use_friends: use ``('user','friend','user')``; ``None`` = when the graph has
            friend edges.
        use_tags: use tag nodes; ``None`` = when the graph has tags and
            ``('item','has_tag','tag')`` edges.
        use_features: add a projection of ``x`` where the graph has it.
        init_std: std of the normal initialisation of id and tag embeddings.

    ``config()`` stores ``use_friends`` / ``use_tags`` resolved to booleans.
    Shapes: ``embeddings()`` -> ([U, d], [I, d]); ``score(users [B])`` -> [B, I];
    ``embed_new_user(...)`` and ``embed_new_item(...)`` -> [d].
    """

    name = "graphsage"
    train_defaults: ClassVar[dict[str, Any]] = {
        "loss": "softmax", "num_negatives": 16, "lr": 2e-3, "l2": 1e-4}

    def __init__(
        self,
        graph: HeteroData,
        embedding_dim: int = 64,
        num_layers: int = 2,
        dropout: float = 0.0,
        id_dropout: float = 0.2,
        use_friends: bool | None = None,
        use_tags: bool | None = None,
        use_features: bool = True,
        init_std: float = 0.1,
    ) -> None:
        super().__init__(graph)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not 0.0 <= id_dropout <= 1.0 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"bad dropout ({dropout}) or id_dropout ({id_dropout})")
        num_users, num_items = self.num_users, self.num_items
        friends = edge_index_or_empty(graph, FRIEND)
        tags = edge_index_or_empty(graph, HAS_TAG)
        self.num_tags = num_nodes(graph, TAG)
        if use_friends is None:
            use_friends = friends.numel() > 0
        if use_tags is None:
            use_tags = self.num_tags > 0 and tags.numel() > 0
        if use_tags and self.num_tags == 0:
            raise ValueError("use_tags=True but the graph has no 'tag' nodes")
        self._hparams = {
            "embedding_dim": int(embedding_dim),
            "num_layers": int(num_layers),
            "dropout": float(dropout),
            "id_dropout": float(id_dropout),
            "use_friends": bool(use_friends),
            "use_tags": bool(use_tags),
            "use_features": bool(use_features),
            "init_std": float(init_std),
        }
        self.embedding_dim = embedding_dim
        self.num_layers = num_layers
        self.dropout = dropout
        self.id_dropout = id_dropout
        self.use_friends = bool(use_friends)
        self.use_tags = bool(use_tags)

        # Structure (non-persistent: derived from the graph, moved by .to()).
        ui = unique_edges(train_edge_index(graph), num_items)
        check_range(friends, num_users, num_users, str(FRIEND))
        check_range(tags, num_items, self.num_tags, str(HAS_TAG))
        ff = _friend_pairs(friends, num_users) if self.use_friends else friends[:, :0]
        it = unique_edges(tags, self.num_tags) if self.use_tags else tags[:, :0]
        self.register_buffer("ui_edge_index", ui, persistent=False)
        self.register_buffer("friend_edge_index", ff, persistent=False)
        self.register_buffer("tag_edge_index", it, persistent=False)
        for edge_type, adj in self._adjacency(ui, ff, it, num_users, num_items).items():
            self.register_buffer(_ADJ_NAMES[edge_type], adj, persistent=False)

        # Inputs.
        self.user_id = torch.nn.Embedding(num_users, embedding_dim)
        self.item_id = torch.nn.Embedding(num_items, embedding_dim)
        torch.nn.init.normal_(self.user_id.weight, std=init_std)
        torch.nn.init.normal_(self.item_id.weight, std=init_std)
        self.tag_embedding: torch.nn.Embedding | None = None
        if self.use_tags:
            self.tag_embedding = torch.nn.Embedding(self.num_tags, embedding_dim)
            torch.nn.init.normal_(self.tag_embedding.weight, std=init_std)
        self.user_proj = self._projection(graph, USER, use_features, "user_x")
        self.item_proj = self._projection(graph, ITEM, use_features, "item_x")

        # Layers; the last one skips item -> tag (tag outputs are not scored).
        self.convs = torch.nn.ModuleList()
        for layer in range(num_layers):
            types = self._edge_types(last=layer == num_layers - 1)
            convs = {
                et: _SAGEConv((embedding_dim, embedding_dim), embedding_dim, aggr="sum")
                for et in types
            }
            with warnings.catch_warnings():  # last layer: 'tag' is not a destination
                warnings.filterwarnings("ignore", message=".*do not occur as destination")
                self.convs.append(HeteroConv(convs, aggr="sum"))

    # -- construction helpers -------------------------------------------------
    def _projection(
        self, graph: HeteroData, node_type: str, use_features: bool, buffer: str
    ) -> torch.nn.Linear | None:
        x = graph[node_type].get("x") if use_features else None
        if x is None:
            return None
        n = num_nodes(graph, node_type)
        if x.dim() != 2 or x.size(0) != n:
            raise ValueError(f"graph['{node_type}'].x must be [{n}, F], got {list(x.shape)}")
        self.register_buffer(buffer, x.float(), persistent=False)
        return torch.nn.Linear(x.size(1), self.embedding_dim)

    def _edge_types(self, last: bool) -> list[EdgeType]:
        types = [INTERACTS, REV_INTERACTS]
        if self.use_friends:
            types.append(FRIEND)
        if self.use_tags:
            types.append(REV_HAS_TAG)
            if not last:
                types.append(HAS_TAG)
        return types

    def _adjacency(
        self, ui: Tensor, ff: Tensor, it: Tensor, num_users: int, num_items: int
    ) -> dict[EdgeType, Tensor]:
        """Mean-aggregation ``adj_t`` [num_dst, num_src] per edge type."""
        u, i = ui
        adj = {
            INTERACTS: mean_adjacency(i, u, num_items, num_users),
            REV_INTERACTS: mean_adjacency(u, i, num_users, num_items),
        }
        if self.use_friends:
            adj[FRIEND] = mean_adjacency(ff[1], ff[0], num_users, num_users)
        if self.use_tags:
            adj[HAS_TAG] = mean_adjacency(it[1], it[0], self.num_tags, num_items)
            adj[REV_HAS_TAG] = mean_adjacency(it[0], it[1], num_items, self.num_tags)
        return {et: a.to(ui.device) for et, a in adj.items()}

    def _stored_adjacency(self) -> dict[EdgeType, Tensor]:
        return {et: getattr(self, name) for et, name in _ADJ_NAMES.items() if hasattr(self, name)}

    # -- forward ----------------------------------------------------------------
    def _inputs(
        self,
        adj: dict[EdgeType, Tensor],
        new_user: bool = False,
        new_item: bool = False,
        new_item_x: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Layer-0 features {user: [U(+1), d], item: [I(+1), d], tag: [T, d]}.

        A new node (``new_user`` / ``new_item``, appended last) has no id
        embedding; a new item gets ``Linear(new_item_x)`` when given.
        """
        user, item = self.user_id.weight, self.item_id.weight
        if self.training and self.id_dropout > 0:
            user = user * (torch.rand_like(user[:, :1]) >= self.id_dropout)
            item = item * (torch.rand_like(item[:, :1]) >= self.id_dropout)
        if self.user_proj is not None:
            user = user + self.user_proj(self.user_x)
        if self.item_proj is not None:
            item = item + self.item_proj(self.item_x)
        if new_user:
            user = torch.cat([user, user.new_zeros(1, user.size(1))])
        if new_item:
            extra = item.new_zeros(1, item.size(1))
            if new_item_x is not None and self.item_proj is not None:
                extra = extra + self.item_proj(new_item_x.to(item).view(1, -1))
            item = torch.cat([item, extra])
        x = {USER: user, ITEM: item}
        if self.tag_embedding is not None:
            tag = self.tag_embedding.weight
            x[ITEM] = item + spmm(adj[REV_HAS_TAG], tag)
            x[TAG] = tag
        return x

    def _encode(self, x: dict[str, Tensor], adj: dict[EdgeType, Tensor]) -> dict[str, Tensor]:
        for layer, conv in enumerate(self.convs):
            out = conv(x, adj)
            if layer < self.num_layers - 1:
                out = {k: F.dropout(F.relu(v), self.dropout, self.training) for k, v in out.items()}
            x = out
        return x

    def propagate(self) -> Propagation:
        adj = self._stored_adjacency()
        x = self._inputs(adj)
        out = self._encode(x, adj)
        return Propagation(out[USER], out[ITEM], x[USER], x[ITEM])

    # -- inductive embeddings -------------------------------------------------------
    def embed_new_user(self, item_idx: Tensor, friend_idx: Tensor | None = None) -> Tensor:
        """Float [d]: embedding of a user not in the graph, from its items and friends.

        The user is added as node U (no id embedding, zero features) with edges to
        ``item_idx`` (Long [k]) and, when friends are used, to ``friend_idx``
        (Long [f]); the network then runs on the TRAIN graph plus those edges.
        Call under ``torch.no_grad()`` and in eval mode for serving.
        """
        device = self.ui_edge_index.device
        item_idx = item_idx.long().view(-1).to(device)
        check_range(
            torch.stack([item_idx, item_idx]),
            self.num_items,
            self.num_items,
            "embed_new_user item_idx",
        )
        new = self.num_users
        ui = torch.cat(
            [self.ui_edge_index, torch.stack([torch.full_like(item_idx, new), item_idx])], dim=1
        )
        ff = self.friend_edge_index
        if self.use_friends and friend_idx is not None and friend_idx.numel() > 0:
            f = friend_idx.long().view(-1).to(device)
            check_range(
                torch.stack([f, f]), self.num_users, self.num_users, "embed_new_user friend_idx"
            )
            ff = _friend_pairs(
                torch.cat([ff, torch.stack([torch.full_like(f, new), f])], dim=1), new + 1
            )
        adj = self._adjacency(ui, ff, self.tag_edge_index, new + 1, self.num_items)
        out = self._encode(self._inputs(adj, new_user=True), adj)
        return out[USER][new]

    def embed_new_item(
        self, tag_idx: Tensor, x: Tensor | None = None, user_idx: Tensor | None = None
    ) -> Tensor:
        """Float [d]: embedding of an item not in the graph.

        The item is added as node I (no id embedding) with its tags ``tag_idx``
        (Long [t]; may be empty), attributes ``x`` (Float [Fi]) and the users who
        interacted with it ``user_idx`` (Long [k]), when known.
        """
        device = self.ui_edge_index.device
        new = self.num_items
        it = self.tag_edge_index
        if self.use_tags and tag_idx.numel() > 0:
            t = tag_idx.long().view(-1).to(device)
            check_range(torch.stack([t, t]), self.num_tags, self.num_tags, "embed_new_item tag_idx")
            it = torch.cat([it, torch.stack([torch.full_like(t, new), t])], dim=1)
        ui = self.ui_edge_index
        if user_idx is not None and user_idx.numel() > 0:
            u = user_idx.long().view(-1).to(device)
            check_range(
                torch.stack([u, u]), self.num_users, self.num_users, "embed_new_item user_idx"
            )
            ui = torch.cat([ui, torch.stack([u, torch.full_like(u, new)])], dim=1)
        adj = self._adjacency(ui, self.friend_edge_index, it, self.num_users, new + 1)
        out = self._encode(self._inputs(adj, new_item=True, new_item_x=x), adj)
        return out[ITEM][new]
