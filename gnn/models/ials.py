"""iALS: implicit-feedback alternating least squares (Hu, Koren & Volinsky, ICDM 2008),
solved by the ``implicit`` library.

The model minimises ``sum_{u,i} c_ui (p_ui - x_u . y_i)^2 + reg (|X|^2 + |Y|^2)`` over all
user-item pairs, with ``p_ui = 1`` for a train interaction (0 otherwise) and confidence
``c_ui = alpha * v_ui`` for an interaction (1 otherwise). ``v_ui`` is 1 (``confidence =
"binary"``, the default: every interaction is one positive, the evaluation protocol's
implicit feedback) or ``1 + log(1 + weight)`` (``confidence = "log"``: play counts or ratings
raise the confidence). One :meth:`IALS.solve` is one ALS sweep (users given items, then
items given users) on the train view's interactions; the training loop evaluates after each
sweep, so the number of iterations is chosen by early stopping on valid like the epochs of
the graph models.

Fold-in (serving, no retraining): :meth:`IALS.fold_in_user` re-solves one user's factors
from its items against the fixed item factors, the exact least-squares step of a sweep;
a new user with items gets its factors the same way (cold start).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from gnnrec.gnn.data import UI

from .base import GraphSizes, Propagation, Recommender

if TYPE_CHECKING:
    from gnnrec.gnn.views import TrainView

CONFIDENCES = ("binary", "log")


def confidence_values(weight: Tensor | None, n: int, confidence: str) -> np.ndarray:
    """Float32[n] ``v_ui`` of each interaction (before ``alpha``): 1, or ``1 + log1p(w)``."""
    if confidence == "binary" or weight is None:
        return np.ones(n, dtype=np.float32)
    if confidence == "log":
        return (1.0 + np.log1p(np.clip(weight.double().numpy(), 0.0, None))).astype(np.float32)
    raise ValueError(f"confidence must be one of {CONFIDENCES}, not {confidence!r}")


def solve_user(item_factors: np.ndarray, gram: np.ndarray, items: np.ndarray,
               conf: np.ndarray, regularization: float) -> np.ndarray:
    """Float[d]: the exact least-squares factors of one user with ``items`` (Long[k]).

    ``x = (Y^T Y + Y_k^T (C_k - 1) Y_k + reg I)^-1 Y_k^T C_k 1`` with ``C_k`` the
    confidences ``conf`` (Float[k], alpha included) of the user's items and ``gram = Y^T Y``.
    """
    d = item_factors.shape[1]
    y = item_factors[items].astype(np.float64)
    a = gram.astype(np.float64) + (y.T * (conf - 1.0)) @ y + regularization * np.eye(d)
    b = y.T @ conf
    return np.linalg.solve(a, b).astype(item_factors.dtype)


class IALS(Recommender):
    """Implicit ALS; scores by dot product ``x_u . y_i``.

    Args:
        sizes: the graph's shape; :meth:`solve` reads the train view's interactions (with
            their ``weight`` when ``confidence="log"``).
        factors: d, the number of latent factors.
        regularization: L2 weight ``reg`` on both factor matrices (not scaled by counts).
        alpha: confidence of an observed interaction (unobserved pairs have 1).
        confidence: ``"binary"`` (default) or ``"log"`` (see the module docstring).
        init_std: the factors start uniform in ``[0, init_std)`` (implicit's own init),
            drawn from torch's seeded generator.
        use_cg: conjugate-gradient solver (implicit's default, 3 steps per sweep) instead
            of an exact Cholesky solve per user and item.
        num_threads: threads of implicit's solver (0 = all cores).

    Shapes: ``forward(None)`` -> user [U, d], item [I, d] (the factors).
    """

    name = "ials"
    trainable = False  # not optimised by gradients: see solve

    def __init__(self, sizes: GraphSizes, factors: int = 128, regularization: float = 30.0,
                 alpha: float = 5.0, confidence: str = "binary", init_std: float = 0.01,
                 use_cg: bool = True, num_threads: int = 1) -> None:
        super().__init__(sizes)
        if factors < 1 or regularization < 0 or not alpha > 0 or init_std <= 0:
            raise ValueError(f"iALS needs factors >= 1, regularization >= 0, alpha > 0 and "
                             f"init_std > 0 (got {factors}, {regularization}, {alpha}, "
                             f"{init_std})")
        if confidence not in CONFIDENCES:
            raise ValueError(f"confidence must be one of {CONFIDENCES}, not {confidence!r}")
        self._hparams = {"factors": int(factors), "regularization": float(regularization),
                         "alpha": float(alpha), "confidence": confidence,
                         "init_std": float(init_std), "use_cg": bool(use_cg),
                         "num_threads": int(num_threads)}
        self.factors, self.regularization, self.alpha = int(factors), float(regularization), alpha
        self.confidence, self.use_cg, self.num_threads = confidence, bool(use_cg), num_threads
        d = self.factors
        self.user_factors = torch.nn.Parameter(torch.rand(self.num_users, d) * init_std,
                                               requires_grad=False)
        self.item_factors = torch.nn.Parameter(torch.rand(self.num_items, d) * init_std,
                                               requires_grad=False)
        self._solver: Any = None
        self._view_id: int | None = None  # the view the solver matrix was built from

    # -- training ---------------------------------------------------------------
    def _matrix(self, view: TrainView) -> Any:
        """scipy CSR [U, I] of ``v_ui`` (implicit multiplies it by alpha)."""
        from scipy.sparse import csr_matrix

        u, i, _ = view.edges(UI)
        v = confidence_values(view.edge_weight(UI), u.size, self.confidence)
        return csr_matrix((v, (u, i)), shape=(self.num_users, self.num_items), dtype=np.float32)

    def solve(self, view: TrainView, epoch: int) -> dict[str, float]:
        """One ALS sweep (users, then items), in place on the factor matrices."""
        if self._solver is None or self._view_id != id(view):
            self.check_view(view)
            from implicit.cpu.als import AlternatingLeastSquares
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1, "blas"):  # implicit warns when BLAS is multi-threaded
                self._solver = AlternatingLeastSquares(
                    factors=self.factors, regularization=self.regularization, alpha=self.alpha,
                    iterations=1, use_cg=self.use_cg, num_threads=self.num_threads,
                    random_state=0)
            self._solver_matrix, self._view_id = self._matrix(view), id(view)
        if self.user_factors.device.type != "cpu":
            raise RuntimeError("iALS trains on the CPU (implicit's CPU solver)")
        from threadpoolctl import threadpool_limits

        solver = self._solver
        solver.user_factors = self.user_factors.detach().numpy().copy()
        solver.item_factors = self.item_factors.detach().numpy().copy()
        with threadpool_limits(1, "blas"):
            solver.fit(self._solver_matrix, show_progress=False)
        with torch.no_grad():
            self.user_factors.copy_(torch.from_numpy(solver.user_factors))
            self.item_factors.copy_(torch.from_numpy(solver.item_factors))
        return {}

    # -- scoring and fold-in -------------------------------------------------------
    def forward(self, inputs: Any = None) -> Propagation:
        return Propagation(self.user_factors, self.item_factors, self.user_factors,
                           self.item_factors)

    def item_confidence(self, items: Tensor, weight: Tensor | None = None) -> np.ndarray:
        """Float64[k] ``alpha * v`` for a user's items (``weight`` used when ``confidence``
        is ``"log"``)."""
        return self.alpha * confidence_values(weight, items.numel(), self.confidence
                                              ).astype(np.float64)

    @torch.no_grad()
    def fold_in_user(self, items: Tensor, weight: Tensor | None = None) -> Tensor:
        """Float [d]: factors re-solved for a user whose items are ``items`` (Long[k],
        distinct), against the trained item factors (a zero vector when ``k == 0``)."""
        y = self.item_factors.detach().cpu().numpy()
        if items.numel() == 0:
            return torch.zeros(self.factors)
        gram = y.T.astype(np.float64) @ y
        x = solve_user(y, gram, items.long().cpu().numpy(), self.item_confidence(items, weight),
                       self.regularization)
        return torch.from_numpy(x)

    def bpr_loss(self, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        raise TypeError("iALS is solved by alternating least squares (solve), not by "
                        "gradient steps on a ranking loss")
