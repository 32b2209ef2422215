"""LightGCN (He et al., SIGIR 2020) over a precomputed normalised sparse adjacency,
with optional social (user-user friend) edges and item-tag edges.

Propagation is ``E^(l+1) = A_hat @ E^(l)`` with ``torch.sparse.mm`` on a CSR matrix
over the U + I (+ T) nodes (users first, then items, then tags), and the output is
``sum_l alpha_l * E^(l)``. This equals PyG's
:class:`torch_geometric.nn.models.LightGCN` on the same (deduplicated) train edges
but runs several times faster on CPU than message passing over ``edge_index``.

The same ``forward`` runs on a sampled block (mini-batch training): there the adjacency
is over the block's local users and items, each edge normalised with the FULL graph's
degrees ``w / sqrt(d_v d_u)`` and scaled per destination and edge type by ``deg /
sampled`` (an unbiased estimate of the full sum, exact where every neighbour is sampled).
A block's nodes are ordered by hop (the seed users, the seed items, then each hop's new
users and items), so layer ``l`` of ``L`` propagates to the first rows only: the nodes
within ``L - l`` hops of the seeds (PyG's ``trim_to_layer``; the seeds' outputs are those
of every node, every layer).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from gnnrec.gnn.data import IT, IU, UI, UU, EdgeType

from .base import (
    GraphSizes,
    Inputs,
    Propagation,
    Recommender,
    check_range,
    first_rows,
    permute_rows,
    rows_csr,
    spmm,
    spmm_head,
    to_csr,
    unique_edges,
)

if TYPE_CHECKING:
    from gnnrec.gnn.views import TrainView


def normalized_adjacency(
    num_users: int,
    num_items: int,
    ui_edge_index: Tensor,
    social_edge_index: Tensor | None = None,
    social_weight: float = 1.0,
    num_tags: int = 0,
    tag_edge_index: Tensor | None = None,
    tag_weight: float = 1.0,
) -> Tensor:
    """Symmetric-normalised adjacency ``D^-1/2 A D^-1/2`` of the user-item graph.

    Node ``u`` is user ``u`` and node ``U + i`` is item ``i``. ``A`` holds 1 for
    every distinct (user, item) pair of ``ui_edge_index`` (repeated interactions
    count once) in both directions and, when ``social_edge_index`` is given and
    ``social_weight > 0``, ``social_weight`` for every distinct friendship in both
    directions (self-loops dropped) and, when ``tag_edge_index`` is given and
    ``tag_weight > 0``, ``tag_weight`` for every distinct (item, tag) pair in both
    directions, tag ``t`` being node ``U + I + t``. Nodes of degree 0 get empty rows.

    Args:
        num_users: U.
        num_items: I.
        ui_edge_index: Long [2, E] (user, item) pairs; pass TRAIN edges only.
        social_edge_index: Long [2, F] (user, user) pairs, either or both directions.
        social_weight: weight of a friend edge relative to an interaction edge.
        num_tags: T (0: no tag nodes).
        tag_edge_index: Long [2, G] (item, tag) pairs.
        tag_weight: weight of an item-tag edge relative to an interaction edge.

    Returns:
        Float sparse CSR tensor [U + I + T, U + I + T].
    """
    for name, w in (("social_weight", social_weight), ("tag_weight", tag_weight)):
        if w < 0:
            raise ValueError(f"{name} must be >= 0, got {w}")
    check_range(ui_edge_index, num_users, num_items, "ui_edge_index")
    n = num_users + num_items + num_tags
    rows: list[Tensor] = []
    cols: list[Tensor] = []
    vals: list[Tensor] = []

    def both_ways(a: Tensor, b: Tensor, weight: float) -> None:
        rows.extend([a, b])
        cols.extend([b, a])
        vals.extend([torch.full((a.numel(),), float(weight))] * 2)

    ui = unique_edges(ui_edge_index, num_items)
    both_ways(ui[0], ui[1] + num_users, 1.0)
    if social_edge_index is not None and social_weight > 0 and social_edge_index.numel() > 0:
        check_range(social_edge_index, num_users, num_users, "social_edge_index")
        a, b = social_edge_index.long()
        keep = a != b
        pairs = torch.stack([torch.minimum(a, b)[keep], torch.maximum(a, b)[keep]])
        pairs = unique_edges(pairs, num_users)  # each undirected friendship once
        both_ways(pairs[0], pairs[1], social_weight)
    if tag_edge_index is not None and tag_weight > 0 and tag_edge_index.numel() > 0:
        check_range(tag_edge_index, num_items, num_tags, "tag_edge_index")
        it = unique_edges(tag_edge_index, num_tags)
        both_ways(it[0] + num_users, it[1] + num_users + num_items, tag_weight)
    row, col, val = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    deg = torch.zeros(n).index_add_(0, row, val)
    dinv = deg.pow(-0.5)
    dinv[deg == 0] = 0.0
    val = dinv[row] * val * dinv[col]
    coo = torch.sparse_coo_tensor(torch.stack([row, col]), val, (n, n), check_invariants=False)
    return to_csr(coo.coalesce())


def perturbed_propagation(adj: Tensor, ego: Tensor, layer_weights: Tensor, eps: float,
                          cl_layer: int, symmetric: bool = True,
                          rows: list[int] | None = None) -> tuple[Tensor, Tensor]:
    """``(sum_l w_l E^(l), E^(cl_layer))`` over ``adj`` [N, N] from ``ego`` [N, d].

    With ``eps > 0`` each propagated layer gets the sign-aligned uniform noise of norm
    ``eps`` (XSimGCL's) before it feeds the next one. ``layer_weights`` has one weight per
    layer, layer 0 (``ego``) first. ``rows`` (a block's nodes ordered by hop): ``rows[h]``
    nodes lie within ``h`` hops of the seeds; layer ``l`` of ``L`` then computes its first
    ``rows[L - l]`` rows only and both results have the ``rows[0]`` seed rows (exact for
    them: their ``L``-hop neighbourhood is all there).
    """
    num_layers = layer_weights.numel() - 1
    if rows is None:
        out = ego * layer_weights[0]
    x, view = ego, ego
    for layer in range(1, num_layers + 1):
        if rows is None:
            x = spmm(adj, x, symmetric)
        else:  # the previous layer's seed rows join the output on the way
            x, head = spmm_head(first_rows(adj, rows[num_layers - layer], x.size(0)), x,
                                rows[0], layer_weights[layer - 1])
            out = head if layer == 1 else out + head
        if eps > 0:
            x = x + torch.sign(x) * F.normalize(torch.rand_like(x), dim=-1) * eps
        if rows is None or layer == num_layers:
            out = out + x * layer_weights[layer]
        if layer == cl_layer:
            view = x
    if rows is None:
        return out, view
    if num_layers == 0:
        return ego[: rows[0]] * layer_weights[0], ego[: rows[0]]
    return out, view[: rows[0]]


def edge_dropout(adj: Tensor, p: float) -> Tensor:
    """Same CSR structure with each stored value zeroed with probability ``p`` and
    the rest scaled by ``1 / (1 - p)``."""
    values = adj.values()
    keep = torch.rand_like(values) >= p
    return torch.sparse_csr_tensor(
        adj.crow_indices(),
        adj.col_indices(),
        values * keep / (1.0 - p),
        adj.shape,
        check_invariants=False,
    )


@dataclass
class LightGCNInputs(Inputs):
    """What :meth:`LightGCN.forward` reads.

    ``adj``: sparse CSR [N, N], the normalised adjacency over the nodes propagated: every
    user, item (and tag) of the graph, or a block's local users then local items (None in
    the inputs blocks are built from: :meth:`LightGCN.block_inputs`).
    ``users`` / ``items``: a block's global ids (None: every node, in order).
    ``symmetric``: ``adj`` is symmetric (the backward pass then reuses it).
    ``degrees``: the full graph's degree terms a block's adjacency is normalised with
    (``dinv`` Float[U + I] and the edge counts ``user``, ``friend``, ``item``).
    ``hops``: a block's user and item counts, cumulative by hop (``hops[nt][h]``: its
    nodes first reached at hop ``h`` or before); the adjacency's nodes are then ordered by
    hop (users, then items, of each hop) and ``forward`` returns the seeds' rows only;
    ``position``: the adjacency's row of each local user then item, ``order`` its inverse.
    """

    adj: Tensor | None
    users: Tensor | None = None
    items: Tensor | None = None
    symmetric: bool = True
    degrees: dict[str, Tensor] = field(default_factory=dict)
    hops: dict[str, list[int]] | None = None
    position: Tensor | None = None
    order: Tensor | None = None

    def hop_rows(self, num_layers: int) -> list[int] | None:
        """Nodes within ``h`` hops of the seeds for ``h = 0..num_layers`` (None: the full
        graph's inputs)."""
        if self.hops is None:
            return None
        last = len(self.hops["user"]) - 1
        return [self.hops["user"][min(h, last)] + self.hops["item"][min(h, last)]
                for h in range(num_layers + 1)]

    def stack(self, egos: list[Tensor]) -> Tensor:
        """The rows of ``egos`` (users, items (, tags) in local order) in the order of the
        adjacency's nodes."""
        if self.hops is None:
            return torch.cat(egos)
        assert self.order is not None and self.position is not None
        return permute_rows(torch.cat(egos[:2]), self.order, self.position)

    def unstack(self, out: Tensor, egos: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``(user rows, item rows)`` of a propagation's output: every node's (the full
        graph), or a block's seeds (the seed users then the seed items)."""
        if self.hops is None:
            user, item = out.split([e.size(0) for e in egos])[:2]
            return user, item
        return out[: self.hops["user"][0]], out[self.hops["user"][0]:]


class LightGCN(Recommender):
    """LightGCN with optional social edges (``social_weight > 0``) and tag nodes
    (``tag_weight > 0``).

    Args:
        sizes: the graph's shape; its inputs use only TRAIN ``('user','interacts','item')``
            edges, (when ``social_weight > 0``) ``('user','friend','user')`` edges and (when
            ``tag_weight > 0``) ``('item','has_tag','tag')`` edges.
        embedding_dim: d.
        num_layers: L propagation steps.
        layer_weights: L + 1 weights ``alpha_l`` of the layer combination
            (default uniform ``1 / (L + 1)``).
        social_weight: weight of friend edges in the adjacency (0 = plain LightGCN).
        tag_weight: weight of item-tag edges in the adjacency (0 = none). Each tag is
            then a node with its own learned embedding that propagates like a user
            does: items that share tags pull together, and an item with tags but no
            train interaction still gets an embedding from them. Tag embeddings are
            not in the batch L2 term (they enter the loss only through items).
            Full-graph training only.
        dropout: edge dropout probability on the adjacency during training (0 = off).
        init_std: std of the normal initialisation (0.1 as in the authors' PyTorch
            code); ``None`` uses Xavier uniform (their TensorFlow code).

    Shapes: ``forward(inputs)`` -> user [U, d], item [I, d] (a block: its local nodes).
    """

    name = "lightgcn"
    sampled = True
    # softmax over 64 negatives, not 16: better on both datasets' valid (README, "Defaults")
    train_defaults: ClassVar[dict[str, Any]] = {
        "loss": "softmax", "num_negatives": 64, "lr": 1e-2, "l2": 1e-2}

    def __init__(
        self,
        sizes: GraphSizes,
        embedding_dim: int = 64,
        num_layers: int = 3,
        layer_weights: list[float] | None = None,
        social_weight: float = 0.0,
        dropout: float = 0.0,
        init_std: float | None = 0.1,
        tag_weight: float = 0.0,
    ) -> None:
        super().__init__(sizes)
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        for name, w in (("social_weight", social_weight), ("tag_weight", tag_weight)):
            if w < 0:
                raise ValueError(f"{name} must be >= 0, got {w}")
        if layer_weights is None:
            layer_weights = [1.0 / (num_layers + 1)] * (num_layers + 1)
        layer_weights = [float(w) for w in layer_weights]
        if len(layer_weights) != num_layers + 1:
            raise ValueError(
                f"layer_weights needs num_layers + 1 = {num_layers + 1} values, "
                f"got {len(layer_weights)}"
            )
        self._hparams = {
            "embedding_dim": int(embedding_dim),
            "num_layers": int(num_layers),
            "layer_weights": layer_weights,
            "social_weight": float(social_weight),
            "dropout": float(dropout),
            "init_std": None if init_std is None else float(init_std),
            "tag_weight": float(tag_weight),
        }
        self.embedding_dim = embedding_dim
        self.num_layers = num_layers
        self.dropout = dropout
        self.social_weight, self.tag_weight = float(social_weight), float(tag_weight)
        self.user_embedding = torch.nn.Embedding(self.num_users, embedding_dim)
        self.item_embedding = torch.nn.Embedding(self.num_items, embedding_dim)
        self.num_tags = sizes.num_tags if tag_weight > 0 else 0
        self.tag_embedding = (torch.nn.Embedding(self.num_tags, embedding_dim)
                              if self.num_tags else None)
        for emb in (self.user_embedding, self.item_embedding, self.tag_embedding):
            if emb is None:
                continue
            if init_std is None:
                torch.nn.init.xavier_uniform_(emb.weight)
            else:
                torch.nn.init.normal_(emb.weight, std=init_std)
        self.register_buffer("layer_weights", torch.tensor(layer_weights), persistent=False)

    def edge_types(self) -> set[EdgeType]:
        return {UI, IU, UU} if self.social_weight > 0 else {UI, IU}

    def cannot_sample(self) -> str | None:
        if self.num_tags:
            return ("mini-batch LightGCN samples users and items only: train a LightGCN "
                    "with tag_weight > 0 full-graph")
        return None

    def inputs(self, view: TrainView) -> LightGCNInputs:
        """The normalised adjacency of the train graph and its degree terms."""
        self.check_view(view)
        if self.num_tags and view.num_nodes["tag"] != self.num_tags:
            raise ValueError(f"LightGCN was built for {self.num_tags} tags, the graph has "
                             f"{view.num_nodes['tag']}")
        ui = view.edge_index(UI)
        social = view.edge_index(UU) if self.social_weight > 0 else None
        tags = view.edge_index(IT) if self.num_tags else None
        adj = normalized_adjacency(self.num_users, self.num_items, ui, social,
                                   self.social_weight, self.num_tags, tags, self.tag_weight)
        return LightGCNInputs(adj, degrees=self._degrees(view))

    def block_inputs(self, view: TrainView) -> LightGCNInputs:
        """What a block reads of the full graph: the degree terms only (no adjacency)."""
        self.check_view(view)
        return LightGCNInputs(None, degrees=self._degrees(view))

    def _degrees(self, view: TrainView) -> dict[str, Tensor]:
        """The full graph's degree terms: train interactions per user and per item,
        friends per user (Float) and ``dinv`` Float[U + I] (0 where the degree is 0)."""
        def count(et: EdgeType) -> Tensor:  # entries per destination: its in-degree
            return torch.from_numpy(view.csr[et].degree()).float()

        user_deg, item_deg, friend_deg = count(IU), count(UI), count(UU)
        deg = torch.cat([user_deg + (self.social_weight * friend_deg
                                     if self.social_weight > 0 else 0.0), item_deg])
        dinv = deg.pow(-0.5)
        dinv[deg == 0] = 0.0
        return {"dinv": dinv, "user": user_deg, "friend": friend_deg, "item": item_deg}

    def block(self, batch: HeteroData, inputs: LightGCNInputs) -> LightGCNInputs:
        """The adjacency over a sampled batch's users and items ordered by hop (module
        docstring), normalised with the full graph's degrees and scaled by ``deg /
        sampled`` per destination."""
        if (reason := self.cannot_sample()) is not None:
            raise ValueError(reason)
        deg = inputs.degrees
        dev = deg["dinv"].device
        n_user, n_item = batch["user"].n_id.to(dev), batch["item"].n_id.to(dev)
        nu, ni = n_user.numel(), n_item.numel()
        n = nu + ni
        hops = _hop_counts(batch, nu, ni)
        user_pos, item_pos = _hop_positions(hops, dev)
        glob = torch.empty(n, dtype=torch.long, device=dev)
        glob[user_pos], glob[item_pos] = n_user, n_item + self.num_users
        parts = [(IU, 1.0, deg["user"], item_pos, user_pos, 0),
                 (UI, 1.0, deg["item"], user_pos, item_pos, self.num_users)]
        if self.social_weight > 0:
            parts.append((UU, self.social_weight, deg["friend"], user_pos, user_pos, 0))
        entries = []
        for et, w, full_deg, src_pos, dst_pos, dst_base in parts:
            ei = batch[et].edge_index.to(dev)
            src, dst = src_pos[ei[0]], dst_pos[ei[1]]  # positions keep the local order
            sampled = torch.bincount(dst, minlength=n).float()
            dst_g = glob[dst]
            scale = full_deg[dst_g - dst_base] / sampled[dst].clamp(min=1)
            entries.append((dst, src, w * deg["dinv"][glob[src]] * deg["dinv"][dst_g] * scale))
        position = torch.cat([user_pos, item_pos])
        order = torch.empty_like(position)
        order[position] = torch.arange(n, device=dev)
        return LightGCNInputs(rows_csr(entries, n, n), users=n_user, items=n_item,
                              symmetric=False, hops=hops, position=position, order=order)

    def _layer0(self, inputs: LightGCNInputs) -> tuple[list[Tensor], Tensor, bool]:
        """(the ego embeddings of users, items (and tags) of ``inputs``, the adjacency to
        propagate over, whether it is symmetric) with edge dropout in training."""
        if inputs.users is None:
            egos = [self.user_embedding.weight, self.item_embedding.weight]
            if self.tag_embedding is not None:
                egos.append(self.tag_embedding.weight)
        else:
            egos = [self.rows(self.user_embedding, inputs.users),
                    self.rows(self.item_embedding, inputs.items)]
        adj, symmetric = inputs.adj, inputs.symmetric
        if self.training and self.dropout > 0:
            adj, symmetric = edge_dropout(adj, self.dropout), False
        return egos, adj, symmetric

    def forward(self, inputs: LightGCNInputs) -> Propagation:
        egos, adj, symmetric = self._layer0(inputs)
        out, _ = perturbed_propagation(adj, inputs.stack(egos), self.layer_weights, 0.0, 0,
                                       symmetric, inputs.hop_rows(self.num_layers))
        user, item = inputs.unstack(out, egos)
        return Propagation(user, item, egos[0], egos[1])


def _hop_counts(batch: HeteroData, nu: int, ni: int) -> dict[str, list[int]]:
    """Cumulative user and item counts by hop of a batch, of one common length (a batch
    without hop counts: all its nodes are seeds)."""
    got = {nt: list(itertools.accumulate(batch[nt].num_sampled_nodes))
           if "num_sampled_nodes" in batch[nt] else [n] for nt, n in (("user", nu), ("item", ni))}
    depth = max(len(h) for h in got.values())
    return {nt: h + h[-1:] * (depth - len(h)) for nt, h in got.items()}


def _hop_positions(hops: dict[str, list[int]], dev: torch.device) -> tuple[Tensor, Tensor]:
    """(Long[users], Long[items]): the position of each local user and item in the hop
    order (the users then the items of hop 0, of hop 1, ...)."""
    cu = torch.tensor([0, *hops["user"]], device=dev)
    ci = torch.tensor([0, *hops["item"]], device=dev)
    # a user of hop h comes after the items of hops < h, an item after the users of hops <= h
    user_pos = torch.arange(int(cu[-1]), device=dev) + ci[:-1].repeat_interleave(cu.diff())
    item_pos = torch.arange(int(ci[-1]), device=dev) + cu[1:].repeat_interleave(ci.diff())
    return user_pos, item_pos
