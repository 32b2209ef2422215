"""CSR adjacency of the train graph (user -> items, item -> users) for samplers,
evaluation exclusions and negative sampling.

The symmetric-normalised adjacency LightGCN propagates over is
``gnnrec.gnn.models.lightgcn.normalized_adjacency``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from gnnrec.gnn.data import UI


@dataclass(frozen=True)
class CSR:
    """Compressed rows: the neighbours of row ``r`` are ``indices[indptr[r]:indptr[r+1]]``.

    ``indptr`` Long[R+1], ``indices`` Long[nnz] (sorted within each row), ``perm`` Long[nnz]:
    the position of each entry in the edge list it was built from.
    """

    indptr: Tensor
    indices: Tensor
    perm: Tensor

    @property
    def num_rows(self) -> int:
        return self.indptr.numel() - 1

    def degree(self) -> Tensor:
        """Long[R] number of neighbours per row."""
        return self.indptr[1:] - self.indptr[:-1]

    def neighbours(self, row: int) -> Tensor:
        return self.indices[int(self.indptr[row]) : int(self.indptr[row + 1])]

    def gather(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """All entries of ``rows`` (Long[B]) as ``(position in rows Long[M], column Long[M])``."""
        rows = rows.to(self.indptr.device)
        start = self.indptr[rows]
        count = self.indptr[rows + 1] - start
        pos = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), count)
        first = torch.cumsum(count, 0) - count
        offset = torch.arange(pos.numel(), device=rows.device) - first[pos]
        return pos, self.indices[start[pos] + offset]

    def keys(self, num_cols: int) -> Tensor:
        """Sorted Long[nnz] keys ``row * num_cols + col``, for membership by searchsorted."""
        rows = torch.repeat_interleave(torch.arange(self.num_rows), self.degree())
        return rows * num_cols + self.indices


def member(sorted_keys: Tensor, query: Tensor) -> Tensor:
    """Bool, same shape as ``query``: whether each key is in ``sorted_keys`` (searchsorted)."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(query, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, query).clamp_(max=sorted_keys.numel() - 1)
    return sorted_keys[pos] == query


def build_csr(src: Tensor, dst: Tensor, num_src: int) -> CSR:
    """CSR of the edges ``src -> dst`` (Long[E] each) with ``num_src`` rows."""
    order = torch.argsort(src * (int(dst.max()) + 1 if dst.numel() else 1) + dst, stable=True)
    counts = torch.bincount(src, minlength=num_src)
    indptr = torch.zeros(num_src + 1, dtype=torch.long)
    indptr[1:] = torch.cumsum(counts, 0)
    return CSR(indptr=indptr, indices=dst[order].contiguous(), perm=order)


def interaction_csr(data: HeteroData, splits: tuple[int, ...] = (0,)) -> tuple[CSR, CSR]:
    """(user -> item CSR, item -> user CSR) of the interactions whose split is in ``splits``.

    With no split on the graph, every interaction counts as train.
    """
    ei = data[UI].edge_index
    if "split" in data[UI]:
        mask = torch.isin(data[UI].split, torch.tensor(splits))
        ei = ei[:, mask]
    elif 0 not in splits:
        ei = ei[:, :0]
    nu, ni = int(data["user"].num_nodes), int(data["item"].num_nodes)
    return build_csr(ei[0], ei[1], nu), build_csr(ei[1], ei[0], ni)
