"""Top-k recommendations from a trained model's final embeddings, by external ids.

Items the user already has (any split, by default) are never returned.
Unknown users raise :class:`UnknownUserError`: cold start is the serving layer's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gnnrec.errors import GnnrecError
from gnnrec.gnn.adjacency import CSR
from gnnrec.gnn.data import IdMap
from gnnrec.gnn.evaluate import default_batch_size, dot_scores, top_k

if TYPE_CHECKING:
    from gnnrec.gnn.run import Run


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
    """Final embeddings, the id maps and the exclusion lists; answers by external id.

    Args:
        user_emb, item_emb: Float[U, d] and Float[I, d] final embeddings (score = dot).
        user_ids, item_ids: external ids, index -> id.
        exclude: user -> item CSR of interactions never recommended again (usually every
            known one: train, valid and test).
        device: where scoring runs (default: the embeddings' device).
    """

    def __init__(self, user_emb: Tensor, item_emb: Tensor, user_ids: Sequence[str],
                 item_ids: Sequence[str], exclude: CSR, *,
                 device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else user_emb.device
        self.user_emb, self.item_emb = user_emb.to(self.device), item_emb.to(self.device)
        self.users = IdMap(user_ids, "user")
        self.item_ids: list[str] = list(item_ids)
        self.exclude = exclude

    @classmethod
    def from_run(cls, run: Run, *, device: torch.device | str | None = None) -> TopKRecommender:
        """A run directory's final embeddings and id maps; every interaction the run knows
        (train, valid, test) is excluded."""
        user, item = run.embeddings()
        g = run.graph()
        return cls(user, item, g.user_ids, g.item_ids, g.interactions.csr, device=device)

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
        score = dot_scores(self.user_emb, self.item_emb)
        for start in range(0, users.numel(), step):
            batch = users[start : start + step]
            scores = score(batch).to(torch.float32, copy=True)
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
