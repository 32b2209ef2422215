"""Small graphs and stand-in models for the gnn tests (not a test module).

``TinyMF`` follows the ``gnnrec.gnn.models`` Recommender interface with plain dot-product
matrix factorisation, so the training loop, runs and CLI are tested without the real models.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData

from gnnrec.gnn.data import build_graph, synthetic_graph
from gnnrec.gnn.models.base import ranking_loss
from gnnrec.gnn.split import apply_split


def small_graph(seed: int = 0, users: int = 120, items: int = 60) -> HeteroData:
    """A seeded synthetic graph with the default random split."""
    return apply_split(synthetic_graph(users, items, num_tags=6, mean_interactions=10.0,
                                       seed=seed), "random", seed=seed)


def hand_graph() -> HeteroData:
    """4 users, 6 items, an explicit split (0 train, 1 valid, 2 test)::

        user 0: train {0, 1, 2}  valid {3}  test {4}
        user 1: train {5, 0, 1}  valid {2}  test {3}
        user 2: train {2}
        user 3: train {2, 4}
    """
    pairs = [(0, 0, 0), (0, 1, 0), (0, 2, 0), (0, 3, 1), (0, 4, 2),
             (1, 5, 0), (1, 0, 0), (1, 1, 0), (1, 2, 1), (1, 3, 2),
             (2, 2, 0), (3, 2, 0), (3, 4, 0)]
    ei = torch.tensor([[u for u, _, _ in pairs], [i for _, i, _ in pairs]])
    split = torch.tensor([s for _, _, s in pairs])
    g = build_graph([f"u{i}" for i in range(4)], [f"i{i}" for i in range(6)], ei,
                    time=torch.arange(1, len(pairs) + 1) * 100, split=split,
                    friend_edge_index=torch.tensor([[0, 2], [1, 3]]))
    g.split_info = {"kind": "manual"}
    return g


class TinyMF(nn.Module):
    """Dot-product MF with the Recommender interface (test stand-in)."""

    def __init__(self, graph: HeteroData, embedding_dim: int = 8, interrupt_at: int = -1,
                 nan: bool = False) -> None:
        super().__init__()
        self.embedding_dim, self.interrupt_at, self.nan = embedding_dim, interrupt_at, nan
        self.calls = 0
        self.user = nn.Embedding(graph["user"].num_nodes, embedding_dim)
        self.item = nn.Embedding(graph["item"].num_nodes, embedding_dim)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)
        split = graph["user", "interacts", "item"].get("split")
        assert split is None or not bool(split.any()), "models get train edges only"

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user.weight, self.item.weight

    def bpr_loss(self, users: Tensor, pos: Tensor, neg: Tensor, loss: str = "bpr",
                 temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        u, i = self.embeddings()
        value, reg = ranking_loss(u, i, u, i, users, pos, neg.view(neg.size(0), -1), loss,
                                  temperature)
        if self.nan:
            value = value * float("nan")
        return value, reg

    def score(self, users: Tensor) -> Tensor:
        u, i = self.embeddings()
        return u[users] @ i.T

    def config(self) -> dict[str, int]:
        return {"embedding_dim": self.embedding_dim}


class TinyPop(nn.Module):
    """Popularity with no trainable parameters."""

    def __init__(self, graph: HeteroData) -> None:
        super().__init__()
        items = graph["user", "interacts", "item"].edge_index[1]
        self.register_buffer("count", torch.bincount(items, minlength=graph["item"].num_nodes)
                             .float())

    def score(self, users: Tensor) -> Tensor:
        return self.count.expand(users.numel(), -1)

    def config(self) -> dict[str, int]:
        return {}


@contextmanager
def fake_models(**models: type) -> Iterator[dict[str, type]]:
    """Make ``gnnrec.gnn.models.MODELS`` hold ``models`` for the duration (real module or not)."""
    try:
        import gnnrec.gnn.models as real
    except Exception:  # noqa: BLE001 - not written yet, or broken mid-edit: use a stand-in
        real = None
    if real is not None and isinstance(getattr(real, "MODELS", None), dict):
        registry = real.MODELS
        saved = dict(registry)
        registry.update(models)
        try:
            yield registry
        finally:
            registry.clear()
            registry.update(saved)
        return
    module = types.ModuleType("gnnrec.gnn.models")
    module.MODELS = dict(models)  # type: ignore[attr-defined]
    previous = sys.modules.get("gnnrec.gnn.models")
    sys.modules["gnnrec.gnn.models"] = module
    try:
        yield module.MODELS  # type: ignore[attr-defined]
    finally:
        if previous is None:
            sys.modules.pop("gnnrec.gnn.models", None)
        else:
            sys.modules["gnnrec.gnn.models"] = previous
