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
so a batch costs one propagation, as LightGCN's does (on the full graph or, in mini-batch
training, on a sampled block, with LightGCN's block). Evaluation and serving use the
noise-free propagation. The final embedding is the mean of layers 1..L by default (the
paper's; layer 0 left out), ``layer_weights`` changes it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import GraphSizes, Propagation, ranking_loss
from .lightgcn import LightGCN, LightGCNInputs, perturbed_propagation


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

    Shapes: ``forward(inputs)`` -> user [U, d], item [I, d], and in ``extra`` the
    layer-``cl_layer`` views ``view_user`` and ``view_item``.
    """

    name = "xsimgcl"
    train_defaults: ClassVar[dict[str, Any]] = {
        "loss": "softmax", "num_negatives": 16, "lr": 5e-3, "l2": 1e-3}

    def __init__(self, sizes: GraphSizes, embedding_dim: int = 64, num_layers: int = 2,
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
        super().__init__(sizes, embedding_dim=embedding_dim, num_layers=num_layers,
                         layer_weights=layer_weights, social_weight=social_weight,
                         dropout=dropout, init_std=init_std, tag_weight=tag_weight)
        self._hparams.update({"eps": float(eps), "cl_weight": float(cl_weight),
                              "cl_temperature": float(cl_temperature), "cl_layer": int(cl_layer)})
        self.eps, self.cl_weight = float(eps), float(cl_weight)
        self.cl_temperature, self.cl_layer = float(cl_temperature), int(cl_layer)

    def forward(self, inputs: LightGCNInputs) -> Propagation:
        """The propagation (noise in training mode only) and, in ``extra``, the users' and
        items' layer-``cl_layer`` view."""
        egos, adj, symmetric = self._layer0(inputs)
        out, view = perturbed_propagation(adj, inputs.stack(egos), self.layer_weights,
                                          self.eps if self.training else 0.0, self.cl_layer,
                                          symmetric, inputs.hop_rows(self.num_layers))
        user, item = inputs.unstack(out, egos)
        view_user, view_item = inputs.unstack(view, egos)
        return Propagation(user, item, egos[0], egos[1],
                           extra={"view_user": view_user, "view_item": view_item})

    def loss(self, out: Propagation, users: Tensor, pos: Tensor, neg: Tensor,
             loss: str = "bpr", temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        """The ranking loss plus ``cl_weight`` times the InfoNCE of the batch's distinct
        users and positive items (from the same forward pass); the L2 term as LightGCN's."""
        value, l2 = ranking_loss(out.user, out.item, out.user_ego, out.item_ego, users, pos,
                                 neg, loss, temperature)
        if self.cl_weight > 0:
            assert out.extra is not None
            u, i = torch.unique(users), torch.unique(pos)
            value = value + self.cl_weight * (
                info_nce(out.user[u], out.extra["view_user"][u], self.cl_temperature)
                + info_nce(out.item[i], out.extra["view_item"][i], self.cl_temperature))
        return value, l2
