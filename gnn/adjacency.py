"""CSR adjacency of the train graph and the normalised sparse adjacency for propagation.

The contract with the models (``gnnrec.gnn.models``)::

    normalized_adjacency(
        num_users: int, num_items: int,
        ui_edge_index: Long[2, E],                 # (user, item) train edges, unique pairs
        social_edge_index: Long[2, S] | None = None,  # user pairs, either or both directions
        social_weight: float = 1.0,
        *, edge_weight: Float[E] | None = None, layout: "csr" | "coo" = "csr",
    ) -> sparse Float[N, N], N = num_users + num_items

Node order: users ``0..U-1`` then items ``U..U+I-1``. ``A`` holds ``A[u, U+i] = A[U+i, u] =
w_ui`` (1 unless ``edge_weight``) and, for friends, ``A[u, v] = A[v, u] = social_weight``
(each unordered pair once, self-links dropped). The result is ``D^-1/2 A D^-1/2`` with
``D`` the row sums of ``A`` (isolated nodes get 0 rows), ready for
``torch.sparse.mm(adj, emb)``; ``.to(device)`` moves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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


def normalized_adjacency(
    num_users: int,
    num_items: int,
    ui_edge_index: Tensor,
    social_edge_index: Tensor | None = None,
    social_weight: float = 1.0,
    *,
    edge_weight: Tensor | None = None,
    layout: Literal["csr", "coo"] = "csr",
) -> Tensor:
    """Symmetric-normalised bipartite (+ optional social) adjacency, sparse Float[N, N].

    See the module docstring for the exact matrix. ``ui_edge_index`` Long[2, E] must hold
    train edges only (the caller filters ``split == 0``).
    """
    n = num_users + num_items
    u, i = ui_edge_index[0].cpu(), ui_edge_index[1].cpu() + num_users
    w = (torch.ones(u.numel()) if edge_weight is None
         else edge_weight.detach().cpu().to(torch.float32))
    rows, cols, vals = [u, i], [i, u], [w, w]
    if social_edge_index is not None and social_edge_index.numel() and social_weight != 0:
        a, b = social_edge_index[0].cpu(), social_edge_index[1].cpu()
        keep = a != b
        lo, hi = torch.minimum(a[keep], b[keep]), torch.maximum(a[keep], b[keep])
        pairs = torch.unique(lo * num_users + hi)
        lo, hi = pairs // num_users, pairs % num_users
        sw = torch.full((lo.numel(),), float(social_weight))
        rows += [lo, hi]
        cols += [hi, lo]
        vals += [sw, sw]
    row, col, val = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    deg = torch.zeros(n).index_add_(0, row, val)
    inv_sqrt = deg.pow(-0.5)
    inv_sqrt[~torch.isfinite(inv_sqrt)] = 0.0
    val = inv_sqrt[row] * val * inv_sqrt[col]
    adj = torch.sparse_coo_tensor(torch.stack([row, col]), val, (n, n)).coalesce()
    return adj.to_sparse_csr() if layout == "csr" else adj
