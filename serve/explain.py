"""Explanations: why an item for a user, through which friends, co-listeners and tags.

The same counts come from Neo4j (``gnnrec.graph.serving.explain_paths``) or from the
in-memory graph (``ServingState.explain_counts``) and are scored here the same way:

* a friend who interacted with the item: ``1 / sqrt(its number of items)`` (LightGCN's
  normalisation: a friend with a short history speaks louder for each item);
* a user who interacted with the item and shares items with the user:
  ``overlap / sqrt(its items * user's items)`` (cosine of the two item sets);
* a tag of the item found in the user's history: ``count / user's items``.

The Cypher in ``graph/serving.py`` orders and cuts its rows by the same formulas.
"""

from __future__ import annotations

import math

from gnnrec.serve.schemas import CoUserReason, Explanation, FriendReason, Source, TagReason
from gnnrec.serve.state import ExplainCounts


def friend_contribution(items: int) -> float:
    return 1.0 / math.sqrt(max(items, 1))


def co_user_contribution(overlap: int, items: int, user_items: int) -> float:
    return overlap / math.sqrt(max(items, 1) * max(user_items, 1))


def tag_contribution(count: int, user_items: int) -> float:
    return count / max(user_items, 1)


def build_explanation(user: str, item: str, counts: ExplainCounts, *, source: Source,
                      score: float | None, limit: int, note: str | None = None) -> Explanation:
    """Score, sort (best first, then by id) and cut each list to ``limit``."""
    deg = counts.user_degree
    friends = sorted(
        (FriendReason(user=f, items=n, contribution=friend_contribution(n))
         for f, n in counts.friends),
        key=lambda r: (-r.contribution, r.user))[:limit]
    co_users = sorted(
        (CoUserReason(user=v, overlap=o, items=n, contribution=co_user_contribution(o, n, deg))
         for v, o, n in counts.co_users),
        key=lambda r: (-r.contribution, r.user))[:limit]
    tags = sorted(
        (TagReason(tag=t, count=c, contribution=tag_contribution(c, deg)) for t, c in counts.tags),
        key=lambda r: (-r.contribution, r.tag))[:limit]
    return Explanation(user=user, item=item, source=source, score=score, user_items=deg,
                       friends=friends, co_users=co_users, tags=tags, note=note)
