"""Full-ranking evaluation over all items, batched over users.

Protocol (standard for implicit feedback, as in RecBole and the LightGCN paper):

- ``valid``: rank every item except the user's train items; relevant = valid items.
- ``test``:  rank every item except the user's train and valid items; relevant = test items.

Only users with at least one relevant item are evaluated. A batch of ``B`` users costs one
Float[B, I] score matrix; the batch size defaults to keep it near 64 M entries.
The model is reached only through ``score(users: Long[B]) -> Float[B, I]``
(:func:`dot_scores` for final embeddings); the interactions through
:class:`~gnnrec.gnn.views.SplitInteractions` (of a graph, a train view or a run).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from gnnrec.errors import GnnrecError
from gnnrec.gnn.adjacency import CSR, member
from gnnrec.gnn.data import TEST, TRAIN, VALID
from gnnrec.gnn.metrics import MetricAccumulator
from gnnrec.gnn.views import SplitInteractions, TrainView

ScoreFn = Callable[[Tensor], Tensor]
SplitName = Literal["valid", "test"]
_SCORE_BUDGET = 1 << 26


class EvaluationError(GnnrecError):
    """Evaluation cannot run (no split, nothing to evaluate, bad scores)."""


def default_batch_size(num_items: int) -> int:
    return max(1, min(4096, _SCORE_BUDGET // max(num_items, 1)))


def dot_scores(user: Tensor, item: Tensor) -> ScoreFn:
    """``score(users) = user[users] @ item.T``: the score function of final embeddings."""
    return lambda users: user[users.to(user.device)] @ item.t()


def interactions_of(source: HeteroData | TrainView | SplitInteractions) -> SplitInteractions:
    if isinstance(source, SplitInteractions):
        return source
    if isinstance(source, TrainView):
        return source.interactions
    return SplitInteractions.from_graph(source)


def top_k(scores: Tensor, exclude: CSR, users: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top ``k`` items per row after masking each user's ``exclude`` items.

    Args:
        scores: Float[B, I] (modified in place: excluded entries set to ``-inf``).
        exclude: user -> item CSR of items never to return.
        users: Long[B] the user of each row.
    Returns:
        ``(items Long[B, k'], scores Float[B, k'])``, ``k' = min(k, I)``; rows with fewer
        candidates than ``k'`` end in ``-inf`` scores (their items are not candidates).
    """
    row, col = (torch.from_numpy(a).to(scores.device) for a in exclude.gather(users.cpu()))
    scores[row, col] = float("-inf")
    values, items = torch.topk(scores, min(k, scores.size(1)), dim=1)
    return items, values


class Evaluator:
    """Evaluates score functions on one split of one graph (prepare once, call often).

    Args:
        data: the interactions with their split: of a graph, a train view or a run.
        split: ``valid`` or ``test``.
        ks: cut-offs (metrics for each).
        batch_size: users per score batch (default from the catalogue size).
    """

    def __init__(self, data: HeteroData | TrainView | SplitInteractions,
                 split: SplitName = "valid", *, ks: Sequence[int] = (10, 20),
                 batch_size: int | None = None) -> None:
        inter = interactions_of(data)
        if not inter.has_split:
            raise EvaluationError("graph has no split: run `gnnrec split` or apply_split first")
        if split not in ("valid", "test"):
            raise EvaluationError(f"split must be 'valid' or 'test', got {split!r}")
        self.split = split
        self.ks = tuple(sorted(ks))
        self.num_users, self.num_items = inter.num_users, inter.num_items
        self.exclude = inter.part((TRAIN,) if split == "valid" else (TRAIN, VALID))
        self.target = inter.part((VALID if split == "valid" else TEST,))
        self.target_keys = torch.from_numpy(self.target.keys(self.num_items))
        self.target_degree = torch.from_numpy(self.target.degree())
        self.item_count = inter.item_count((TRAIN,))
        self.users = (self.target_degree > 0).nonzero().flatten()
        self.batch_size = batch_size or default_batch_size(self.num_items)

    def sample_users(self, count: int | None, seed: int) -> Tensor | None:
        """A seeded sample of ``count`` evaluated users (ascending), or None (all) when
        ``count`` is None or not smaller than their number."""
        if count is None or count >= self.users.numel():
            return None
        pick = torch.randperm(self.users.numel(), generator=torch.Generator().manual_seed(seed))
        return self.users[pick[:count]].sort().values

    def __call__(self, score: ScoreFn, *, device: torch.device | str | None = None,
                 users: Tensor | None = None) -> dict[str, float]:
        """Metrics dict (``recall@10`` ... ``novelty@20`` and ``users``) for ``score``.

        ``users`` restricts evaluation to a subset (default: all users with relevant items).
        """
        return self._accumulate(score, device, users, keep_per_user=False)[0].compute()

    def per_user(self, score: ScoreFn, *, device: torch.device | str | None = None,
                 users: Tensor | None = None) -> tuple[dict[str, float], Tensor,
                                                       dict[str, Tensor]]:
        """``(metrics, users Long[U], {name@K: Float64[U]})``: the means of ``__call__``
        plus every evaluated user's value of each user metric (recall, ndcg, precision,
        hit, mrr), e.g. for paired comparisons of two models on the same users."""
        acc, users = self._accumulate(score, device, users, keep_per_user=True)
        return acc.compute(), users, acc.per_user()

    @torch.no_grad()
    def _accumulate(self, score: ScoreFn, device: torch.device | str | None,
                    users: Tensor | None,
                    keep_per_user: bool) -> tuple[MetricAccumulator, Tensor]:
        """The filled accumulator and the evaluated users (default: all with targets)."""
        users = self.users if users is None else users.cpu()
        if users.numel() == 0:
            raise EvaluationError(f"no user has {self.split} interactions to evaluate")
        acc = MetricAccumulator(self.num_items, self.item_count, self.num_users, self.ks,
                                keep_per_user=keep_per_user)
        kmax = self.ks[-1]
        for start in range(0, users.numel(), self.batch_size):
            batch = users[start : start + self.batch_size]
            scores = score(batch.to(device) if device is not None else batch)
            if scores.shape != (batch.numel(), self.num_items):
                raise EvaluationError(f"score() returned shape {list(scores.shape)}, expected "
                                      f"[{batch.numel()}, {self.num_items}]")
            scores = scores.to(torch.float32, copy=True)
            items, values = top_k(scores, self.exclude, batch, kmax)
            if torch.isnan(values).any():  # topk ranks NaN first, so this catches any
                raise EvaluationError("score() returned NaN scores")
            if items.size(1) < kmax:  # catalogue smaller than K: pad with invalid entries
                pad = kmax - items.size(1)
                items = torch.cat([items, items.new_zeros(items.size(0), pad)], 1)
                values = torch.cat([values, values.new_full((values.size(0), pad), -torch.inf)], 1)
            items, values = items.cpu(), values.cpu()
            hits = member(self.target_keys, batch[:, None] * self.num_items + items)
            acc.update(items, hits, self.target_degree[batch], valid=values > -torch.inf)
        return acc, users


def evaluate(score: ScoreFn, data: HeteroData | TrainView | SplitInteractions,
             split: SplitName = "valid", *,
             ks: Sequence[int] = (10, 20), batch_size: int | None = None,
             device: torch.device | str | None = None) -> dict[str, float]:
    """One-shot :class:`Evaluator` call. ``score(users Long[B]) -> Float[B, I]``."""
    return Evaluator(data, split, ks=ks, batch_size=batch_size)(score, device=device)
