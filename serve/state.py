"""In-memory serving state: embeddings, the graph around them, scoring and online updates.

No Ray and no Neo4j here: :class:`ServingState` is built from plain arrays (tests,
benchmarks) or from a run directory (:meth:`ServingState.from_run`) and answers

* ``recommend``: top-k unseen items by dot product, with a tag filter, excluded ids and
  an optional MMR re-ranking on item embeddings (``diversity`` in [0, 1]); exact over
  every item, or, for a catalogue of at least ``AnnOptions.threshold`` items, over the
  candidates of an approximate index (:mod:`gnnrec.serve.ann`) with the same filters;
* ``similar``: cosine nearest items;
* ``explain_counts``: the graph facts an explanation is made of (see ``explain.py``);
* ``add_interactions`` / ``add_user`` / ``forget_user``: online updates.

Online fold-in (LightGCN-style, no retraining): a user's neighbourhood embedding is the
mean of its items' embeddings weighted ``1 / sqrt(deg(item))`` (LightGCN's symmetric
normalisation, binary adjacency: interaction weights are not used), rescaled to the
user's previous norm, then mixed: ``e_u <- (1 - mix) * e_u + mix * agg``. A new user
gets ``agg`` alone (from its items and/or its friends' embeddings, norm = median user
norm); a user with neither is served by popularity (``cold_start == "popularity"``). A
new item gets the mean embedding of the known users who interacted with it (norm =
median item norm); until one of them has an embedding it is not recommended.

"Seen" holds every known interaction (train, valid and test of the run, plus feedback):
served users are never recommended what they already consumed.

Not thread-safe: the service applies updates from one asyncio event loop.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gnnrec.gnn.adjacency import CSR
from gnnrec.serve.ann import AnnOptions, ItemIndex
from gnnrec.serve.arrays import Growing, median_norm, mmr, top_k, unit_rows
from gnnrec.serve.errors import ConflictError, InvalidInputError, NotFoundError

__all__ = ["ExplainCounts", "FoldIn", "NeoSync", "Ranking", "Scored", "ServingState", "mmr"]

_MIN_POOL = 50


@dataclass(frozen=True)
class Scored:
    id: str
    score: float


@dataclass(frozen=True)
class Ranking:
    """A recommendation list; ``cold_start`` is ``"popularity"`` for users without embedding."""

    items: list[Scored]
    cold_start: str | None = None


@dataclass(frozen=True)
class ExplainCounts:
    """Graph facts behind (user, item), before scoring (see :mod:`gnnrec.serve.explain`).

    ``friends``: (friend id, its number of items) for friends who interacted with the item;
    ``co_users``: (user id, items shared with the user, its number of items) for users who
    interacted with the item; ``tags``: (tag, how many of the user's items carry it) for
    the item's tags.
    """

    user_degree: int
    friends: list[tuple[str, int]]
    co_users: list[tuple[str, int, int]]
    tags: list[tuple[str, int]]


@dataclass
class NeoSync:
    """How far a state has been brought in line with Neo4j (the service's bookkeeping).

    ``loaded``: the load-time pass ran (tombstoned users dropped, feedback replayed);
    ``tombstones``: the tombstone keys already applied; ``tombstones_since``: where the
    next poll for new tombstones starts (Neo4j clock, ms; ``None``: from the beginning);
    ``feedback_since``: where the next replay of online feedback starts (µs; ``None``: the
    run has no export time, nothing is replayed); ``replayed``: what replays folded in
    (``interactions`` read, ``users_created``); ``note``: why nothing was replayed.
    """

    loaded: bool = False
    tombstones: set[str] = field(default_factory=set)
    tombstones_since: int | None = None
    feedback_since: int | None = None
    replayed: dict[str, int] = field(
        default_factory=lambda: {"interactions": 0, "users_created": 0})
    note: str | None = None


@dataclass(frozen=True)
class FoldIn:
    users_updated: list[str] = field(default_factory=list)
    users_created: list[str] = field(default_factory=list)
    items_created: list[str] = field(default_factory=list)
    items_without_embedding: list[str] = field(default_factory=list)


class ServingState:
    """Embeddings of users and items plus the interaction, friend and tag graph.

    Args:
        user_ids, item_ids: external ids; position = row of the embedding matrices.
        user_emb: Float [U, d]; item_emb: Float [I, d].
        seen: user -> items CSR (every known interaction).
        friends: user -> users CSR, both directions (optional).
        item_tags: item -> tag CSR, tags indexing ``tag_names`` (optional).
        popularity: Float [I] (default: number of users per item in ``seen``).
        model, run, metrics: shown by ``/health``.
        fold_in_mix: see the module docstring.
        ann: when and how an approximate item index serves ``recommend``
            (default :class:`~gnnrec.serve.ann.AnnOptions`: from 100,000 items).
        exported_at: Neo4j's clock (epoch µs) when the run's graph was exported; the
            service replays the online feedback Neo4j received after it.
    """

    def __init__(
        self,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        user_emb: np.ndarray,
        item_emb: np.ndarray,
        *,
        seen: CSR,
        friends: CSR | None = None,
        item_tags: CSR | None = None,
        tag_names: Sequence[str] = (),
        popularity: np.ndarray | None = None,
        model: str = "",
        run: str = "",
        metrics: dict[str, Any] | None = None,
        fold_in_mix: float = 0.5,
        ann: AnnOptions | None = None,
        exported_at: int | None = None,
    ) -> None:
        n_users, n_items = len(user_ids), len(item_ids)
        user_emb = np.asarray(user_emb, dtype=np.float32)
        item_emb = np.asarray(item_emb, dtype=np.float32)
        if user_emb.shape[0] != n_users or item_emb.shape[0] != n_items:
            raise ValueError(f"embeddings {user_emb.shape} / {item_emb.shape} do not match "
                             f"{n_users} users / {n_items} items")
        if user_emb.shape[1] != item_emb.shape[1]:
            raise ValueError("user and item embeddings have different dimensions")
        if seen.num_rows != n_users:
            raise ValueError(f"seen has {seen.num_rows} rows for {n_users} users")
        self.model, self.run, self.metrics = model, run, dict(metrics or {})
        self.exported_at = exported_at
        self.fold_in_mix = fold_in_mix
        self._users: list[str | None] = [str(u) for u in user_ids]
        self._items: list[str] = [str(i) for i in item_ids]
        self._user_index = {u: k for k, u in enumerate(self._users)}
        self._item_index = {i: k for k, i in enumerate(self._items)}
        if len(self._user_index) != n_users or len(self._item_index) != n_items:
            raise ValueError("duplicate user or item ids")
        self._user_emb = Growing(user_emb)
        self._item_emb = Growing(item_emb)
        self._item_unit = Growing(unit_rows(item_emb))
        self._user_known = Growing(np.ones(n_users, dtype=bool))
        self._item_ok = Growing(np.ones(n_items, dtype=bool))
        self._seen = [np.unique(seen.row(u)) for u in range(n_users)]
        self._item_users: list[set[int]] = [set() for _ in range(n_items)]
        for u, items in enumerate(self._seen):
            for i in items.tolist():
                self._item_users[i].add(u)
        if popularity is None:
            popularity = np.array([len(s) for s in self._item_users], dtype=np.float64)
        self._popularity = Growing(np.asarray(popularity, dtype=np.float64))
        friends = friends if friends is not None else CSR.empty(n_users)
        self._friends = [set(friends.row(u).tolist()) - {u} for u in range(n_users)]
        for u, fs in enumerate(self._friends):  # make symmetric whatever was given
            for f in fs:
                self._friends[f].add(u)
        item_tags = item_tags if item_tags is not None else CSR.empty(n_items)
        self._tag_names = [str(t) for t in tag_names]
        self._tag_index = {t: k for k, t in enumerate(self._tag_names)}
        self._item_tags = [np.unique(item_tags.row(i)) for i in range(n_items)]
        by_tag: list[list[int]] = [[] for _ in self._tag_names]
        for i, tags in enumerate(self._item_tags):
            for t in tags.tolist():
                by_tag[t].append(i)
        self._tag_items = [np.asarray(v, dtype=np.int64) for v in by_tag]
        self._user_norm = median_norm(user_emb)
        self._item_norm = median_norm(item_emb)
        self._online_items: set[int] = set()
        self.neo4j_sync = NeoSync()
        ann = ann or AnnOptions()
        self._index = self._build_index(ann) if ann.applies_to(n_items) else None

    def _build_index(self, ann: AnnOptions) -> ItemIndex:
        """The approximate index over the item embeddings, its ``nprobe`` calibrated on a
        seeded sample of ``ann.calibration_users`` users (their embeddings and seen items)."""
        users = np.flatnonzero(self._user_known.view)
        rng = np.random.default_rng(ann.seed)
        rows = np.sort(rng.choice(users, min(ann.calibration_users, len(users)), replace=False))
        return ItemIndex.build(self._item_emb.view, ann, queries=self._user_emb.view[rows],
                               query_rows=rows, query_seen=[self._seen[u] for u in rows])

    def calibration_users(self) -> list[str]:
        """The users whose embeddings calibrated the index (none without an index or a
        calibration): a measurement of its recall leaves them out."""
        cal = self._index.calibration if self._index is not None else None
        if not cal or cal["rows"] is None:
            return []
        return [u for u in (self._users[r] for r in cal["rows"]) if u is not None]

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_run(cls, path: str | os.PathLike[str], *, fold_in_mix: float = 0.5,
                 ann: AnnOptions | None = None) -> ServingState:
        """Load ``runs/NAME`` from the run directory alone (no graph file): its final
        embeddings, id maps, every known interaction, the friendships and the item tags
        (see :mod:`gnnrec.gnn.run`)."""
        from gnnrec.gnn.run import Run

        run = Run.open(path)
        meta = run.meta()
        user_emb, item_emb = run.embeddings()
        g = run.graph()
        return cls(
            g.user_ids, g.item_ids, user_emb.float().numpy(), item_emb.float().numpy(),
            seen=g.interactions.csr, friends=g.friends, item_tags=g.item_tags,
            tag_names=g.tag_ids, model=str(meta["model"]["name"]), run=os.fspath(path),
            metrics=meta.get("metrics") or {}, fold_in_mix=fold_in_mix, ann=ann,
            exported_at=meta["graph"].get("exported_at"),
        )

    # -- lookups ------------------------------------------------------------------
    @property
    def num_users(self) -> int:
        return len(self._user_index)

    @property
    def num_items(self) -> int:
        return len(self._item_index)

    @property
    def dim(self) -> int:
        return int(self._item_emb.view.shape[1])

    def user_ids(self) -> list[str]:
        """The ids of the users currently served."""
        return list(self._user_index)

    def has_user(self, user: str) -> bool:
        return user in self._user_index

    def has_item(self, item: str) -> bool:
        return item in self._item_index

    def user_items(self, user: str) -> list[str]:
        return [self._items[i] for i in self._seen[self._uidx(user)].tolist()]

    def user_embedding(self, user: str) -> np.ndarray | None:
        u = self._uidx(user)
        return self._user_emb.view[u].copy() if self._user_known.view[u] else None

    @property
    def index(self) -> ItemIndex | None:
        """The approximate item index ``recommend`` uses (``None``: exact scoring)."""
        return self._index

    def info(self) -> dict[str, Any]:
        return {"run": self.run, "model": self.model, "metrics": self.metrics,
                "users": self.num_users, "items": self.num_items, "tags": len(self._tag_names),
                "dim": self.dim, "scoring": "exact" if self._index is None else "approximate",
                **({"index": self._index.info()} if self._index is not None else {})}

    def _uidx(self, user: str) -> int:
        u = self._user_index.get(user)
        if u is None:
            raise NotFoundError(f"unknown user {user!r}: create it with POST /users "
                                "(optionally with its items and friends)")
        return u

    def _iidx(self, item: str) -> int:
        i = self._item_index.get(item)
        if i is None:
            raise NotFoundError(f"unknown item {item!r}")
        return i

    # -- reads --------------------------------------------------------------------
    def user_index(self, user: str) -> int:
        """Row of ``user``; :class:`NotFoundError` (pointing at ``POST /users``) when unknown."""
        return self._uidx(user)

    def score_users(self, users: Sequence[int]) -> np.ndarray:
        """Float [B, I]: dot-product scores (rows of popularity-served users are unused)."""
        return self._user_emb.view[np.asarray(users, dtype=np.int64)] @ self._item_emb.view.T

    def recommend(self, user: str, k: int = 10, *, tag: str | None = None,
                  exclude: Iterable[str] = (), diversity: float = 0.0,
                  mmr_pool: int = 5) -> Ranking:
        """Top-``k`` items ``user`` has not interacted with, best first."""
        u = self._uidx(user)
        if self._index is not None and self._user_known.view[u]:
            return self._rank_indexed(u, k, tag=tag, exclude=exclude, diversity=diversity,
                                      mmr_pool=mmr_pool)
        scores = self._item_emb.view @ self._user_emb.view[u] if self._user_known.view[u] else None
        return self.rank(u, scores, k, tag=tag, exclude=exclude, diversity=diversity,
                         mmr_pool=mmr_pool)

    def rank(self, u: int, scores: np.ndarray | None, k: int, *, tag: str | None = None,
             exclude: Iterable[str] = (), diversity: float = 0.0, mmr_pool: int = 5) -> Ranking:
        """Filter and order precomputed ``scores`` of user row ``u`` (see :meth:`recommend`).

        ``scores`` ``None`` (or a user without embedding) ranks by popularity.
        """
        if not 0.0 <= diversity <= 1.0:
            raise InvalidInputError(f"diversity must be in [0, 1], got {diversity}")
        cold = None
        if scores is None or not self._user_known.view[u]:
            scores, cold = self._popularity.view.astype(np.float32), "popularity"
        scores = np.array(scores, dtype=np.float32, copy=True)
        scores[~self._item_ok.view] = -np.inf
        scores[self._seen[u]] = -np.inf
        drop = [self._item_index[e] for e in exclude if e in self._item_index]
        if drop:
            scores[drop] = -np.inf
        if tag is not None:
            t = self._tag_index.get(tag)
            if t is None:
                raise NotFoundError(f"unknown tag {tag!r}: no item carries it")
            kept = np.full_like(scores, -np.inf)
            kept[self._tag_items[t]] = scores[self._tag_items[t]]
            scores = kept
        if diversity > 0:
            pool = top_k(scores, max(mmr_pool * k, _MIN_POOL))
            order = mmr(pool, scores[pool], self._item_unit.view, k, diversity)
        else:
            order = top_k(scores, k)
        return Ranking([Scored(self._items[i], float(scores[i])) for i in order.tolist()], cold)

    def _rank_indexed(self, u: int, k: int, *, tag: str | None, exclude: Iterable[str],
                      diversity: float, mmr_pool: int) -> Ranking:
        """:meth:`rank` over the approximate index's candidates for user row ``u``.

        The index is asked for enough neighbours to survive the filters (seen, excluded,
        items without embedding, the tag), four times more while too few do; a tag that
        few items carry is scored exactly over its items. Scores are exact dot products.
        """
        if not 0.0 <= diversity <= 1.0:
            raise InvalidInputError(f"diversity must be in [0, 1], got {diversity}")
        assert self._index is not None
        query = self._user_emb.view[u]
        want = max(mmr_pool * k, _MIN_POOL) if diversity > 0 else k
        drop = [self._item_index[e] for e in exclude if e in self._item_index]
        blocked = np.union1d(self._seen[u], np.asarray(drop, dtype=np.int64))
        allowed: np.ndarray | None = None
        if tag is not None:
            t = self._tag_index.get(tag)
            if t is None:
                raise NotFoundError(f"unknown tag {tag!r}: no item carries it")
            allowed = self._tag_items[t]
            if len(allowed) <= self._index.options.exact_below:
                return self._rank_rows(allowed[~np.isin(allowed, blocked)], query, k,
                                       want, diversity)
        n = want + len(blocked) + 32
        while True:
            cand = self._index.search(query, n)
            keep = self._item_ok.view[cand] & ~np.isin(cand, blocked)
            if allowed is not None:
                keep &= np.isin(cand, allowed)
            if keep.sum() >= want or len(cand) < n:
                return self._rank_rows(cand[keep], query, k, want, diversity)
            if 4 * n > self._index.options.max_fetch_share * self.num_items:
                scores = self._item_emb.view @ query  # too much filtered out: score exactly
                return self.rank(u, scores, k, tag=tag, exclude=exclude, diversity=diversity,
                                 mmr_pool=mmr_pool)
            n *= 4

    def _rank_rows(self, rows: np.ndarray, query: np.ndarray, k: int, want: int,
                   diversity: float) -> Ranking:
        """The best ``k`` of candidate ``rows`` by exact score (MMR over the best ``want``)."""
        rows = np.unique(rows)  # ascending: ties go to the lower row, as in exact ranking
        rows = rows[self._item_ok.view[rows]]
        scores = (self._item_emb.view[rows] @ query).astype(np.float32)
        pool = top_k(scores, want)
        if diversity > 0:
            order = mmr(rows[pool], scores[pool], self._item_unit.view, k, diversity)
            by_row = dict(zip(rows[pool].tolist(), scores[pool].tolist(), strict=True))
            return Ranking([Scored(self._items[i], float(by_row[i])) for i in order.tolist()])
        pool = pool[:k]
        return Ranking([Scored(self._items[i], float(s))
                        for i, s in zip(rows[pool].tolist(), scores[pool].tolist(), strict=True)])

    def similar(self, item: str, k: int = 10) -> list[Scored]:
        """The ``k`` items of highest cosine similarity to ``item`` (itself excluded)."""
        i = self._iidx(item)
        if not self._item_ok.view[i]:
            raise NotFoundError(f"item {item!r} has no embedding yet (none of its users has one)")
        unit = self._item_unit.view
        sims = unit @ unit[i]
        sims[~self._item_ok.view] = -np.inf
        sims[i] = -np.inf
        return [Scored(self._items[j], float(sims[j])) for j in top_k(sims, k).tolist()]

    def score(self, user: str, item: str) -> float | None:
        """The model score of (user, item); ``None`` when either has no embedding."""
        u, i = self._uidx(user), self._iidx(item)
        if not (self._user_known.view[u] and self._item_ok.view[i]):
            return None
        return float(self._user_emb.view[u] @ self._item_emb.view[i])

    def explain_counts(self, user: str, item: str) -> ExplainCounts:
        """Friends, co-interacting users and shared tags behind (user, item), unsorted."""
        u, i = self._uidx(user), self._iidx(item)
        mine = self._seen[u]
        users_of_item = self._item_users[i]
        friends = [(str(self._users[f]), len(self._seen[f]))
                   for f in self._friends[u] if f in users_of_item]
        mask = np.zeros(len(self._items), dtype=bool)
        mask[mine] = True
        co_users = []
        for v in users_of_item:
            if v != u and (overlap := int(mask[self._seen[v]].sum())):
                co_users.append((str(self._users[v]), overlap, len(self._seen[v])))
        tags: list[tuple[str, int]] = []
        if len(self._item_tags[i]) and len(mine):
            counts = np.bincount(np.concatenate([self._item_tags[j] for j in mine.tolist()]),
                                 minlength=len(self._tag_names))
            tags = [(self._tag_names[t], int(counts[t]))
                    for t in self._item_tags[i].tolist() if counts[t] > 0]
        return ExplainCounts(len(mine), friends, co_users, tags)

    # -- writes -------------------------------------------------------------------
    def check_new_user(self, user: str, items: Sequence[str], friends: Sequence[str]) -> None:
        """Raise unless ``add_user(user, items, friends)`` would succeed (nothing changes)."""
        if user in self._user_index:
            raise ConflictError(f"user {user!r} already exists; record new interactions with "
                                "POST /interactions")
        unknown_items = sorted({i for i in items if i not in self._item_index})
        unknown_friends = sorted({f for f in friends if f not in self._user_index})
        problems = []
        if unknown_items:
            problems.append(f"unknown items {unknown_items[:10]} (new items enter through "
                            "POST /interactions)")
        if unknown_friends:
            problems.append(f"unknown friends {unknown_friends[:10]}")
        if user in friends:
            problems.append("a user cannot be its own friend")
        if problems:
            raise InvalidInputError(f"user {user!r}: " + "; ".join(problems))

    def add_user(self, user: str, items: Sequence[str] = (),
                 friends: Sequence[str] = ()) -> str:
        """Cold start: ``"items"``, ``"friends"``, ``"items+friends"`` or ``"popularity"``."""
        self.check_new_user(user, items, friends)
        u = self._new_user(user)
        item_rows = sorted({self._item_index[i] for i in items})
        self._link(u, item_rows)
        for f in {self._user_index[f] for f in friends}:
            self._friends[u].add(f)
            self._friends[f].add(u)
        parts, used = [], []
        if (agg := self._neighbourhood(u)) is not None:
            parts.append(agg)
            used.append("items")
        known = [f for f in self._friends[u] if self._user_known.view[f]]
        if known:
            parts.append(self._user_emb.view[known].mean(axis=0))
            used.append("friends")
        if not parts:
            return "popularity"
        emb = np.mean([p / max(float(np.linalg.norm(p)), 1e-12) for p in parts], axis=0)
        self._set_user(u, emb * self._user_norm / max(float(np.linalg.norm(emb)), 1e-12))
        return "+".join(used)

    def add_interactions(self, pairs: Iterable[tuple[str, str]]) -> FoldIn:
        """Record (user, item) interactions and fold them into the embeddings at once.

        Unknown users and items are created. Users that got at least one new item get a
        recomputed embedding; repeated pairs change nothing.
        """
        created_users: list[str] = []
        created_items: list[int] = []
        touched: dict[int, set[int]] = {}
        for user, item in pairs:
            u = self._user_index.get(user)
            if u is None:
                u = self._new_user(user)
                created_users.append(user)
            i = self._item_index.get(item)
            if i is None:
                i = self._new_item(item)
                created_items.append(i)
            touched.setdefault(u, set()).add(i)
        updated = [u for u, items in touched.items() if self._link(u, sorted(items))]
        self._embed_items(created_items)
        for u in updated:
            if (agg := self._neighbourhood(u)) is not None:
                if self._user_known.view[u]:
                    prev = self._user_emb.view[u]
                    agg = agg * float(np.linalg.norm(prev)) / max(float(np.linalg.norm(agg)), 1e-12)
                    agg = (1.0 - self.fold_in_mix) * prev + self.fold_in_mix * agg
                else:
                    agg = agg * self._user_norm / max(float(np.linalg.norm(agg)), 1e-12)
                self._set_user(u, agg)
        self._embed_items([i for i in created_items if not self._item_ok.view[i]])
        return FoldIn(
            users_updated=[str(self._users[u]) for u in updated],
            users_created=created_users,
            items_created=[self._items[i] for i in created_items],
            items_without_embedding=[self._items[i] for i in created_items
                                     if not self._item_ok.view[i]],
        )

    def forget_user(self, user: str) -> bool:
        """Remove ``user``, its interactions and friendships; ``False`` when unknown.

        Items that were created online and are left without any interaction lose their
        embedding too (it was derived from their users).
        """
        u = self._user_index.pop(user, None)
        if u is None:
            return False
        for i in self._seen[u].tolist():
            self._item_users[i].discard(u)
            self._popularity.view[i] -= 1
            if i in self._online_items and not self._item_users[i]:
                self._item_ok.view[i] = False
                self._item_emb.view[i] = 0.0
                self._item_unit.view[i] = 0.0
        for f in self._friends[u]:
            self._friends[f].discard(u)
        self._friends[u] = set()
        self._seen[u] = np.zeros(0, dtype=np.int64)
        self._users[u] = None
        self._user_known.view[u] = False
        self._user_emb.view[u] = 0.0
        return True

    # -- helpers ------------------------------------------------------------------
    def _new_user(self, user: str) -> int:
        u = self._user_emb.append(0.0)
        self._user_known.append(False)
        self._users.append(user)
        self._user_index[user] = u
        self._seen.append(np.zeros(0, dtype=np.int64))
        self._friends.append(set())
        return u

    def _new_item(self, item: str) -> int:
        i = self._item_emb.append(0.0)
        self._item_unit.append(0.0)
        self._item_ok.append(False)
        self._popularity.append(0.0)
        self._items.append(item)
        self._item_index[item] = i
        self._item_users.append(set())
        self._item_tags.append(np.zeros(0, dtype=np.int64))
        self._online_items.add(i)
        return i

    def _link(self, u: int, items: Sequence[int]) -> bool:
        """Add user-item edges; True when at least one was new."""
        fresh = np.setdiff1d(np.asarray(items, dtype=np.int64), self._seen[u])
        if not fresh.size:
            return False
        self._seen[u] = np.union1d(self._seen[u], fresh)
        for i in fresh.tolist():
            self._item_users[i].add(u)
            self._popularity.view[i] += 1
        return True

    def _neighbourhood(self, u: int) -> np.ndarray | None:
        """``sum_i e_i / sqrt(deg i)`` over the user's items with embeddings, normalised."""
        items = self._seen[u]
        items = items[self._item_ok.view[items]]
        if not items.size:
            return None
        w = 1.0 / np.sqrt(np.maximum(self._popularity.view[items], 1.0))
        return (w[:, None] * self._item_emb.view[items]).sum(axis=0) / w.sum()

    def _set_user(self, u: int, emb: np.ndarray) -> None:
        self._user_emb.view[u] = emb
        self._user_known.view[u] = True

    def _embed_items(self, items: Sequence[int]) -> None:
        for i in items:
            users = [v for v in self._item_users[i] if self._user_known.view[v]]
            if not users:
                continue
            emb = self._user_emb.view[users].mean(axis=0)
            norm = float(np.linalg.norm(emb))
            if norm == 0:
                continue
            self._item_emb.view[i] = emb * self._item_norm / norm
            self._item_unit.view[i] = emb / norm
            self._item_ok.view[i] = True
            if self._index is not None:
                self._index.add(np.array([i]), self._item_emb.view[i:i + 1])
