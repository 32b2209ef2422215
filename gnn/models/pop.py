"""Popularity baseline: every user gets the items with the most train interactions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from gnnrec.gnn.data import UI

from .base import GraphSizes, Propagation, Recommender

if TYPE_CHECKING:
    from gnnrec.gnn.views import TrainView


class Popularity(Recommender):
    """Scores item ``i`` by its number of TRAIN interactions (or their summed
    ``weight`` when ``weighted``), the same for every user.

    It has no trainable parameters: ``parameters()`` is empty and ``trainable`` is
    ``False``; :meth:`solve` counts the train interactions of the view (in closed form:
    one epoch). The counts are a persistent buffer ``item_counts`` [I], so
    ``state_dict()`` and ``.to(device)`` work as for the other models.

    Shapes: ``forward(None)`` -> (ones [U, 1], counts [I, 1]), so the dot product is the
    count.
    """

    name = "pop"
    trainable = False

    def __init__(self, sizes: GraphSizes, weighted: bool = False) -> None:
        super().__init__(sizes)
        self._hparams = {"weighted": bool(weighted)}
        self.weighted = bool(weighted)
        self.register_buffer("item_counts", torch.zeros(self.num_items))

    def solve(self, view: TrainView, epoch: int) -> dict[str, float]:
        self.check_view(view)
        _, items, _ = view.edges(UI)
        items_t = torch.from_numpy(items)
        w = view.edge_weight(UI).float() if self.weighted else torch.ones(items_t.numel())
        counts = torch.zeros(self.num_items).index_add_(0, items_t, w)
        self.item_counts.copy_(counts.to(self.item_counts))
        return {"converged": 1.0}

    def bpr_loss(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        raise TypeError(
            "Popularity has no trainable parameters (trainable=False); skip optimisation"
        )

    def forward(self, inputs: Any = None) -> Propagation:
        user = self.item_counts.new_ones(self.num_users, 1)
        item = self.item_counts.unsqueeze(1)
        return Propagation(user, item, user, item)
