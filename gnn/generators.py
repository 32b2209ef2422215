"""The seeded synthetic graph generator (tests, ``gnnrec synth`` and scale runs)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch_geometric.data import HeteroData

from gnnrec.gnn.data import build_graph


def _unique(a: np.ndarray) -> np.ndarray:
    """Sorted unique values (sort-based: faster than numpy 2's hash path on large int arrays)."""
    a = np.sort(a)
    return a[np.concatenate([[True], a[1:] != a[:-1]])] if a.size else a


def synthetic_graph(
    num_users: int = 1000,
    num_items: int = 500,
    *,
    num_tags: int = 40,
    num_communities: int = 8,
    mean_interactions: float = 20.0,
    friends_per_user: float = 4.0,
    in_community: float = 0.8,
    zipf: float = 0.8,
    seed: int = 0,
) -> HeteroData:
    """A seeded synthetic graph with community structure (tests and scale runs).

    Users and items belong to ``num_communities`` communities; a user's interactions come
    from its own community with probability ``in_community`` (else from the whole catalogue),
    items weighted by a Zipf popularity. Friends and tags follow the communities too.
    Interactions carry ratings 1..5 as ``weight`` and times within one year; users and items
    get small feature matrices. Vectorised: millions of edges take seconds.
    """
    rng = np.random.default_rng(seed)
    c = num_communities
    ucomm = rng.integers(c, size=num_users)
    icomm = rng.integers(c, size=num_items)
    pop = (1.0 / (rng.permutation(num_items) + 1.0) ** zipf)

    def chooser(member: np.ndarray, weights: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """Draw one node per entry of ``comm`` (Long[n] communities), weighted by ``weights``:
        inside that community with probability ``in_community``, else from all nodes."""
        order = np.argsort(member, kind="stable")
        cum = np.cumsum(weights[order])
        counts = np.bincount(member, minlength=c)
        end = np.cumsum(counts)
        lo = np.where(end - counts > 0, cum[np.maximum(end - counts - 1, 0)], 0.0)
        tot = np.where(counts > 0, cum[np.maximum(end - 1, 0)] - lo, 0.0)

        def draw(comm: np.ndarray) -> np.ndarray:
            inside = (rng.random(comm.size) < in_community) & (tot[comm] > 0)
            u = rng.random(comm.size)
            target = np.where(inside, lo[comm] + u * tot[comm], u * cum[-1])
            return order[np.minimum(np.searchsorted(cum, target, side="right"), order.size - 1)]

        return draw

    sigma = 0.8
    deg = rng.lognormal(np.log(mean_interactions) - sigma**2 / 2, sigma, num_users)
    deg = np.clip(np.rint(deg), 1, max(num_items // 2, 1)).astype(np.int64)
    pick_item = chooser(icomm, pop)
    keys = np.zeros(0, dtype=np.int64)
    want = deg
    for _ in range(8):  # redraw the repeats a few times so degrees come close to ``deg``
        users = np.repeat(np.arange(num_users), want)
        keys = _unique(np.concatenate([keys, users * num_items + pick_item(ucomm[users])]))
        want = np.maximum(deg - np.bincount(keys // num_items, minlength=num_users), 0)
        if not want.any():
            break
    users, items = keys // num_items, keys % num_items
    time = 1_600_000_000 + rng.integers(0, 365 * 86_400, size=keys.size)
    rating = rng.integers(1, 6, size=keys.size).astype(np.float32)

    nf = rng.poisson(friends_per_user / 2, num_users)
    fa = np.repeat(np.arange(num_users), nf)
    fb = chooser(ucomm, np.ones(num_users))(ucomm[fa])
    keep = fa != fb
    tcomm = np.arange(num_tags) % c
    ta = np.repeat(np.arange(num_items), rng.integers(1, 4, num_items))
    tb = chooser(tcomm, np.ones(num_tags))(icomm[ta]) if num_tags else ta[:0]
    tkeys = _unique(ta[: tb.size] * max(num_tags, 1) + tb)
    noise = rng.normal(0, 0.1, (num_items, 2)).astype(np.float32)
    item_x = np.stack([icomm / max(c - 1, 1), rng.random(num_items)], 1).astype(np.float32) + noise
    user_x = (rng.integers(18, 70, (num_users, 1)) / 70.0).astype(np.float32)
    return build_graph(
        [f"u{i}" for i in range(num_users)], [f"i{i}" for i in range(num_items)],
        np.stack([users, items]), weight=rating, time=time,
        friend_edge_index=np.stack([fa[keep], fb[keep]]),
        tag_ids=[f"t{i}" for i in range(num_tags)],
        item_tag_edge_index=np.stack([tkeys // max(num_tags, 1), tkeys % max(num_tags, 1)]),
        user_x=user_x, user_feature_names=["age"],
        item_x=item_x, item_feature_names=["genre_signal", "length"],
    )
