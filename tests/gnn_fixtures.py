"""Small graphs and stand-in models for the gnn tests (not a test module).

``TinyMF`` follows the ``gnnrec.gnn.models`` Recommender interface (built from sizes,
``inputs(view)``, ``forward(inputs) -> Propagation``) with plain dot-product matrix
factorisation, so the training loop, runs and CLI are tested without the real models.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData

from gnnrec.gnn.data import UI, build_graph
from gnnrec.gnn.generators import synthetic_graph
from gnnrec.gnn.models.base import GraphSizes, Propagation, ranking_loss
from gnnrec.gnn.split import apply_split
from gnnrec.gnn.views import TrainView


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

    def __init__(self, sizes: GraphSizes, embedding_dim: int = 8, interrupt_at: int = -1,
                 nan: bool = False) -> None:
        super().__init__()
        self.sizes = sizes
        self.embedding_dim, self.interrupt_at, self.nan = embedding_dim, interrupt_at, nan
        self.calls = 0
        self.user = nn.Embedding(sizes.num_users, embedding_dim)
        self.item = nn.Embedding(sizes.num_items, embedding_dim)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)

    def inputs(self, view: TrainView) -> None:
        train = int((view.interactions.split == 0).sum())
        assert view.csr[UI].nnz == train, "models get train edges only"
        return None

    def forward(self, inputs: None = None) -> Propagation:
        if self.training:  # one call per training step
            self.calls += 1
            if self.calls == self.interrupt_at:
                raise KeyboardInterrupt
        u, i = self.user.weight, self.item.weight
        if self.nan:
            u = u * float("nan")
        return Propagation(u, i, u, i)

    def loss(self, out: Propagation, users: Tensor, pos: Tensor, neg: Tensor,
             loss: str = "bpr", temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        return ranking_loss(out.user, out.item, out.user_ego, out.item_ego, users, pos, neg,
                            loss, temperature)

    def score(self, users: Tensor, inputs: None = None) -> Tensor:
        out = self(inputs)
        return out.user[users] @ out.item.T

    def config(self) -> dict[str, int]:
        return {"embedding_dim": self.embedding_dim}


class TinyPop(nn.Module):
    """Popularity with no trainable parameters (and no ``solve``: evaluated once)."""

    def __init__(self, sizes: GraphSizes) -> None:
        super().__init__()
        self.sizes = sizes

    def inputs(self, view: TrainView) -> Tensor:
        return torch.bincount(view.edge_index(UI)[1], minlength=view.num_items).float()

    def forward(self, count: Tensor) -> Propagation:
        user = count.new_ones(self.sizes.num_users, 1)
        return Propagation(user, count[:, None], user, count[:, None])

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
