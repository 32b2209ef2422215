"""XSimGCL (Yu et al., "XSimGCL: Towards Extremely Simple Graph Contrastive Learning for
Recommendation", IEEE TKDE 2023) on LightGCN's sparse propagation.

The encoder is LightGCN's ``E^(l) = A_hat E^(l-1)`` over the same normalised adjacency
(optionally with social and tag edges, see :class:`~gnnrec.gnn.models.LightGCN`). In
training, every layer's output is perturbed by uniform noise of norm ``eps`` pointing into
the embedding's own orthant::

    E^(l) <- E^(l) + eps * sign(E^(l)) * normalize(U(0, 1) noise)   (row-wise)

and the loss adds a cross-layer InfoNCE term: the final (noisy) embedding of each distinct
user and positive item of the batch is contrasted with its own embedding at layer
``cl_layer`` (positive) against the other users' / items' (negatives), at temperature
``cl_temperature``, weighted by ``cl_weight``. Both views come from the same forward pass,
so a batch costs one propagation, as LightGCN's does. Evaluation and serving use the
noise-free propagation. The final embedding is the mean of layers 1..L by default (the
paper's; layer 0 left out), ``layer_weights`` changes it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from .base import Propagation, ranking_loss, spmm
from .lightgcn import LightGCN, edge_dropout


def perturbed_propagation(adj: Tensor, ego: Tensor, layer_weights: Tensor, eps: float,
                          cl_layer: int, symmetric: bool = True) -> tuple[Tensor, Tensor]:
    """``(sum_l w_l E^(l), E^(cl_layer))`` over ``adj`` [N, N] from ``ego`` [N, d].

    With ``eps > 0`` each propagated layer gets the sign-aligned uniform noise of norm
    ``eps`` (module docstring) before it feeds the next one. ``layer_weights`` has one
    weight per layer, layer 0 (``ego``) first.
    """
    out = ego * layer_weights[0]
    x, view = ego, ego
    for layer in range(1, layer_weights.numel()):
        x = spmm(adj, x, symmetric)
        if eps > 0:
            x = x + torch.sign(x) * F.normalize(torch.rand_like(x), dim=-1) * eps
        out = out + x * layer_weights[layer]
        if layer == cl_layer:
            view = x
    return out, view


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Mean InfoNCE of rows of ``a`` [n, d] against ``b`` [n, d]: row i of ``b`` is the
    positive of row i of ``a``, the other rows its negatives (cosine / temperature)."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t() / temperature
    return F.cross_entropy(logits, torch.arange(a.size(0), device=a.device))


class XSimGCL(LightGCN):
    """LightGCN with noisy layers and a cross-layer contrastive loss (module docstring).

    Args (beyond :class:`~gnnrec.gnn.models.LightGCN`'s, whose other defaults it keeps):
        eps: norm of the per-layer noise in training (0 = none: a LightGCN with the
            contrastive term on clean layers).
        cl_weight: weight of the InfoNCE term (0 = none).
        cl_temperature: temperature of the InfoNCE term.
        cl_layer: the layer (1..L) contrasted with the final embedding.
        layer_weights: default ``[0, 1/L, ..., 1/L]``.

    Shapes: ``embeddings()`` -> ([U, d], [I, d]); ``score(users [B])`` -> [B, I].
    """

    name = "xsimgcl"
    train_defaults: ClassVar[dict[str, Any]] = {
        "loss": "softmax", "num_negatives": 16, "lr": 5e-3, "l2": 1e-3}

    def __init__(self, graph: HeteroData, embedding_dim: int = 64, num_layers: int = 2,
                 eps: float = 0.1, cl_weight: float = 0.05, cl_temperature: float = 0.2,
                 cl_layer: int = 1, layer_weights: list[float] | None = None,
                 social_weight: float = 0.0, tag_weight: float = 0.0, dropout: float = 0.0,
                 init_std: float | None = None) -> None:
        if num_layers < 1:
            raise ValueError(f"XSimGCL needs num_layers >= 1, got {num_layers}")
        if not 1 <= cl_layer <= num_layers:
            raise ValueError(f"cl_layer must be in 1..{num_layers}, got {cl_layer}")
        if eps < 0 or cl_weight < 0 or not cl_temperature > 0:
            raise ValueError(f"XSimGCL needs eps >= 0, cl_weight >= 0 and cl_temperature > 0 "
                             f"(got {eps}, {cl_weight}, {cl_temperature})")
        if layer_weights is None:
            layer_weights = [0.0] + [1.0 / num_layers] * num_layers
        super().__init__(graph, embedding_dim=embedding_dim, num_layers=num_layers,
                         layer_weights=layer_weights, social_weight=social_weight,
                         dropout=dropout, init_std=init_std, tag_weight=tag_weight)
        self._hparams.update({"eps": float(eps), "cl_weight": float(cl_weight),
                              "cl_temperature": float(cl_temperature), "cl_layer": int(cl_layer)})
        self.eps, self.cl_weight = float(eps), float(cl_weight)
        self.cl_temperature, self.cl_layer = float(cl_temperature), int(cl_layer)

    def _views(self) -> tuple[Propagation, Tensor, Tensor]:
        """The propagation plus the users' and items' layer-``cl_layer`` view (noise in
        training mode only)."""
        egos = [self.user_embedding.weight, self.item_embedding.weight]
        if self.tag_embedding is not None:
            egos.append(self.tag_embedding.weight)
        adj, symmetric = self.adj, True
        if self.training and self.dropout > 0:
            adj, symmetric = edge_dropout(adj, self.dropout), False
        out, view = perturbed_propagation(adj, torch.cat(egos), self.layer_weights,
                                          self.eps if self.training else 0.0, self.cl_layer,
                                          symmetric)
        sizes = [self.num_users, self.num_items, self.num_tags]
        user, item = out.split(sizes)[:2]
        view_user, view_item = view.split(sizes)[:2]
        prop = Propagation(user, item, self.user_embedding.weight, self.item_embedding.weight)
        return prop, view_user, view_item

    def propagate(self) -> Propagation:
        return self._views()[0]

    def bpr_loss(self, users: Tensor, pos: Tensor, neg: Tensor, loss: str = "bpr",
                 temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        """The ranking loss plus ``cl_weight`` times the InfoNCE of the batch's distinct
        users and positive items (one forward pass); the L2 term as LightGCN's."""
        if neg.dim() not in (1, 2) or users.shape != pos.shape or neg.size(0) != users.size(0):
            raise ValueError(f"bpr_loss: users {list(users.shape)}, pos {list(pos.shape)} and "
                             f"neg {list(neg.shape)} must be [B], [B] and [B] or [B, K]")
        out, view_user, view_item = self._views()
        value, l2 = ranking_loss(out.user, out.item, out.user_ego, out.item_ego, users, pos,
                                 neg.view(neg.size(0), -1), loss, temperature)
        if self.cl_weight > 0:
            u, i = torch.unique(users), torch.unique(pos)
            value = value + self.cl_weight * (
                info_nce(out.user[u], view_user[u], self.cl_temperature)
                + info_nce(out.item[i], view_item[i], self.cl_temperature))
        return value, l2
