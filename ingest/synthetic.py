"""A seeded synthetic recommendation graph with communities (pure numpy, vectorised).

Users and items belong to ``num_communities`` communities. A user's interactions
go to items of its own community with probability ``in_community``, else to an item
drawn by global popularity (Zipf-like); in-community interactions get higher
ratings. Friendships join users of the same community with probability
``friend_homophily``, so friends share taste. Items carry a category, a price, a
year and tags drawn mostly from their community's tag vocabulary; users carry
their community, an age and a country. Time stamps are unix seconds within
``span_days`` after ``start_ts``.

Everything is drawn from one ``numpy.random.Generator(seed)`` with array
operations only, so ten million interactions take seconds, and the same
arguments always give the same frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from gnnrec.ingest.readers import Source

COUNTRIES = np.array(["DE", "FR", "GB", "US", "BR", "IN", "JP", "NG"], dtype=object)
TAGS_PER_COMMUNITY = 5


@dataclass(frozen=True)
class SyntheticData:
    """The four frames, in the column layout ``gnnrec ingest`` reads.

    * ``users``: ``user, community, age, country``
    * ``items``: ``item, community, category, price, year, tags`` (list of str)
    * ``interactions``: ``user, item, weight, timestamp`` (one row per pair)
    * ``social``: ``user, friend`` (one row per unordered pair, ``user < friend``)
    """

    users: pd.DataFrame
    items: pd.DataFrame
    interactions: pd.DataFrame
    social: pd.DataFrame

    def sources(self, name: str = "synthetic") -> list[Source]:
        """As :class:`~gnnrec.ingest.readers.Source` objects for the pipeline."""
        return [
            Source.from_frame("users", self.users, f"{name}:users"),
            Source.from_frame("items", self.items, f"{name}:items"),
            Source.from_frame("interactions", self.interactions, f"{name}:interactions"),
            Source.from_frame("social", self.social, f"{name}:social"),
        ]


def _ids(prefix: str, n: int) -> np.ndarray:
    return np.char.add(prefix, np.arange(n).astype(str)).astype(object)


def _draw_in_groups(
    rng: np.random.Generator, groups: np.ndarray, members_by_group: np.ndarray,
    offsets: np.ndarray, sizes: np.ndarray, skew: float,
) -> np.ndarray:
    """For each entry of ``groups``, one member of that group (-1 where it is empty).

    ``skew > 1`` favours the first members (popular items first).
    """
    size = sizes[groups]
    pos = np.floor(rng.random(len(groups)) ** skew * size).astype(np.int64)
    picked = np.full(len(groups), -1, dtype=np.int64)
    ok = size > 0
    picked[ok] = members_by_group[offsets[groups[ok]] + pos[ok]]
    return picked


def generate(
    num_users: int = 1_000,
    num_items: int = 500,
    *,
    seed: int = 0,
    friend_density: float = 0.01,
    num_communities: int | None = None,
    interactions_per_user: float = 20.0,
    in_community: float = 0.8,
    friend_homophily: float = 0.8,
    max_tags: int = 3,
    start_ts: int = 1_577_836_800,  # 2020-01-01
    span_days: int = 365,
) -> SyntheticData:
    """Generate users, items, interactions and friendships.

    ``friend_density`` is the probability that a given pair of users are friends
    (expected friends per user ~ ``friend_density * (num_users - 1)``).
    ``interactions_per_user`` is a Poisson mean (at least 1, at most ``num_items``);
    repeated (user, item) draws are dropped, so the total is lower, noticeably so
    when communities hold few items.
    """
    if num_users < 1 or num_items < 1:
        raise ValueError("num_users and num_items must be at least 1")
    if not 0.0 <= friend_density <= 1.0:
        raise ValueError("friend_density is a probability in [0, 1]")
    rng = np.random.default_rng(seed)
    k = num_communities or max(2, min(50, num_users // 50, num_items // 50))
    user_comm = rng.integers(0, k, num_users)
    item_comm = rng.integers(0, k, num_items)
    popularity = rng.permutation(num_items)  # popularity rank -> item index

    # items sorted by community, most popular first inside each community
    rank = np.empty(num_items, dtype=np.int64)
    rank[popularity] = np.arange(num_items)
    items_by_comm = np.lexsort((rank, item_comm))
    item_sizes = np.bincount(item_comm, minlength=k)
    item_offsets = np.concatenate([[0], np.cumsum(item_sizes)[:-1]])

    # interactions
    counts = np.clip(rng.poisson(interactions_per_user, num_users), 1, num_items)
    users = np.repeat(np.arange(num_users), counts)
    m = len(users)
    local = rng.random(m) < in_community
    items = popularity[np.floor(rng.random(m) ** 2.0 * num_items).astype(np.int64)]
    picked = _draw_in_groups(rng, user_comm[users], items_by_comm, item_offsets, item_sizes, 1.5)
    use_local = local & (picked >= 0)
    items[use_local] = picked[use_local]
    pair = users.astype(np.int64) * num_items + items
    _, first = np.unique(pair, return_index=True)
    first.sort()
    users, items, use_local = users[first], items[first], use_local[first]
    n = len(users)
    rating = np.where(use_local, rng.integers(3, 6, n), rng.integers(1, 6, n)).astype(np.float64)
    timestamps = start_ts + rng.integers(0, span_days * 86_400, n)

    # friendships: endpoints mostly from the same community
    n_pairs = rng.poisson(friend_density * num_users * (num_users - 1) / 2) if num_users > 1 else 0
    a = rng.integers(0, num_users, n_pairs)
    users_by_comm = np.argsort(user_comm, kind="stable")
    user_sizes = np.bincount(user_comm, minlength=k)
    user_offsets = np.concatenate([[0], np.cumsum(user_sizes)[:-1]])
    b = rng.integers(0, num_users, n_pairs)
    same = rng.random(n_pairs) < friend_homophily
    b_local = _draw_in_groups(rng, user_comm[a], users_by_comm, user_offsets, user_sizes, 1.0)
    b[same] = b_local[same]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keep = lo != hi
    friend_pairs = np.unique(lo[keep].astype(np.int64) * num_users + hi[keep])
    lo, hi = friend_pairs // num_users, friend_pairs % num_users

    # attributes and tags
    user_ids, item_ids = _ids("u", num_users), _ids("i", num_items)
    n_tags = rng.integers(1, max_tags + 1, num_items)
    tag_item = np.repeat(np.arange(num_items), n_tags)
    from_comm = rng.random(len(tag_item)) < 0.8
    own_tag = rng.integers(0, TAGS_PER_COMMUNITY, len(tag_item))
    any_tag = rng.integers(0, k * TAGS_PER_COMMUNITY, len(tag_item))
    tag_code = np.where(from_comm, item_comm[tag_item] * TAGS_PER_COMMUNITY + own_tag, any_tag)
    tag_names = _ids("tag_", k * TAGS_PER_COMMUNITY)[tag_code]
    tag_lists = np.empty(num_items, dtype=object)
    tag_lists[:] = [part.tolist() for part in np.split(tag_names, np.cumsum(n_tags)[:-1])]

    # the string columns are plain object arrays: pandas' text dtype costs more to build
    # and the pipeline turns them into Python strings anyway
    items_df = pd.DataFrame({
        "item": item_ids,
        "community": item_comm,
        "category": _ids("cat_", k)[item_comm],
        "price": np.round(rng.lognormal(2.5, 0.8, num_items), 2),
        "year": rng.integers(1960, 2024, num_items),
        "tags": tag_lists,
    })
    users_df = pd.DataFrame({
        "user": user_ids,
        "community": user_comm,
        "age": rng.integers(16, 80, num_users),
        "country": COUNTRIES[rng.integers(0, len(COUNTRIES), num_users)],
    })
    interactions = pd.DataFrame({
        "user": user_ids[users], "item": item_ids[items],
        "weight": rating, "timestamp": timestamps.astype(np.int64),
    })
    order = user_ids[lo] < user_ids[hi]
    social = pd.DataFrame({
        "user": np.where(order, user_ids[lo], user_ids[hi]),
        "friend": np.where(order, user_ids[hi], user_ids[lo]),
    })
    return SyntheticData(users_df, items_df, interactions, social)
