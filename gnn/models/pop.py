"""Popularity baseline: every user gets the items with the most train interactions."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from .base import INTERACTS, Propagation, Recommender, train_edge_index, train_mask


class Popularity(Recommender):
    """Scores item ``i`` by its number of TRAIN interactions (or their summed
    ``weight`` when ``weighted``), the same for every user.

    It has no trainable parameters: ``parameters()`` is empty, ``trainable`` is
    ``False`` and :meth:`bpr_loss` raises. The counts are a persistent buffer
    ``item_counts`` [I], so ``state_dict()`` and ``.to(device)`` work as for the
    other models.

    Shapes: ``embeddings()`` -> (ones [U, 1], counts [I, 1]), so the dot product
    is the count; ``score(users [B])`` -> [B, I].
    """

    name = "pop"
    trainable = False

    def __init__(self, graph: HeteroData, weighted: bool = False) -> None:
        super().__init__(graph)
        self._hparams = {"weighted": bool(weighted)}
        mask = train_mask(graph)
        items = train_edge_index(graph)[1]
        if weighted:
            store = graph[INTERACTS]
            if "weight" not in store:
                raise ValueError(f"Popularity(weighted=True): {INTERACTS} has no 'weight'")
            w = store.weight.float()[mask]
        else:
            w = torch.ones(items.numel())
        counts = torch.zeros(self.num_items).index_add_(0, items.long(), w)
        self.register_buffer("item_counts", counts)

    def propagate(self) -> Propagation:
        user = self.item_counts.new_ones(self.num_users, 1)
        item = self.item_counts.unsqueeze(1)
        return Propagation(user, item, user, item)

    def bpr_loss(self, users: Tensor, pos: Tensor, neg: Tensor, loss: str = "bpr",
                 temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        raise TypeError(
            "Popularity has no trainable parameters (trainable=False); skip optimisation"
        )
