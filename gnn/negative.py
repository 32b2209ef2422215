"""Negative items for BPR: never an item the user has in train.

Candidates are drawn for the whole batch at once (uniform, or proportional to
``train_count ** alpha``), membership in the user's train items is tested by a binary
search within the user's sorted train items (Int32 where ids fit: 4 bytes per
interaction, not an Int64 key ``user * num_items + item``), and only the colliding draws
are redrawn. After ``max_rounds`` rounds (very dense users) the remaining
draws are made exactly from the user's complement (uniform), so the guarantee holds for
any density. All randomness comes from the sampler's own seeded ``torch.Generator``
(:meth:`state_dict` / :meth:`load_state_dict` for resume).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from gnnrec.errors import GnnrecError
from gnnrec.gnn.adjacency import CSR, row_member

if TYPE_CHECKING:
    from gnnrec.gnn.views import TrainView


class NegativeSamplingError(GnnrecError):
    """No negative exists (a user has every item in train) or bad sampler settings."""


class NegativeSampler:
    """Uniform or popularity-based negative items for (user, positive) pairs.

    Args:
        train_user, train_item: Long[E] the train interactions.
        num_users, num_items: node counts.
        popularity: draw proportionally to ``(train count + 1) ** alpha`` instead of uniformly.
        seed: seed of the sampler's generator.
    """

    def __init__(
        self,
        train_user: Tensor,
        train_item: Tensor,
        num_users: int,
        num_items: int,
        *,
        popularity: bool = False,
        alpha: float = 0.75,
        seed: int = 0,
        max_rounds: int = 20,
    ) -> None:
        self.num_items = num_items
        csr = CSR.from_edges(train_user, train_item, num_users, num_cols=num_items, sort=True,
                             keep_eid=False)
        # each user's train items, ascending (Int32 where ids fit: 4 bytes per interaction)
        self.indptr = torch.from_numpy(csr.indptr)
        self.items = torch.from_numpy(np.ascontiguousarray(csr.indices))
        self.deg = deg = torch.from_numpy(csr.degree())
        self._longest = int(deg.max()) if deg.numel() else 0
        del csr
        if deg.numel() and int(deg.max()) >= num_items:
            u = int(torch.argmax(deg))
            raise NegativeSamplingError(
                f"user index {u} has every one of the {num_items} items in train: no negative "
                "item exists for it (drop the user or add items)")
        self.cdf: Tensor | None = None
        if popularity:
            count = torch.bincount(train_item.cpu(), minlength=num_items).double()
            cdf = torch.cumsum((count + 1.0) ** alpha, 0)
            self.cdf = cdf / cdf[-1]
        self.max_rounds = max_rounds
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_view(cls, view: TrainView, **kwargs: Any) -> NegativeSampler:
        """The sampler of a train view's interactions (keyword arguments as the class's)."""
        users, items = view.train_pairs()
        return cls(users, items, view.num_users, view.num_items, **kwargs)

    def _draw(self, n: int) -> Tensor:
        if self.cdf is None:
            return torch.randint(self.num_items, (n,), generator=self.generator)
        r = torch.rand(n, generator=self.generator, dtype=torch.float64)
        return torch.searchsorted(self.cdf, r, right=True).clamp_(max=self.num_items - 1)

    def is_positive(self, users: Tensor, items: Tensor) -> Tensor:
        """Bool[...] whether ``items`` is a train item of ``users`` (same shapes)."""
        return row_member(self.indptr, self.items, users, items, self._longest)

    def _exact(self, users: Tensor) -> Tensor:
        """Uniform draws from each user's non-train items (no rejection).

        The k-th non-positive item of a user is ``k + #{j : pos_j - j <= k}`` (``pos``
        the user's sorted train items): the positives of the drawing users (only theirs)
        shifted by their rank, with keys ``r * (I + 1) +
        shifted`` per drawing row ``r``, sorted, answer it by one ``searchsorted``.
        """
        deg = self.deg[users]
        k = (torch.rand(users.numel(), generator=self.generator, dtype=torch.float64)
             * (self.num_items - deg)).long()
        k = torch.minimum(k, self.num_items - deg - 1)
        row = torch.repeat_interleave(torch.arange(users.numel()), deg)
        first = torch.cumsum(deg, 0) - deg
        rank = torch.arange(row.numel()) - first[row]
        items = self.items[self.indptr[users][row] + rank].long()
        shifted = row * (self.num_items + 1) + (items - rank)
        base = torch.arange(users.numel()) * (self.num_items + 1)
        below = torch.searchsorted(shifted, base + k, right=True) - first
        return k + below

    def sample(self, users: Tensor, num_negatives: int = 1) -> Tensor:
        """Negative items Long[B, num_negatives] for ``users`` Long[B] (on the CPU)."""
        users = users.cpu()
        flat = users.repeat_interleave(num_negatives)
        neg = self._draw(flat.numel())
        bad = self.is_positive(flat, neg).nonzero().flatten()
        for _ in range(self.max_rounds):
            if bad.numel() == 0:
                break
            neg[bad] = self._draw(bad.numel())
            bad = bad[self.is_positive(flat[bad], neg[bad])]
        if bad.numel():
            neg[bad] = self._exact(flat[bad])
        return neg.view(-1, num_negatives)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
