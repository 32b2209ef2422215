"""Top-K ranking metrics for implicit feedback.

For a user with relevant (held-out) set ``R`` and ranked list ``L`` (the top ``K``):

- ``recall@K    = |L ∩ R| / |R|`` (not capped at ``K``; as RecBole and the LightGCN code)
- ``precision@K = |L ∩ R| / K``
- ``hit@K       = 1 if L ∩ R else 0``
- ``ndcg@K      = DCG / IDCG``, ``DCG = Σ_{r < K, L_r ∈ R} 1 / log2(r + 2)``,
  ``IDCG = Σ_{r < min(|R|, K)} 1 / log2(r + 2)``
- ``mrr@K       = 1 / (r + 1)`` for the first hit at 0-based rank ``r``, else 0

These are averaged over the evaluated users (those with ``|R| > 0``). Catalogue metrics:

- ``coverage@K`` = fraction of all items that appear in at least one user's top ``K``
- ``novelty@K``  = mean over every recommended (user, item) of ``-log2 p(item)``, with
  ``p(item) = max(train count, 1) / num_users`` (the share of users who have the item in
  train; an item nobody trained on counts as seen once, so the value stays finite)

Keys are ``"{name}@{K}"``, e.g. ``recall@20``. Entries of ``L`` marked invalid (fewer
candidate items than ``K``) count as misses and are left out of coverage and novelty.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

USER_METRICS = ("recall", "ndcg", "precision", "hit", "mrr")
CATALOGUE_METRICS = ("coverage", "novelty")


def discounts(k: int, device: torch.device | str = "cpu") -> Tensor:
    """Float[k] ``1 / log2(rank + 2)`` for ranks ``0..k-1``."""
    return 1.0 / torch.log2(torch.arange(k, device=device, dtype=torch.float64) + 2.0)


def user_metrics(hits: Tensor, num_relevant: Tensor, k: int) -> dict[str, Tensor]:
    """Per-user metrics at ``k`` from a hit matrix.

    Args:
        hits: Bool[B, >=k], ``hits[b, r]`` whether the item ranked ``r`` is relevant.
        num_relevant: Long[B] ``|R|`` per user (> 0).
    Returns:
        ``{name: Float64[B]}`` for recall, ndcg, precision, hit, mrr.
    """
    h = hits[:, :k].to(torch.float64)
    n_hit = h.sum(1)
    disc = discounts(k, hits.device)
    dcg = (h * disc).sum(1)
    idcg = torch.cumsum(disc, 0)[(num_relevant.clamp(max=k) - 1).clamp(min=0)]
    first = torch.where(hits[:, :k].any(1), hits[:, :k].to(torch.int8).argmax(1), -1)
    mrr = torch.where(first >= 0, 1.0 / (first + 1).to(torch.float64), 0.0)
    return {
        "recall": n_hit / num_relevant.to(torch.float64),
        "ndcg": dcg / idcg,
        "precision": n_hit / k,
        "hit": (n_hit > 0).to(torch.float64),
        "mrr": mrr,
    }


class MetricAccumulator:
    """Sums metrics over batches of users; :meth:`compute` gives the means.

    Args:
        num_items: catalogue size (coverage denominator).
        item_count: Long[I] train interactions per item (novelty).
        num_users: users in the graph (novelty's popularity denominator).
        ks: the cut-offs, e.g. (10, 20).
        keep_per_user: also keep every user's values (:meth:`per_user`), e.g. for
            bootstrap confidence intervals.
    """

    def __init__(self, num_items: int, item_count: Tensor, num_users: int,
                 ks: Sequence[int] = (10, 20), keep_per_user: bool = False) -> None:
        self.ks = tuple(sorted(ks))
        self.num_items = num_items
        self.self_info = -torch.log2(item_count.to(torch.float64).clamp(min=1) / max(num_users, 1))
        self.sums: dict[str, float] = {f"{m}@{k}": 0.0 for k in self.ks for m in USER_METRICS}
        self.seen = {k: torch.zeros(num_items, dtype=torch.bool) for k in self.ks}
        self.novelty = dict.fromkeys(self.ks, 0.0)
        self.recommended = dict.fromkeys(self.ks, 0)
        self.users = 0
        self._per_user: dict[str, list[Tensor]] | None = (
            {key: [] for key in self.sums} if keep_per_user else None)

    def update(self, topk: Tensor, hits: Tensor, num_relevant: Tensor,
               valid: Tensor | None = None) -> None:
        """Add a batch: ``topk`` Long[B, Kmax] items, ``hits`` Bool[B, Kmax], ``num_relevant``
        Long[B] (> 0), ``valid`` Bool[B, Kmax] (False for padding entries; default all True)."""
        if topk.size(1) < self.ks[-1]:
            raise ValueError(f"topk has {topk.size(1)} columns, need {self.ks[-1]}")
        topk, hits, num_relevant = topk.cpu(), hits.cpu(), num_relevant.cpu()
        valid = torch.ones_like(hits) if valid is None else valid.cpu()
        hits = hits & valid
        self.users += topk.size(0)
        for k in self.ks:
            for name, values in user_metrics(hits, num_relevant, k).items():
                self.sums[f"{name}@{k}"] += float(values.sum())
                if self._per_user is not None:
                    self._per_user[f"{name}@{k}"].append(values)
            items = topk[:, :k][valid[:, :k]]
            self.seen[k][items] = True
            self.novelty[k] += float(self.self_info[items].sum())
            self.recommended[k] += items.numel()

    def compute(self) -> dict[str, float]:
        """Means over users (user metrics) and the catalogue metrics, keyed ``name@K``."""
        out = {key: (s / self.users if self.users else 0.0) for key, s in self.sums.items()}
        for k in self.ks:
            out[f"coverage@{k}"] = float(self.seen[k].sum()) / max(self.num_items, 1)
            out[f"novelty@{k}"] = self.novelty[k] / max(self.recommended[k], 1)
        out["users"] = float(self.users)
        return out

    def per_user(self) -> dict[str, Tensor]:
        """``{name@K: Float64[users]}`` in update order (needs ``keep_per_user=True``)."""
        if self._per_user is None:
            raise ValueError("per-user values were not kept: pass keep_per_user=True")
        return {key: torch.cat(v) if v else torch.zeros(0, dtype=torch.float64)
                for key, v in self._per_user.items()}
