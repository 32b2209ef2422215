"""Approximate top-k over item embeddings, for catalogues too large to score exactly.

Below ``AnnOptions.threshold`` items (100,000 by default) the serving state scores every
item for every request (18k items: well under a millisecond). From there on it asks an
:class:`ItemIndex` for candidates and scores only those, exactly, after the usual filters
(see ``ServingState._rank_indexed``).

The index is faiss's inverted-file index with exact vectors (``IndexIVFFlat``, inner
product): the items are split into about ``4 * sqrt(N)`` lists by k-means, and a query
scans the ``nprobe`` lists whose centroids score highest. Chosen by measurement against
faiss HNSW, hnswlib and usearch (``experiments/ann_choice.py``; figures and the reasoning
in ``experiments/README.md``): on clustered vectors like trained embeddings it reached a
higher recall at a lower CPU cost per query than the HNSW indexes, and built about four
times faster (k-means on a sample, then one assignment per item); it is deterministic
(same embeddings and options, same index: every replica answers alike) and adds items
one by one without a rebuild (items that get an embedding from feedback). faiss is
Meta's maintained library with wheels for Linux, macOS and Windows.

How many lists a query scans is not a constant: how many are needed depends on the
embeddings (trained ones are clustered, an untrained model's are not). Unless ``nprobe``
is fixed, :meth:`ItemIndex.build` calibrates it on a seeded sample of queries (the
serving state passes ``calibration_users`` users' embeddings and seen items): the
smallest ``nprobe`` whose recall@``calibration_k`` against exact scoring, with the
candidates the serving path asks for and the users' seen items removed, reaches
``target_recall`` on that sample with a margin: the one-sided 95 % lower confidence bound
of the sample's mean recall (mean - 1.645 standard errors) must reach the target, so that
other users' mean recall reaches it too (a sample mean just at the target would leave
other users below it half of the time). The sample's rows are recorded
(``ItemIndex.calibration``) so that a measurement of recall can leave them out.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_NPROBE = 32  # without calibration queries and without a fixed nprobe
EXTRA_CANDIDATES = 32  # candidates asked beyond k and the user's blocked items
Z_95 = 1.645  # one-sided 95 % normal quantile: the calibration's margin for other users


class AnnOptions(BaseModel):
    """When the approximate index serves ``recommend``, and how it is built.

    Attributes:
        threshold: catalogues of at least this many items use the index; below it every
            item is scored (``0`` turns the index off).
        lists: inverted lists (default ``4 * sqrt(items)``, at most ``items / 40`` so
            that k-means has 40 training points per list, at least 1).
        nprobe: lists scanned per query, fixed; ``None`` (default): calibrated at build
            to ``target_recall`` (32 when no calibration queries are given).
        target_recall: the recall@``calibration_k`` against exact scoring the calibrated
            ``nprobe`` reaches on the calibration sample (its 95 % lower bound).
        calibration_users: users whose embeddings calibrate ``nprobe`` (a seeded sample).
        calibration_k: the ``k`` of that recall.
        train_per_list: k-means training sample per list (capped at the catalogue).
        exact_below: a tag filter carried by at most this many items is scored exactly
            over those items instead of through the index.
        max_fetch_share: when the filters leave too few candidates, the request asks for
            four times more, up to this share of the catalogue, then scores exactly.
        head_share: this share of the items, those of largest norm, is scored exactly
            for every query and kept out of the inverted lists (``0``: none). The items
            an inner product ranks first are mostly of large norm (popular items in a
            trained model), which lists grouped by direction spread thinly.
        head_max: at most this many items in that exact head (1 % of 1M items is 10,000;
            of 100M it would be a million scored exactly per request).
        seed: k-means and calibration-sample seed (the index is a pure function of the
            embeddings and options).
    """

    model_config = ConfigDict(frozen=True)

    threshold: int = Field(100_000, ge=0)
    lists: int | None = Field(None, ge=1)
    nprobe: int | None = Field(None, ge=1)
    target_recall: float = Field(0.95, gt=0.0, le=1.0)
    calibration_users: int = Field(200, ge=1)
    calibration_k: int = Field(20, ge=1)
    train_per_list: int = Field(40, ge=40)
    exact_below: int = Field(20_000, ge=0)
    max_fetch_share: float = Field(0.05, gt=0.0, le=1.0)
    head_share: float = Field(0.01, ge=0.0, lt=1.0)
    head_max: int = Field(20_000, ge=0)
    seed: int = 0

    def applies_to(self, num_items: int) -> bool:
        return self.threshold > 0 and num_items >= self.threshold

    def num_lists(self, num_items: int) -> int:
        if self.lists:
            return self.lists
        return max(1, min(round(4 * math.sqrt(num_items)), num_items // self.train_per_list))


def candidates_for(k: int, blocked: int) -> int:
    """How many candidates a request for ``k`` items asks the index for, first."""
    return k + blocked + EXTRA_CANDIDATES


class ItemIndex:
    """Candidates by inner product over item rows; rows are added as items get embeddings.

    Attributes:
        nprobe: lists scanned per query (fixed or calibrated).
        calibration: how ``nprobe`` was chosen: ``rows`` (the calibration queries' rows,
            as given), ``k``, ``target``, ``recall`` (reached), ``steps`` (each
            ``[nprobe, recall, lower bound]`` tried), ``seconds``; ``None`` when not
            calibrated.
        build_seconds: wall time of k-means, adding the items and calibrating.
    """

    def __init__(self, index: Any, options: AnnOptions, nprobe: int, head: Any = None,
                 head_min_norm: float = math.inf) -> None:
        self._index = index
        self._head = head  # exact inner products over the items of largest norm
        self._head_min_norm = head_min_norm  # an added item of this norm or more joins it
        self.options = options
        self.nprobe = nprobe
        self.calibration: dict[str, Any] | None = None
        self.build_seconds = 0.0

    @classmethod
    def build(cls, vectors: np.ndarray, options: AnnOptions | None = None,
              rows: np.ndarray | None = None, *, queries: np.ndarray | None = None,
              query_rows: np.ndarray | None = None,
              query_seen: list[np.ndarray] | None = None) -> ItemIndex:
        """Index ``vectors`` (Float [N, d]) under ``rows`` (default ``0..N-1``).

        ``queries`` (Float [Q, d], with the item rows each must not get, ``query_seen``,
        and their own ids ``query_rows``, recorded) calibrate ``nprobe`` unless
        ``options.nprobe`` is set.
        """
        import faiss

        t0 = time.perf_counter()
        options = options or AnnOptions()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = x.shape
        ids = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        norms = np.linalg.norm(x, axis=1)
        n_head = min(int(round(options.head_share * n)), options.head_max, n - 1)
        head, head_min_norm, tail = None, math.inf, np.arange(n)
        if n_head > 0:
            top = np.argpartition(-norms, n_head - 1)[:n_head]
            head = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
            head.add_with_ids(x[top], ids[top])
            head_min_norm = float(norms[top].min())
            tail = np.setdiff1d(tail, top)
        lists = min(options.num_lists(n), max(len(tail), 1))  # k-means: a point per list
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = options.seed
        index.cp.niter = 10
        sample = min(len(tail), lists * options.train_per_list)
        pick = np.random.default_rng(options.seed).choice(len(tail), sample, replace=False)
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # building: every core
        index.train(x[tail[np.sort(pick)]])
        index.add_with_ids(x[tail], ids[tail])
        built = cls(index, options, options.nprobe or DEFAULT_NPROBE, head, head_min_norm)
        if options.nprobe is None and queries is not None and len(queries):
            built._calibrate(x, ids, np.asarray(queries, np.float32), query_rows,
                             query_seen or [np.zeros(0, np.int64)] * len(queries))
        faiss.omp_set_num_threads(1)  # one query at a time: threads only add overhead
        built.build_seconds = time.perf_counter() - t0
        return built

    def __len__(self) -> int:
        return int(self._index.ntotal) + self.head_items

    @property
    def head_items(self) -> int:
        """Items scored exactly for every query (those of largest norm)."""
        return 0 if self._head is None else int(self._head.ntotal)

    @property
    def num_lists(self) -> int:
        return int(self._index.nlist)

    def info(self) -> dict[str, Any]:
        """What ``/health`` shows of the index."""
        cal = self.calibration
        return {"lists": self.num_lists, "nprobe": self.nprobe, "items": len(self),
                "head_items": self.head_items,
                "build_seconds": round(self.build_seconds, 3),
                "calibrated_recall": None if cal is None else round(cal["recall"], 4),
                "calibration_k": None if cal is None else cal["k"],
                "target_recall": None if cal is None else cal["target"]}

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Index more items (``rows`` not indexed yet); one of at least the head's smallest
        norm joins the head."""
        x = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(rows), -1)
        rows = np.asarray(rows, dtype=np.int64)
        big = np.linalg.norm(x, axis=1) >= self._head_min_norm
        if big.any():
            self._head.add_with_ids(x[big], rows[big])
        if (~big).any():
            self._index.add_with_ids(x[~big], rows[~big])

    def search(self, query: np.ndarray, n: int) -> np.ndarray:
        """Up to ``n`` item rows of highest approximate inner product with ``query``.

        Fewer than ``n`` only when the index holds fewer items: more lists are scanned
        when the first ones do not hold ``n`` items.
        """
        n = max(1, min(int(n), len(self)))
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        nprobe = self._probes(n)
        while True:
            found = self._search(q, n, nprobe)
            rows = found[0][found[0] >= 0]
            if len(rows) >= n or nprobe >= self.num_lists:
                return rows
            nprobe = min(self.num_lists, 2 * nprobe)

    def _probes(self, n: int, nprobe: int | None = None) -> int:
        """The lists scanned for ``n`` candidates: ``nprobe``, or enough lists to hold
        about ``2 n`` items."""
        per_list = max(int(self._index.ntotal), 1) / self.num_lists
        base = self.nprobe if nprobe is None else nprobe
        return min(self.num_lists, max(base, math.ceil(2 * n / per_list)))

    def recall(self, vectors: np.ndarray, queries: np.ndarray, seen: list[np.ndarray],
               k: int) -> np.ndarray:
        """Float[Q]: recall@``k`` against exact scoring of ``vectors`` (the indexed items,
        rows ``0..N-1``) for each of ``queries`` with its ``seen`` rows removed, at this
        ``nprobe`` and with the candidates the serving path asks for first."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        return self._recall(q, seen, _exact_top(x, q, seen, k, None), k, self.nprobe)

    def _search(self, queries: np.ndarray, n: int, nprobe: int) -> np.ndarray:
        """Long[Q, n]: the best ``n`` rows per query of the head and ``nprobe`` lists
        (best first; -1 where fewer)."""
        import faiss

        score, found = self._index.search(queries, n,
                                          params=faiss.SearchParametersIVF(nprobe=nprobe))
        if self._head is None:
            return found
        h_score, h_found = self._head.search(queries, min(n, self.head_items))
        score = np.concatenate([score, h_score], axis=1)
        found = np.concatenate([found, h_found], axis=1)
        score[found < 0] = -np.inf
        order = np.argsort(-score, axis=1, kind="stable")[:, :n]
        return np.take_along_axis(found, order, axis=1)

    # -- calibration --------------------------------------------------------------
    def _calibrate(self, x: np.ndarray, ids: np.ndarray, queries: np.ndarray,
                   query_rows: np.ndarray | None, seen: list[np.ndarray]) -> None:
        """Set ``nprobe`` to the smallest value whose recall@k on ``queries`` reaches
        ``options.target_recall`` (its 95 % lower bound): doubling from 1, then bisection
        down to an eighth of the value."""
        t0 = time.perf_counter()
        k, target = self.options.calibration_k, self.options.target_recall
        row_of = None if np.array_equal(ids, np.arange(len(ids))) else ids
        truth = _exact_top(x, queries, seen, k, row_of)
        steps: list[list[float]] = []

        def recall(nprobe: int) -> float:  # the lower bound is what must reach the target
            per_query = self._recall(queries, seen, truth, k, nprobe)
            mean = float(per_query.mean())
            bound = mean - Z_95 * float(per_query.std()) / math.sqrt(len(per_query))
            steps.append([nprobe, mean, bound])
            return bound

        lo, hi = 0, 1
        while hi < self.num_lists and recall(hi) < target:
            lo, hi = hi, min(self.num_lists, 2 * hi)
        if hi >= self.num_lists and not any(s[0] == hi for s in steps):
            recall(hi)
        while hi - lo > max(1, lo // 8):
            mid = (lo + hi) // 2
            if recall(mid) >= target:
                hi = mid
            else:
                lo = mid
        self.nprobe = hi
        reached = next(step for step in reversed(steps) if step[0] == hi)
        self.calibration = {
            "rows": None if query_rows is None else np.asarray(query_rows).tolist(),
            "queries": len(queries), "k": k, "target": target, "recall": reached[1],
            "recall_lower_bound": reached[2],
            "steps": steps, "seconds": time.perf_counter() - t0}

    def _recall(self, queries: np.ndarray, seen: list[np.ndarray], truth: list[np.ndarray],
                k: int, nprobe: int) -> np.ndarray:
        """Float[Q]: each query's recall@k of the serving path's first candidate fetch at
        ``nprobe``."""
        wants = [min(candidates_for(k, len(s)), len(self)) for s in seen]
        n = max(wants)  # one batch search; each query keeps its own first `want`
        found = self._search(queries, n, self._probes(min(wants), nprobe))
        out = []
        for row, want, blocked, best in zip(found, wants, seen, truth, strict=True):
            cand = row[:want]
            cand = cand[(cand >= 0) & ~np.isin(cand, blocked)]
            out.append(len(np.intersect1d(cand[:k], best)) / max(len(best), 1))
        return np.asarray(out)


def _exact_top(x: np.ndarray, queries: np.ndarray, seen: list[np.ndarray], k: int,
               row_of: np.ndarray | None, batch: int = 16) -> list[np.ndarray]:
    """The exact top-``k`` item rows of each query by inner product, ``seen`` removed."""
    out: list[np.ndarray] = []
    for start in range(0, len(queries), batch):
        scores = queries[start:start + batch] @ x.T
        for j, s in enumerate(scores):
            blocked = seen[start + j]
            if row_of is not None:
                blocked = np.flatnonzero(np.isin(row_of, blocked))
            s[blocked] = -np.inf
            m = min(k, len(s))
            top = np.argpartition(-s, m - 1)[:m]
            top = top[np.isfinite(s[top])]
            out.append(top if row_of is None else row_of[top])
    return out
