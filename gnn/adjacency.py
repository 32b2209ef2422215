"""The one CSR class of the project, and membership tests by sorted keys.

The train view (:mod:`gnnrec.gnn.views`), the neighbour sampler, the negative sampler,
evaluation, the run directory and the serving state all hold their adjacency as
:class:`CSR`. The symmetric-normalised sparse matrix LightGCN propagates over is a torch
sparse tensor built by ``gnnrec.gnn.models.lightgcn.normalized_adjacency``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

ArrayLike = np.ndarray | Tensor | Sequence[int] | Sequence[float]


def _numpy(a: ArrayLike | None) -> np.ndarray | None:
    if a is None or isinstance(a, np.ndarray):
        return a
    if isinstance(a, Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


@dataclass(frozen=True)
class CSR:
    """Compressed sparse rows: row ``r`` holds the entries ``indptr[r]:indptr[r + 1]``.

    ``indptr`` Int64[R + 1]; ``table`` Int[nnz, 2] (or Int[nnz, 1]), one row per entry:
    its column (``indices``) and, unless built with ``keep_eid=False``, its edge id
    (``eid``: the entry's position in the edge list the CSR was built from, or the id
    given), so that one random read fetches both; Int32 unless ids reach 2**31 (4 or 8
    bytes per entry). ``weight`` Float32[nnz] (entry order) or None: the edges' weights,
    apart from the table since sampling rarely reads them (a 16-byte table row with the
    weight's bits and a pad cost twice the memory for every sampled edge type). Plain
    numpy arrays, so a CSR goes through Ray's object store and into torch without a copy,
    and its arrays may be memory-mapped.

    Within a row, entries keep the order of the edge list (``sort=True``: ascending
    column); :meth:`keys` is sorted either way.
    """

    indptr: np.ndarray
    table: np.ndarray
    weight: np.ndarray | None = None

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_edges(cls, rows: ArrayLike, cols: ArrayLike, num_rows: int, *,
                   eid: ArrayLike | None = None, weight: ArrayLike | None = None,
                   num_cols: int = 0, sort: bool = False, keep_eid: bool = True) -> CSR:
        """CSR of the edges ``rows[j] -> cols[j]`` (Int[E] each) with ``num_rows`` rows.

        ``eid`` Int[E] (default ``0..E-1``; not stored with ``keep_eid=False``) and
        ``weight`` Float[E] travel with each entry; ``num_cols`` (or the largest column /
        id) decides between Int32 and Int64 storage.
        """
        r = np.asarray(_numpy(rows)).reshape(-1)
        c = np.asarray(_numpy(cols)).reshape(-1)
        if r.size and (int(r.min()) < 0 or int(r.max()) >= num_rows):
            raise ValueError(f"row index range [{int(r.min())}, {int(r.max())}] outside "
                             f"[0, {num_rows})")
        order = np.lexsort((c, r)) if sort else np.argsort(r, kind="stable")
        indptr = np.zeros(num_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(r, minlength=num_rows), out=indptr[1:])
        top = max(num_cols, int(c.max()) + 1 if c.size else 0, r.size)
        e = None
        if keep_eid and eid is not None:
            e = np.asarray(_numpy(eid)).reshape(-1)
            top = max(top, int(e.max()) + 1 if e.size else 0)
        itype = np.int32 if top < 2**31 else np.int64
        table = np.empty((r.size, 2 if keep_eid else 1), dtype=itype)
        table[:, 0] = c[order]
        if keep_eid:
            table[:, 1] = order if e is None else e[order]
        w = None
        if weight is not None:
            w = np.asarray(_numpy(weight)).reshape(-1)[order].astype(np.float32, copy=False)
        return cls(indptr, table, w)

    @classmethod
    def empty(cls, num_rows: int) -> CSR:
        return cls(np.zeros(num_rows + 1, dtype=np.int64), np.zeros((0, 2), dtype=np.int32))

    # -- views ----------------------------------------------------------------------------
    @property
    def indices(self) -> np.ndarray:  # Int[nnz] columns (a strided view)
        return self.table[:, 0]

    @property
    def has_eid(self) -> bool:
        return self.table.shape[1] >= 2

    @property
    def eid(self) -> np.ndarray:
        """Int[nnz] edge ids (a strided view); an error for a CSR built without them."""
        if not self.has_eid:
            raise ValueError("this CSR keeps no edge ids (built with keep_eid=False)")
        return self.table[:, 1]

    @property
    def has_weight(self) -> bool:
        return self.weight is not None

    @property
    def num_rows(self) -> int:
        return self.indptr.size - 1

    @property
    def nnz(self) -> int:
        return int(self.table.shape[0])

    def degree(self) -> np.ndarray:
        """Int64[R] entries per row."""
        return np.diff(self.indptr)

    def row(self, r: int) -> np.ndarray:
        """Int64 columns of row ``r``."""
        return self.indices[self.indptr[r]:self.indptr[r + 1]].astype(np.int64)

    def rows(self) -> np.ndarray:
        """Int64[nnz] the row of each entry."""
        return np.repeat(np.arange(self.num_rows, dtype=np.int64), self.degree())

    def row_of(self, pos: np.ndarray) -> np.ndarray:
        """Int64[M] the row of entries ``pos`` (without the ``nnz``-long :meth:`rows`)."""
        return np.searchsorted(self.indptr, pos, side="right") - 1

    def take(self, pos: np.ndarray, weights: bool = True
             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(column Int64[M], edge id Int64[M] or None, weight Float32[M] or None) of
        entries ``pos``; the weights only when asked and the CSR has them."""
        w = None if self.weight is None or not weights else np.take(self.weight, pos)
        if not self.has_eid:
            return np.take(self.indices, pos).astype(np.int64), None, w
        rows = np.take(self.table, pos, axis=0)  # one read of an 8-byte row for both
        return rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64), w

    def gather(self, rows: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """All entries of ``rows`` (Int[B]) as ``(position in rows Int64[M], column Int64[M])``."""
        rows = np.asarray(_numpy(rows), dtype=np.int64).reshape(-1)
        start = self.indptr[rows]
        count = self.indptr[rows + 1] - start
        pos = np.repeat(np.arange(rows.size, dtype=np.int64), count)
        first = np.cumsum(count) - count
        entry = start[pos] + np.arange(pos.size, dtype=np.int64) - first[pos]
        return pos, self.indices[entry].astype(np.int64)

    def keys(self, num_cols: int) -> np.ndarray:
        """Sorted Int64[nnz] keys ``row * num_cols + column`` (membership by searchsorted)."""
        return np.sort(self.rows() * num_cols + self.indices)

    def select(self, keep: np.ndarray) -> CSR:
        """The CSR of the entries where ``keep`` (Bool[nnz]) holds, in the same order."""
        indptr = np.zeros_like(self.indptr)
        np.cumsum(np.bincount(self.rows()[keep], minlength=self.num_rows), out=indptr[1:])
        return CSR(indptr, np.ascontiguousarray(self.table[keep]),
                   None if self.weight is None else self.weight[keep])

    def to_torch(self) -> tuple[Tensor, Tensor]:
        """``(indptr Long[R + 1], indices Long[nnz])`` as torch tensors."""
        return torch.from_numpy(self.indptr), torch.from_numpy(self.indices.astype(np.int64))


def row_member(indptr: Tensor, columns: Tensor, rows: Tensor, query: Tensor,
               longest: int | None = None) -> Tensor:
    """Bool, same shape as ``query``: whether column ``query[j]`` is in row ``rows[j]`` of
    the CSR (``indptr`` Long[R + 1], ``columns`` Int[nnz] ascending within each row;
    ``longest``: its longest row, when known).

    A vectorised binary search within each row: what :func:`member` answers on ``row *
    num_cols + column`` keys, without an Int64 key per entry.
    """
    lo, end = indptr[rows], indptr[rows + 1]
    hi = end.clone()
    if columns.numel() == 0:
        return torch.zeros_like(query, dtype=torch.bool)
    if longest is None:
        longest = int((indptr[1:] - indptr[:-1]).max()) if indptr.numel() > 1 else 0
    last = columns.numel() - 1
    for _ in range(longest.bit_length()):  # the lower bound of query in [lo, end)
        open_ = lo < hi
        mid = (lo + hi) >> 1
        below = columns[mid.clamp(max=last)] < query
        lo = torch.where(open_ & below, mid + 1, lo)
        hi = torch.where(open_ & ~below, mid, hi)
    return (lo < end) & (columns[lo.clamp(max=last)] == query)


def member(sorted_keys: Tensor, query: Tensor) -> Tensor:
    """Bool, same shape as ``query``: whether each key is in ``sorted_keys`` (searchsorted)."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(query, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, query).clamp_(max=sorted_keys.numel() - 1)
    return sorted_keys[pos] == query
