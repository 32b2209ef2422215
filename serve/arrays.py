"""Array helpers of the serving state: growable arrays, top-k and MMR (its CSRs are
:class:`gnnrec.gnn.adjacency.CSR`)."""

from __future__ import annotations

from typing import Any

import numpy as np


class Growing:
    """An array whose first axis grows by doubling (rows appended, never removed)."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = np.ascontiguousarray(data)
        self.n = len(data)

    @property
    def view(self) -> np.ndarray:
        return self._data[: self.n]

    def append(self, row: Any) -> int:
        if self.n == len(self._data):
            grown = np.zeros((max(2 * self.n, 16), *self._data.shape[1:]), dtype=self._data.dtype)
            grown[: self.n] = self._data[: self.n]
            self._data = grown
        self._data[self.n] = row
        self.n += 1
        return self.n - 1


def unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def median_norm(x: np.ndarray) -> float:
    norms = np.linalg.norm(x, axis=1)
    norms = norms[norms > 0]
    return float(np.median(norms)) if norms.size else 1.0


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest finite scores, best first (ties: lower index first)."""
    k = min(k, int(np.isfinite(scores).sum()))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
    return part[np.lexsort((part, -scores[part]))]


def mmr(candidates: np.ndarray, relevance: np.ndarray, unit: np.ndarray, k: int,
        diversity: float) -> np.ndarray:
    """Maximal marginal relevance: reorder ``candidates`` (best first) and keep ``k``.

    Relevance is min-max scaled to [0, 1] over the candidates; each step picks
    ``argmax (1 - diversity) * rel - diversity * max cosine to those already picked``.
    ``diversity == 0`` keeps the relevance order.
    """
    n = len(candidates)
    if n == 0 or diversity <= 0:
        return candidates[:k]
    rel = relevance.astype(np.float64)
    span = rel.max() - rel.min()
    rel = (rel - rel.min()) / span if span > 0 else np.ones(n)
    sims = unit[candidates] @ unit[candidates].T
    picked = [0]
    taken = np.zeros(n, dtype=bool)
    taken[0] = True
    closest = sims[0].astype(np.float64)
    for _ in range(min(k, n) - 1):
        gain = (1.0 - diversity) * rel - diversity * closest
        gain[taken] = -np.inf
        j = int(np.argmax(gain))
        picked.append(j)
        taken[j] = True
        np.maximum(closest, sims[j], out=closest)
    return candidates[np.asarray(picked)]
