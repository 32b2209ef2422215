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
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class AnnOptions(BaseModel):
    """When the approximate index serves ``recommend``, and how it is built.

    Attributes:
        threshold: catalogues of at least this many items use the index; below it every
            item is scored (``0`` turns the index off).
        lists: inverted lists (default ``4 * sqrt(items)``, at most ``items / 40`` so
            that k-means has 40 training points per list, at least 1).
        nprobe: lists scanned per query (recall rises, speed falls).
        train_per_list: k-means training sample per list (capped at the catalogue).
        exact_below: a tag filter carried by at most this many items is scored exactly
            over those items instead of through the index.
        max_fetch_share: when the filters leave too few candidates, the request asks for
            four times more, up to this share of the catalogue, then scores exactly.
        seed: k-means seed (the index is a pure function of the embeddings and options).
    """

    model_config = ConfigDict(frozen=True)

    threshold: int = Field(100_000, ge=0)
    lists: int | None = Field(None, ge=1)
    nprobe: int = Field(32, ge=1)
    train_per_list: int = Field(40, ge=40)
    exact_below: int = Field(20_000, ge=0)
    max_fetch_share: float = Field(0.05, gt=0.0, le=1.0)
    seed: int = 0

    def applies_to(self, num_items: int) -> bool:
        return self.threshold > 0 and num_items >= self.threshold

    def num_lists(self, num_items: int) -> int:
        if self.lists:
            return self.lists
        return max(1, min(round(4 * math.sqrt(num_items)), num_items // self.train_per_list))


class ItemIndex:
    """Candidates by inner product over item rows; rows are added as items get embeddings."""

    def __init__(self, index: object, options: AnnOptions) -> None:
        self._index = index
        self.options = options

    @classmethod
    def build(cls, vectors: np.ndarray, options: AnnOptions | None = None,
              rows: np.ndarray | None = None) -> ItemIndex:
        """Index ``vectors`` (Float [N, d]) under ``rows`` (default ``0..N-1``)."""
        import faiss

        options = options or AnnOptions()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = x.shape
        lists = min(options.num_lists(n), max(n, 1))  # k-means needs a point per list
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = options.seed
        index.cp.niter = 10
        sample = min(n, lists * options.train_per_list)
        pick = np.random.default_rng(options.seed).choice(n, sample, replace=False)
        index.train(x[np.sort(pick)])
        ids = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        index.add_with_ids(x, ids)
        faiss.omp_set_num_threads(1)  # one query at a time: threads only add overhead
        return cls(index, options)

    def __len__(self) -> int:
        return int(self._index.ntotal)  # type: ignore[attr-defined]

    @property
    def num_lists(self) -> int:
        return int(self._index.nlist)  # type: ignore[attr-defined]

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Index more items (``rows`` not indexed yet)."""
        self._index.add_with_ids(  # type: ignore[attr-defined]
            np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(rows), -1),
            np.asarray(rows, dtype=np.int64))

    def search(self, query: np.ndarray, n: int) -> np.ndarray:
        """Up to ``n`` item rows of highest approximate inner product with ``query``.

        Fewer than ``n`` only when the index holds fewer items: more lists are scanned
        when the first ones do not hold ``n`` items.
        """
        import faiss

        n = max(1, min(int(n), len(self)))
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        per_list = len(self) / self.num_lists
        nprobe = min(self.num_lists, max(self.options.nprobe, math.ceil(2 * n / per_list)))
        while True:
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            _, found = self._index.search(q, n, params=params)  # type: ignore[attr-defined]
            rows = found[0][found[0] >= 0]
            if len(rows) >= n or nprobe >= self.num_lists:
                return rows
            nprobe = min(self.num_lists, 2 * nprobe)
