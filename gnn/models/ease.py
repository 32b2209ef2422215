"""EASE: embarrassingly shallow autoencoder (Steck, WWW 2019), solved in closed form.

An item-item weight matrix ``B`` [n, n] with a zero diagonal minimises
``|X - X B|^2 + reg |B|^2`` over the binary train matrix ``X`` [U, n]; the solution is
``P = (X^T X + reg I)^-1``, ``B_ij = -P_ij / P_jj`` (``B_jj = 0``). A user's scores are
``x_u B``: the sum of the rows of ``B`` of the items the user has.

Only items with a train interaction can have a weight (the others have an empty row and
column in ``X^T X``); ``max_items`` keeps the ``max_items`` most popular train items only
(ties: lower index first), which bounds the memory: the solve holds one n x n matrix in
the working precision plus ``B`` in float32. Items outside the model are never
recommended (their score is ``-inf``). Before any allocation the memory the solve needs is
checked against what is available, and a clear error names it and the cap that would fit.

Fold-in (serving, no retraining) is exact: a user's scores are ``x_u B``, so a new
interaction sets one more entry of ``x_u`` (:meth:`EASE.fold_in_user`), and a new user with
items is scored from those items at once (cold start).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from gnnrec.errors import GnnrecError

from .base import Propagation, Recommender, to_csr, train_edge_index, unique_edges

PRECISIONS = ("float64", "float32")


class EASEMemoryError(GnnrecError, MemoryError):
    """The n x n solve of EASE would not fit in memory."""


def available_memory() -> int:
    """Bytes of memory available to a new allocation (``MemAvailable``; else physical)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def solve_bytes(n: int, precision: str) -> int:
    """Peak bytes of :func:`ease_weights` on ``n`` items: the n x n matrix in the working
    precision plus ``B`` in float32."""
    return n * n * (np.dtype(precision).itemsize + 4)


def ease_weights(gram: np.ndarray, regularization: float) -> np.ndarray:
    """Float32 [n, n] ``B`` from the Gram matrix ``X^T X`` (overwritten: it is the workspace).

    ``(G + reg I)^-1`` by an in-place Cholesky factorisation and inverse (LAPACK
    ``potrf`` / ``potri``), so only one n x n matrix of the working precision is held.
    """
    from scipy.linalg import lapack

    n = gram.shape[0]
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    work = np.asfortranarray(gram)  # symmetric: the transposed view is the same matrix
    work[np.diag_indices(n)] += regularization
    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (work,))
    chol, info = potrf(work, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise GnnrecError(f"EASE: X^T X + {regularization} I is not positive definite "
                          f"(LAPACK potrf info {info}); raise the regularization")
    inv, info = potri(chol, lower=False, overwrite_c=True)
    if info != 0:
        raise GnnrecError(f"EASE: the inverse failed (LAPACK potri info {info})")
    step = 1024  # mirror the upper triangle to the lower one, a block of rows at a time
    for r0 in range(0, n, step):
        r1 = min(r0 + step, n)
        inv[r0:r1, :r0] = inv[:r0, r0:r1].T
        block = inv[r0:r1, r0:r1]
        inv[r0:r1, r0:r1] = np.triu(block) + np.triu(block, 1).T
    diag = np.diag(inv).copy()
    out = np.empty((n, n), dtype=np.float32)
    for r0 in range(0, n, step):
        r1 = min(r0 + step, n)
        out[r0:r1] = inv[r0:r1] / -diag[None, :]
    out[np.diag_indices(n)] = 0.0
    return out


class EASE(Recommender):
    """EASE item-item model; scores ``x_u B`` over the items it keeps.

    Args:
        graph: the HeteroData; only TRAIN interactions are used (binary: a pair is 1).
        regularization: ``reg`` (the paper's lambda), the L2 weight on ``B``.
        max_items: keep only the ``max_items`` most popular train items (None: all items
            with a train interaction).
        precision: ``"float64"`` (default) or ``"float32"`` for the solve (half the
            memory, about twice as fast; ``B`` is stored in float32 either way).
        max_memory_gb: the memory the solve may use (default: what is available now).

    ``state_dict``: ``items`` Long[n] (the kept item indices) and ``weights`` Float[n, n].
    Shapes: ``score(users [B])`` -> [B, I]; ``embeddings()`` -> ([U, n] the users' rows of
    ``X``, [I, n] the items' columns of ``B``), so ``user @ item.T`` gives the scores.
    """

    name = "ease"
    trainable = False  # solved in closed form: see solve_step
    solver = True
    max_steps = 1

    def __init__(self, graph: HeteroData, regularization: float = 250.0,
                 max_items: int | None = None, precision: str = "float64",
                 max_memory_gb: float | None = None) -> None:
        super().__init__(graph)
        if not regularization > 0:
            raise ValueError(f"regularization must be > 0, got {regularization}")
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        self._hparams = {"regularization": float(regularization),
                         "max_items": None if max_items is None else int(max_items),
                         "precision": precision,
                         "max_memory_gb": None if max_memory_gb is None else float(max_memory_gb)}
        self.regularization, self.precision = float(regularization), precision
        ei = unique_edges(train_edge_index(graph), self.num_items)
        degree = torch.bincount(ei[1], minlength=self.num_items)
        order = torch.argsort(-degree, stable=True)
        kept = order[: int((degree > 0).sum())]
        if max_items is not None:
            kept = kept[:max_items]
        kept = kept.sort().values
        n = kept.numel()
        need = solve_bytes(n, precision)
        budget = (available_memory() if max_memory_gb is None else int(max_memory_gb * 2**30))
        if need > budget:
            fits = int((budget / (np.dtype(precision).itemsize + 4)) ** 0.5)
            raise EASEMemoryError(
                f"EASE on {n:,} items needs about {need / 2**30:.1f} GiB ({n:,}² {precision} "
                f"values for the solve plus {n:,}² float32 for B) but "
                f"{budget / 2**30:.1f} GiB are available: keep the most popular items only "
                f"with --model-arg max_items={fits} (or less), or precision=float32")
        self.register_buffer("items", kept)
        self.register_buffer("weights", torch.zeros(n, n))
        # column of each graph item in the model (-1: not kept)
        column = torch.full((self.num_items,), -1, dtype=torch.long)
        column[kept] = torch.arange(n)
        self.register_buffer("column", column, persistent=False)
        keep = column[ei[1]] >= 0
        rows, cols = ei[0][keep], column[ei[1][keep]]
        x = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(rows.numel()),
                                    (self.num_users, n), check_invariants=False).coalesce()
        self.register_buffer("user_items", to_csr(x), persistent=False)

    # -- training -------------------------------------------------------------------
    def solve_step(self) -> dict[str, Any]:
        """The closed form (once; later calls change nothing)."""
        x = self.user_items.to("cpu")
        crow, col = x.crow_indices().numpy(), x.col_indices().numpy()
        from scipy.sparse import csr_matrix

        n = self.items.numel()
        mat = csr_matrix((np.ones(col.size, dtype=self.precision), col, crow),
                         shape=(self.num_users, n))
        gram = (mat.T @ mat).toarray()
        b = ease_weights(gram, self.regularization)
        del gram
        with torch.no_grad():
            self.weights.copy_(torch.from_numpy(b))
        return {}

    # -- scoring and fold-in ------------------------------------------------------------
    def score(self, users: Tensor) -> Tensor:
        """Float [B, I]: ``x_u B`` for kept items, ``-inf`` for the others."""
        rows = self.user_rows(users)
        out = torch.full((users.numel(), self.num_items), float("-inf"),
                         dtype=self.weights.dtype, device=self.weights.device)
        out[:, self.items] = rows @ self.weights
        return out

    def user_rows(self, users: Tensor) -> Tensor:
        """Float [B, n]: the users' binary train rows over the kept items."""
        x = self.user_items
        crow, col = x.crow_indices(), x.col_indices()
        users = users.to(crow.device).long()
        start, count = crow[users], crow[users + 1] - crow[users]
        pos = torch.repeat_interleave(torch.arange(users.numel(), device=crow.device), count)
        first = torch.cumsum(count, 0) - count
        entry = start[pos] + torch.arange(pos.numel(), device=crow.device) - first[pos]
        rows = torch.zeros(users.numel(), self.items.numel(), dtype=self.weights.dtype,
                           device=self.weights.device)
        rows[pos.to(rows.device), col[entry].to(rows.device)] = 1.0
        return rows

    def propagate(self) -> Propagation:
        users = torch.arange(self.num_users, device=self.weights.device)
        user = self.user_rows(users)
        item = torch.zeros(self.num_items, self.items.numel(), dtype=self.weights.dtype,
                           device=self.weights.device)
        item[self.items] = self.weights.t()
        return Propagation(user, item, user, item)

    @torch.no_grad()
    def fold_in_user(self, items: Tensor, weight: Tensor | None = None) -> Tensor:
        """Float [n]: the row ``x_u`` of a user whose items are ``items`` (Long[k]); items
        outside the model add nothing. ``user_row @ item_embeddings.T`` are its scores."""
        row = torch.zeros(self.items.numel(), dtype=self.weights.dtype)
        cols = self.column.cpu()[items.long().cpu()]
        row[cols[cols >= 0]] = 1.0
        return row

    def bpr_loss(self, users: Tensor, pos: Tensor, neg: Tensor, loss: str = "bpr",
                 temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        raise TypeError("EASE is solved in closed form (solve_step), not by gradient steps")
