"""Top-k recommendations from a trained model, by external ids.

Items the user already has in the graph (any split, by default) are never returned.
Unknown users raise :class:`UnknownUserError`: cold start is the serving layer's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData

from gnnrec.errors import GnnrecError
from gnnrec.gnn.adjacency import CSR, interaction_csr
from gnnrec.gnn.data import IdMap
from gnnrec.gnn.evaluate import default_batch_size, top_k


class UnknownUserError(GnnrecError, KeyError):
    """A user id the model has never seen."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Recommendation:
    item: str  # external item id
    index: int  # item index in the graph
    score: float
    rank: int  # 1-based

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TopKRecommender:
    """Holds a model, its graph and the exclusion lists; answers by external id.

    Args:
        model: a trained model with ``score(users Long[B]) -> Float[B, I]``.
        graph: the graph it was trained on.
        exclude_splits: interactions never recommended again (default all: train, valid, test).
        device: where scoring runs (default: the model's device).
    """

    def __init__(self, model: nn.Module, graph: HeteroData, *,
                 exclude_splits: Sequence[int] = (0, 1, 2),
                 device: torch.device | str | None = None) -> None:
        self.model = model.eval()
        self.users = IdMap(graph["user"].ext_id, "user")
        self.item_ids: list[str] = list(graph["item"].ext_id)
        self.exclude: CSR = interaction_csr(graph, tuple(exclude_splits))[0]
        if device is None:
            first = next(iter([*model.parameters(), *model.buffers()]), None)
            device = first.device if first is not None else "cpu"
        self.device = torch.device(device)

    def user_index(self, user: str) -> int:
        idx = self.users.get(str(user))
        if idx is None:
            raise UnknownUserError(f"unknown user {user}; cold start is served by POST /users")
        return idx

    @torch.no_grad()
    def top_k_indices(self, users: Tensor, k: int = 10) -> tuple[Tensor, Tensor]:
        """``(items Long[B, k], scores Float[B, k])`` for user indices Long[B] (CPU);
        ``-inf`` scores mark padding when a user has fewer than ``k`` unseen items."""
        out_items, out_scores = [], []
        step = default_batch_size(len(self.item_ids))
        for start in range(0, users.numel(), step):
            batch = users[start : start + step]
            scores = self.model.score(batch.to(self.device)).to(torch.float32, copy=True)  # type: ignore[operator]
            items, values = top_k(scores, self.exclude, batch, k)
            out_items.append(items.cpu())
            out_scores.append(values.cpu())
        if not out_items:
            return torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k)
        return torch.cat(out_items), torch.cat(out_scores)

    def recommend(self, user: str, k: int = 10) -> list[Recommendation]:
        """Top ``k`` unseen items for one external user id."""
        return self.recommend_many([user], k)[0]

    def recommend_many(self, users: Sequence[str], k: int = 10) -> list[list[Recommendation]]:
        if k < 1:
            raise GnnrecError(f"k must be at least 1, got {k}")
        idx = torch.tensor([self.user_index(u) for u in users], dtype=torch.long)
        items, scores = self.top_k_indices(idx, k)
        out = []
        for row_items, row_scores in zip(items.tolist(), scores.tolist(), strict=True):
            out.append([Recommendation(self.item_ids[i], i, s, r + 1)
                        for r, (i, s) in enumerate(zip(row_items, row_scores, strict=True))
                        if s != float("-inf")])
        return out


def recommend(model: nn.Module, graph: HeteroData, user: str, k: int = 10) -> list[Recommendation]:
    """Top ``k`` items for ``user`` (external id) that the user has not interacted with."""
    return TopKRecommender(model, graph).recommend(user, k)
