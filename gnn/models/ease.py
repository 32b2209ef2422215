"""EASE: embarrassingly shallow autoencoder (Steck, WWW 2019), solved in closed form.

An item-item weight matrix ``B`` [n, n] with a zero diagonal minimises
``|X - X B|^2 + reg |B|^2`` over the binary train matrix ``X`` [U, n]; the solution is
``P = (X^T X + reg I)^-1``, ``B_ij = -P_ij / P_jj`` (``B_jj = 0``). A user's scores are
``x_u B``: the sum of the rows of ``B`` of the items the user has.

Only items with a train interaction can have a weight (the others have an empty row and
column in ``X^T X``); ``max_items`` keeps the ``max_items`` most popular train items only
(ties: lower index first), which bounds the memory: the solve holds one n x n matrix in
the working precision plus ``B`` in float32. Items outside the model are never
recommended: their score is ``-inf`` (:meth:`EASE.score`), and in the final embeddings
(what evaluation, serving and write-back read) an extra coordinate, 1 for every user and
:data:`OUTSIDE` for those items, puts them below any real score. Before any allocation the
memory the solve needs is checked against what is available, and a clear error names it
and the cap that would fit.

Fold-in (serving, no retraining) is exact: a user's scores are ``x_u B``, so a new
interaction sets one more entry of ``x_u`` (:meth:`EASE.fold_in_user`), and a new user with
items is scored from those items at once (cold start).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from gnnrec.errors import GnnrecError
from gnnrec.gnn.data import UI

from .base import GraphSizes, Inputs, Propagation, Recommender, unique_edges

if TYPE_CHECKING:
    from gnnrec.gnn.views import TrainView

PRECISIONS = ("float64", "float32")
# The item embedding's extra coordinate for an item outside the model: finite (serving
# normalises embeddings, write-back stores them) and below any real score.
OUTSIDE = -1e30


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


@dataclass
class EASEInputs(Inputs):
    """What :meth:`EASE.forward` reads: the distinct train (user, item) pairs (Long[E])."""

    users: Tensor
    items: Tensor


class EASE(Recommender):
    """EASE item-item model; scores ``x_u B`` over the items it keeps.

    Args:
        sizes: the graph's shape; :meth:`solve` reads the train view's interactions
            (binary: a pair is 1).
        regularization: ``reg`` (the paper's lambda), the L2 weight on ``B``.
        max_items: keep only the ``max_items`` most popular train items (None: all items
            with a train interaction).
        precision: ``"float64"`` (default) or ``"float32"`` for the solve (half the
            memory, about twice as fast; ``B`` is stored in float32 either way).
        max_memory_gb: the memory the solve may use (default: what is available now).

    ``state_dict``: ``items`` Long[n] (the kept item indices) and ``weights`` Float[n, n]
    (empty until solved; a checkpoint's sizes are taken on load).
    Shapes: ``score(users [B], inputs)`` -> [B, I]; ``forward(inputs)`` -> ([U, n + 1] the
    users' rows of ``X`` and a 1, [I, n + 1] the items' columns of ``B`` and 0, or zeros
    and :data:`OUTSIDE` for an item outside the model), so ``user @ item.T`` ranks as the
    scores do.
    """

    name = "ease"
    trainable = False  # solved in closed form: see solve

    def __init__(self, sizes: GraphSizes, regularization: float = 250.0,
                 max_items: int | None = None, precision: str = "float64",
                 max_memory_gb: float | None = None) -> None:
        super().__init__(sizes)
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
        self.max_items, self.max_memory_gb = max_items, max_memory_gb
        self.register_buffer("items", torch.zeros(0, dtype=torch.long))
        self.register_buffer("weights", torch.zeros(0, 0))
        # column of each graph item in the model (-1: not kept)
        self.register_buffer("column", torch.full((self.num_items,), -1, dtype=torch.long),
                             persistent=False)

    def _keep(self, items: Tensor, weights: Tensor) -> None:
        self.items, self.weights = items.to(self.items.device), weights.to(self.weights.device)
        column = torch.full((self.num_items,), -1, dtype=torch.long)
        column[items.cpu()] = torch.arange(items.numel())
        self.column = column.to(self.column.device)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        if prefix + "items" in state_dict and prefix + "weights" in state_dict:
            # take the checkpoint's sizes (n is known only once solved)
            self.items = torch.zeros_like(state_dict[prefix + "items"])
            self.weights = torch.zeros_like(state_dict[prefix + "weights"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._keep(self.items, self.weights)

    # -- training -------------------------------------------------------------------
    def inputs(self, view: TrainView) -> EASEInputs:
        self.check_view(view)
        ei = unique_edges(view.edge_index(UI), self.num_items)
        return EASEInputs(ei[0], ei[1])

    def solve(self, view: TrainView, epoch: int) -> dict[str, float]:
        """The closed form (once: it reports ``converged``)."""
        from scipy.sparse import csr_matrix

        pairs = self.inputs(view)
        degree = torch.bincount(pairs.items, minlength=self.num_items)
        order = torch.argsort(-degree, stable=True)
        kept = order[: int((degree > 0).sum())]
        if self.max_items is not None:
            kept = kept[: self.max_items]
        kept = kept.sort().values
        n = kept.numel()
        need = solve_bytes(n, self.precision)
        budget = (available_memory() if self.max_memory_gb is None
                  else int(self.max_memory_gb * 2**30))
        if need > budget:
            fits = int((budget / (np.dtype(self.precision).itemsize + 4)) ** 0.5)
            raise EASEMemoryError(
                f"EASE on {n:,} items needs about {need / 2**30:.1f} GiB ({n:,}² "
                f"{self.precision} values for the solve plus {n:,}² float32 for B) but "
                f"{budget / 2**30:.1f} GiB are available: keep the most popular items only "
                f"with --model-arg max_items={fits} (or less), or precision=float32")
        column = torch.full((self.num_items,), -1, dtype=torch.long)
        column[kept] = torch.arange(n)
        keep = column[pairs.items] >= 0
        mat = csr_matrix((np.ones(int(keep.sum()), dtype=self.precision),
                          (pairs.users[keep].numpy(), column[pairs.items[keep]].numpy())),
                         shape=(self.num_users, n))
        gram = (mat.T @ mat).toarray()
        b = ease_weights(gram, self.regularization)
        del gram
        with torch.no_grad():
            self._keep(kept, torch.from_numpy(b))
        return {"converged": 1.0}

    # -- scoring and fold-in ------------------------------------------------------------
    def user_rows(self, inputs: EASEInputs, users: Tensor) -> Tensor:
        """Float [B, n + 1]: the users' binary train rows over the kept items, and a 1."""
        dev = self.weights.device
        n = self.items.numel()
        slot = torch.full((self.num_users,), -1, dtype=torch.long, device=dev)
        slot[users.to(dev).long()] = torch.arange(users.numel(), device=dev)
        u, i = inputs.users.to(dev), inputs.items.to(dev)
        col = self.column.to(dev)[i]
        mine = (slot[u] >= 0) & (col >= 0)
        rows = torch.zeros(users.numel(), n + 1, device=dev, dtype=self.weights.dtype)
        rows[slot[u[mine]], col[mine]] = 1.0
        rows[:, n] = 1.0
        return rows

    def forward(self, inputs: EASEInputs) -> Propagation:
        dev = self.weights.device
        n = self.items.numel()
        user = self.user_rows(inputs, torch.arange(self.num_users, device=dev))
        item = torch.zeros(self.num_items, n + 1, device=dev, dtype=self.weights.dtype)
        item[:, n] = OUTSIDE
        item[self.items] = torch.cat([self.weights.t(), self.weights.new_zeros(n, 1)], 1)
        return Propagation(user, item, user, item)

    def score(self, users: Tensor, inputs: EASEInputs) -> Tensor:
        """Float [B, I]: ``x_u B`` for kept items, ``-inf`` for the others."""
        rows = self.user_rows(inputs, users)[:, :-1]
        out = torch.full((users.numel(), self.num_items), float("-inf"),
                         device=self.weights.device, dtype=self.weights.dtype)
        out[:, self.items] = rows @ self.weights
        return out

    @torch.no_grad()
    def fold_in_user(self, items: Tensor, weight: Tensor | None = None) -> Tensor:
        """Float [n + 1]: the row ``x_u`` (and its 1) of a user whose items are ``items``
        (Long[k]); items outside the model add nothing. ``user_row @ item_embeddings.T``
        ranks as its scores."""
        row = torch.zeros(self.items.numel() + 1)
        cols = self.column.cpu()[items.long().cpu()]
        row[cols[cols >= 0]] = 1.0
        row[-1] = 1.0
        return row

    def bpr_loss(self, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        raise TypeError("EASE is solved in closed form (solve), not by gradient steps")
