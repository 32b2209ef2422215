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

The same ``forward`` runs on a sampled block (mini-batch training): the layers average
each destination's SAMPLED in-neighbours per edge type over the block's local nodes, and
an item's input uses all its tags, exactly as on the full graph.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.nn import HeteroConv, SAGEConv

from gnnrec.gnn.data import IT, ITEM, IU, TAG, TI, UI, USER, UU, EdgeType

from .base import (
    GraphSizes,
    Inputs,
    Propagation,
    Recommender,
    cached_transpose,
    check_range,
    first_rows,
    mean_adjacency,
    select_rows,
    spmm,
    spmm_head,
    unique_edges,
)

if TYPE_CHECKING:
    from gnnrec.gnn.views import TrainView


@dataclass
class SageInputs(Inputs):
    """What :meth:`HeteroGraphSAGE.forward` reads.

    ``adj``: per edge type the mean-aggregation ``adj_t`` [n_dst, n_src] (sparse CSR);
    ``x``: features of the users / items (those the model projects); ``item_tags``
    [n_items, T]: the mean over each item's tags (all of them, also in a block);
    ``n_id``: a block's global ids per node type (None: every node, in order);
    ``edges``: the full graph's distinct edges per edge type (to embed new nodes);
    ``hops``: a block's node counts per type, cumulative by hop (``hops[nt][h]``: its
    nodes first reached at hop ``h`` or before), by which layer ``l`` of ``L`` computes
    only the nodes within ``L - 1 - l`` hops of the seeds (None: every node, every layer);
    ``layers``: a block's adjacencies per layer, trimmed to the rows and columns that layer
    reads (views of ``adj``'s arrays), their transposes built (None: ``adj`` and ``hops``).
    """

    adj: dict[EdgeType, Tensor]
    x: dict[str, Tensor]
    item_tags: Tensor | None = None
    n_id: dict[str, Tensor] | None = None
    edges: dict[EdgeType, Tensor] | None = None
    hops: dict[str, list[int]] | None = None
    layers: list[dict[EdgeType, Tensor]] | None = None


class _SAGEConv(SAGEConv):
    """:class:`SAGEConv` whose sparse aggregation uses :func:`spmm` (cached
    transpose in the backward pass). Pass a row-normalised CSR ``adj_t`` and
    ``aggr="sum"`` for mean aggregation."""

    def message_and_aggregate(self, adj_t: Any, x: Any) -> Tensor:
        if isinstance(adj_t, Tensor) and adj_t.layout == torch.sparse_csr and self.aggr == "sum":
            return spmm(adj_t, x[0])
        return super().message_and_aggregate(adj_t, x)


def _with_tags(item: Tensor, item_tags: Tensor, tag: Tensor, block: bool) -> Tensor:
    """``item`` [n_items, d] plus the mean of each item's tag embeddings (``item_tags``
    [n_items, T] holds ``1 / deg`` per tag). The full graph: one sparse product; a block:
    its few rows added by ``index_add`` (the same sum, in the order mini-batch runs were
    measured in)."""
    if not block:
        return item + spmm(item_tags, tag)
    crow, col, val = item_tags.crow_indices(), item_tags.col_indices(), item_tags.values()
    row = torch.repeat_interleave(torch.arange(crow.numel() - 1, device=crow.device),
                                  crow[1:] - crow[:-1])
    return item.index_add(0, row, tag[col] * val[:, None])


def _hetero_layer(conv: HeteroConv, x: dict[str, Tensor], adj: dict[EdgeType, Tensor],
                  keep: dict[str, int] | None) -> dict[str, Tensor]:
    """``HeteroConv(aggr="sum")`` of :class:`_SAGEConv` s (mean aggregation, root weight,
    no normalisation) on ``x``, for the first ``keep[nt]`` destinations of each type
    (None: all). Per destination type: ``x_dst @ (sum of the root weights).T`` plus each
    edge type's ``lin_l`` of its aggregate, one matrix product per term (the sum of the
    per-edge-type ``SAGEConv`` outputs, with one root product instead of one per edge type);
    where an edge type has fewer sources than destinations, its sources are transformed
    before the mean (the same product, ``A (X W) = (A X) W``, on fewer rows). In a trimmed
    layer the destinations' own rows come with the product of an edge type between nodes
    of their type (:func:`spmm_head`: no zero-padded gradient of the slice).
    """
    by_dst: dict[str, list[tuple[EdgeType, _SAGEConv]]] = {}
    for et, c in conv.convs.items():
        et = tuple(et.split("__")) if isinstance(et, str) else et
        if et[0] in x and et[2] in x:
            by_dst.setdefault(et[2], []).append((et, c))
    out = {}
    for dst, convs in by_dst.items():
        n_dst = x[dst].size(0) if keep is None else keep[dst]
        loop = next((et for et, _ in convs if et[0] == dst), None)
        loop_agg = None
        if loop is not None and n_dst < x[dst].size(0):  # trimmed: the slice rides along
            loop_agg, x_dst = spmm_head(first_rows(adj[loop], n_dst, x[dst].size(0)), x[dst],
                                        n_dst, x[dst].new_ones(()))
        else:
            x_dst = x[dst][:n_dst]
        root = sum(c.lin_r.weight for _, c in convs)
        bias = sum(c.lin_l.bias for _, c in convs)
        h = F.linear(x_dst, root, bias)
        for et, c in convs:
            x_src = x[et[0]]
            a = first_rows(adj[et], n_dst, x_src.size(0))
            if et == loop and loop_agg is not None:
                h = torch.addmm(h, loop_agg, c.lin_l.weight.t())
            elif x_src.size(0) < n_dst:  # fewer sources: transform them, then aggregate
                h = h + spmm(a, F.linear(x_src, c.lin_l.weight))
            else:
                h = torch.addmm(h, spmm(a, x_src), c.lin_l.weight.t())
        out[dst] = h
    return out


def _friend_pairs(edge_index: Tensor, num_users: int) -> Tensor:
    """Long [2, F]: distinct friendships in both directions, no self-loops."""
    a, b = edge_index.long()
    keep = a != b
    both = torch.stack([torch.cat([a[keep], b[keep]]), torch.cat([b[keep], a[keep]])])
    return unique_edges(both, num_users)


class HeteroGraphSAGE(Recommender):
    """Inductive heterogeneous GraphSAGE recommender; scores by dot product.

    Args:
        sizes: the graph's shape (its inputs: train interactions, friendships, item
            tags, optional user features [U, Fu] and item features [I, Fi]).
        embedding_dim: d, the width of every layer.
        num_layers: number of HeteroConv layers (2 by default).
        dropout: feature dropout between layers.
        id_dropout: probability of dropping a node's id embedding in training.
        use_friends: use ``('user','friend','user')``; ``None`` = when the graph has
            friend edges.
        use_tags: use tag nodes; ``None`` = when the graph has tags and
            ``('item','has_tag','tag')`` edges.
        use_features: add a projection of the node features where the graph has them.
        init_std: std of the normal initialisation of id and tag embeddings.

    ``config()`` stores ``use_friends`` / ``use_tags`` resolved to booleans.
    Shapes: ``forward(inputs)`` -> user [U, d], item [I, d] (a block: its local nodes);
    ``embed_new_user(...)`` and ``embed_new_item(...)`` -> [d].
    """

    name = "graphsage"
    sampled = True
    train_defaults: ClassVar[dict[str, Any]] = {
        "loss": "softmax", "num_negatives": 16, "lr": 2e-3, "l2": 1e-4}

    def __init__(
        self,
        sizes: GraphSizes,
        embedding_dim: int = 64,
        num_layers: int = 2,
        dropout: float = 0.0,
        id_dropout: float = 0.2,
        use_friends: bool | None = None,
        use_tags: bool | None = None,
        use_features: bool = True,
        init_std: float = 0.1,
    ) -> None:
        super().__init__(sizes)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not 0.0 <= id_dropout <= 1.0 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"bad dropout ({dropout}) or id_dropout ({id_dropout})")
        num_users, num_items = self.num_users, self.num_items
        self.num_tags = sizes.num_tags
        if use_friends is None:
            use_friends = sizes.friend_edges > 0
        if use_tags is None:
            use_tags = self.num_tags > 0 and sizes.tag_edges > 0
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

        # Inputs.
        self.user_id = torch.nn.Embedding(num_users, embedding_dim)
        self.item_id = torch.nn.Embedding(num_items, embedding_dim)
        torch.nn.init.normal_(self.user_id.weight, std=init_std)
        torch.nn.init.normal_(self.item_id.weight, std=init_std)
        self.tag_embedding: torch.nn.Embedding | None = None
        if self.use_tags:
            self.tag_embedding = torch.nn.Embedding(self.num_tags, embedding_dim)
            torch.nn.init.normal_(self.tag_embedding.weight, std=init_std)
        self.user_proj = (torch.nn.Linear(sizes.user_features, embedding_dim)
                          if use_features and sizes.user_features else None)
        self.item_proj = (torch.nn.Linear(sizes.item_features, embedding_dim)
                          if use_features and sizes.item_features else None)

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

    # -- inputs ---------------------------------------------------------------------
    def edge_types(self) -> set[EdgeType]:
        return set(self._edge_types(last=False))

    def inputs(self, view: TrainView) -> SageInputs:
        """Mean adjacencies of the train graph, the node features and the item tags."""
        self.check_view(view)
        num_users, num_items = self.num_users, self.num_items
        ui = unique_edges(view.edge_index(UI), num_items)
        friends = view.edge_index(UU)
        check_range(friends, num_users, num_users, str(UU))
        ff = _friend_pairs(friends, num_users) if self.use_friends else friends[:, :0]
        it = self._tag_edges(view)
        adj = self._adjacency(ui, ff, it, num_users, num_items)
        return SageInputs(adj, self._features(view), adj.get(TI), edges={UI: ui, UU: ff, IT: it})

    def block_inputs(self, view: TrainView) -> SageInputs:
        """What a block reads of the full graph: the node features and the item tags (the
        same tensors as :meth:`inputs`' ``x`` and ``item_tags``), no adjacency."""
        self.check_view(view)
        it = self._tag_edges(view)
        item_tags = (mean_adjacency(it[0], it[1], self.num_items, self.num_tags)
                     if self.use_tags else None)
        return SageInputs({}, self._features(view), item_tags)

    def check_view(self, view: TrainView) -> None:
        super().check_view(view)
        if self.use_tags and view.num_nodes["tag"] != self.num_tags:
            raise ValueError(f"GraphSAGE was built for {self.num_tags} tags, the graph has "
                             f"{view.num_nodes['tag']}")

    def _tag_edges(self, view: TrainView) -> Tensor:
        """Long[2, T] the distinct train (item, tag) edges (none without ``use_tags``)."""
        tags = view.edge_index(IT)
        return unique_edges(tags, self.num_tags) if self.use_tags else tags[:, :0]

    def _features(self, view: TrainView) -> dict[str, Tensor]:
        """The node features the model projects, checked against its projections."""
        x = {}
        for nt, proj in ((USER, self.user_proj), (ITEM, self.item_proj)):
            feats = view.features(nt)
            if proj is not None:
                if feats is None or feats.size(1) != proj.in_features:
                    got = None if feats is None else list(feats.shape)
                    raise ValueError(f"graph['{nt}'].x must be [{view.num_nodes[nt]}, "
                                     f"{proj.in_features}], got {got}")
                x[nt] = feats
        return x

    def block(self, batch: HeteroData, inputs: SageInputs) -> SageInputs:
        """Mean adjacencies over a sampled batch's local nodes and edges."""
        dev = self.user_id.weight.device
        n_id = {nt: batch[nt].n_id.to(dev) for nt in (USER, ITEM, TAG)}
        adj = {}
        for et in self._edge_types(last=False):
            ei = batch[et].edge_index.to(dev)
            n_src, n_dst = int(batch[et[0]].num_nodes), int(batch[et[2]].num_nodes)
            adj[et] = mean_adjacency(ei[1], ei[0], n_dst, n_src,
                                     distinct=bool(getattr(batch[et], "distinct", False)))
        x = {nt: batch[nt].x.to(dev) for nt in inputs.x}
        item_tags = (select_rows(inputs.item_tags, n_id[ITEM])
                     if inputs.item_tags is not None else None)
        hops = {nt: list(itertools.accumulate(batch[nt].num_sampled_nodes))
                for nt in (USER, ITEM, TAG) if "num_sampled_nodes" in batch[nt]}
        deep = len(hops) == 3 and all(len(h) > self.num_layers for h in hops.values())
        if not deep:
            return SageInputs(adj, x, item_tags, n_id)
        return SageInputs(adj, x, item_tags, n_id, hops=hops, layers=self._trimmed(adj, hops))

    def _trimmed(self, adj: dict[EdgeType, Tensor],
                 hops: dict[str, list[int]]) -> list[dict[EdgeType, Tensor]]:
        """Per layer, each edge type's adjacency over the destinations the layer computes
        and the sources it reads (:func:`first_rows` views), with the transpose that
        spmm's backward multiplies by built now: a block is built by the thread that
        samples ahead (``MiniBatchConfig.ahead``), so this work (a radix sort per edge
        type and layer) leaves the training thread. The products are the same."""
        layers, n_src = [], {nt: h[-1] for nt, h in hops.items()}  # layer 0 reads all
        for layer in range(self.num_layers):
            keep = {nt: h[self.num_layers - 1 - layer] for nt, h in hops.items()}
            trimmed = {et: first_rows(adj[et], keep[et[2]], n_src[et[0]])
                       for et in self._edge_types(last=layer == self.num_layers - 1)}
            for a in trimmed.values():
                cached_transpose(a)
            layers.append(trimmed)
            n_src = keep
        return layers

    # -- construction helpers -------------------------------------------------
    def _edge_types(self, last: bool) -> list[EdgeType]:
        types = [UI, IU]
        if self.use_friends:
            types.append(UU)
        if self.use_tags:
            types.append(TI)
            if not last:
                types.append(IT)
        return types

    def _adjacency(
        self, ui: Tensor, ff: Tensor, it: Tensor, num_users: int, num_items: int
    ) -> dict[EdgeType, Tensor]:
        """Mean-aggregation ``adj_t`` [num_dst, num_src] per edge type."""
        u, i = ui
        adj = {
            UI: mean_adjacency(i, u, num_items, num_users),
            IU: mean_adjacency(u, i, num_users, num_items),
        }
        if self.use_friends:
            adj[UU] = mean_adjacency(ff[1], ff[0], num_users, num_users)
        if self.use_tags:
            adj[IT] = mean_adjacency(it[1], it[0], self.num_tags, num_items)
            adj[TI] = mean_adjacency(it[0], it[1], num_items, self.num_tags)
        return {et: a.to(ui.device) for et, a in adj.items()}

    # -- forward ----------------------------------------------------------------
    def _layer0(
        self,
        inputs: SageInputs,
        new_user: bool = False,
        new_item: bool = False,
        new_item_x: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Layer-0 features {user: [U(+1), d], item: [I(+1), d], tag: [T, d]} (a block:
        its local nodes).

        A new node (``new_user`` / ``new_item``, appended last) has no id
        embedding; a new item gets ``Linear(new_item_x)`` when given.
        """
        n_id = inputs.n_id
        if n_id is None:
            user, item = self.user_id.weight, self.item_id.weight
        else:
            user, item = self.rows(self.user_id, n_id[USER]), self.rows(self.item_id, n_id[ITEM])
        if self.training and self.id_dropout > 0:
            user = user * (torch.rand_like(user[:, :1]) >= self.id_dropout)
            item = item * (torch.rand_like(item[:, :1]) >= self.id_dropout)
        if self.user_proj is not None:
            user = user + self.user_proj(inputs.x[USER])
        if self.item_proj is not None:
            item = item + self.item_proj(inputs.x[ITEM])
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
            assert inputs.item_tags is not None
            x[ITEM] = _with_tags(item, inputs.item_tags, tag, block=n_id is not None)
            x[TAG] = tag if n_id is None else tag[n_id[TAG]]
        return x

    def _encode(self, x: dict[str, Tensor], adj: dict[EdgeType, Tensor],
                hops: dict[str, list[int]] | None = None,
                layers: list[dict[EdgeType, Tensor]] | None = None) -> dict[str, Tensor]:
        """The layers on layer-0 features ``x``; with ``hops`` (a block) layer ``l`` runs
        on the nodes within ``L - 1 - l`` hops of the seeds only, over their edges (the
        seeds' outputs are those of every node, every layer: PyG's ``trim_to_layer``).
        Under ``torch.autocast`` (a bf16 training step) the layers run in its dtype: the
        features are cast once, and every aggregation and product reads and writes that
        dtype (half the bytes of float32)."""
        device = self.user_id.weight.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            x = {k: v.to(dtype) for k, v in x.items()}
        for layer, conv in enumerate(self.convs):
            depth = self.num_layers - 1 - layer  # the hops this layer's outputs reach
            out = _hetero_layer(conv, x, adj if layers is None or hops is None else layers[layer],
                                None if hops is None else {nt: h[depth] for nt, h in hops.items()})
            if layer < self.num_layers - 1:
                out = {k: F.dropout(F.relu(v), self.dropout, self.training) for k, v in out.items()}
            x = out
        return x

    def forward(self, inputs: SageInputs) -> Propagation:
        x = self._layer0(inputs)
        out = self._encode(x, inputs.adj, inputs.hops, inputs.layers)
        return Propagation(out[USER], out[ITEM], x[USER], x[ITEM])

    # -- inductive embeddings -------------------------------------------------------
    def _with(self, inputs: SageInputs, ui: Tensor, ff: Tensor, it: Tensor, num_users: int,
              num_items: int) -> SageInputs:
        adj = self._adjacency(ui, ff, it, num_users, num_items)
        return SageInputs(adj, inputs.x, adj.get(TI))

    def embed_new_user(self, inputs: SageInputs, item_idx: Tensor,
                       friend_idx: Tensor | None = None) -> Tensor:
        """Float [d]: embedding of a user not in the graph, from its items and friends.

        The user is added as node U (no id embedding, zero features) with edges to
        ``item_idx`` (Long [k]) and, when friends are used, to ``friend_idx``
        (Long [f]); the network then runs on the TRAIN graph (``inputs``, the full
        graph's) plus those edges. Call under ``torch.no_grad()`` and in eval mode.
        """
        assert inputs.edges is not None, "pass the full graph's inputs"
        edges = inputs.edges
        device = edges[UI].device
        item_idx = item_idx.long().view(-1).to(device)
        check_range(
            torch.stack([item_idx, item_idx]),
            self.num_items,
            self.num_items,
            "embed_new_user item_idx",
        )
        new = self.num_users
        ui = torch.cat(
            [edges[UI], torch.stack([torch.full_like(item_idx, new), item_idx])], dim=1
        )
        ff = edges[UU]
        if self.use_friends and friend_idx is not None and friend_idx.numel() > 0:
            f = friend_idx.long().view(-1).to(device)
            check_range(
                torch.stack([f, f]), self.num_users, self.num_users, "embed_new_user friend_idx"
            )
            ff = _friend_pairs(
                torch.cat([ff, torch.stack([torch.full_like(f, new), f])], dim=1), new + 1
            )
        grown = self._with(inputs, ui, ff, edges[IT], new + 1, self.num_items)
        out = self._encode(self._layer0(grown, new_user=True), grown.adj)
        return out[USER][new]

    def embed_new_item(
        self, inputs: SageInputs, tag_idx: Tensor, x: Tensor | None = None,
        user_idx: Tensor | None = None
    ) -> Tensor:
        """Float [d]: embedding of an item not in the graph.

        The item is added as node I (no id embedding) with its tags ``tag_idx``
        (Long [t]; may be empty), attributes ``x`` (Float [Fi]) and the users who
        interacted with it ``user_idx`` (Long [k]), when known.
        """
        assert inputs.edges is not None, "pass the full graph's inputs"
        edges = inputs.edges
        device = edges[UI].device
        new = self.num_items
        it = edges[IT]
        if self.use_tags and tag_idx.numel() > 0:
            t = tag_idx.long().view(-1).to(device)
            check_range(torch.stack([t, t]), self.num_tags, self.num_tags, "embed_new_item tag_idx")
            it = torch.cat([it, torch.stack([torch.full_like(t, new), t])], dim=1)
        ui = edges[UI]
        if user_idx is not None and user_idx.numel() > 0:
            u = user_idx.long().view(-1).to(device)
            check_range(
                torch.stack([u, u]), self.num_users, self.num_users, "embed_new_item user_idx"
            )
            ui = torch.cat([ui, torch.stack([u, torch.full_like(u, new)])], dim=1)
        grown = self._with(inputs, ui, edges[UU], it, self.num_users, new + 1)
        out = self._encode(self._layer0(grown, new_item=True, new_item_x=x), grown.adj)
        return out[ITEM][new]
