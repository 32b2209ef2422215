"""Matrix factorisation trained with BPR (Rendle et al., UAI 2009)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .base import GraphSizes, Propagation, Recommender


class MF(Recommender):
    """User and item embeddings scored by dot product; no graph propagation (its input is
    ``None``: it reads nothing of the graph).

    Args:
        sizes: the graph's shape (only its numbers of users and items are used).
        embedding_dim: d.
        init_std: std of the normal initialisation.

    Shapes: ``forward(None)`` -> user [U, d], item [I, d].
    """

    name = "mf"
    train_defaults: ClassVar[dict[str, Any]] = {"lr": 1e-3, "l2": 1e-3}

    def __init__(self, sizes: GraphSizes, embedding_dim: int = 64, init_std: float = 0.1) -> None:
        super().__init__(sizes)
        self._hparams = {"embedding_dim": int(embedding_dim), "init_std": float(init_std)}
        self.embedding_dim = embedding_dim
        self.user_embedding = torch.nn.Embedding(self.num_users, embedding_dim)
        self.item_embedding = torch.nn.Embedding(self.num_items, embedding_dim)
        torch.nn.init.normal_(self.user_embedding.weight, std=init_std)
        torch.nn.init.normal_(self.item_embedding.weight, std=init_std)

    def forward(self, inputs: Any = None) -> Propagation:
        user, item = self.user_embedding.weight, self.item_embedding.weight
        return Propagation(user, item, user, item)
