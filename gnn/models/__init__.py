"""Recommender models: LightGCN (optionally social), heterogeneous GraphSAGE, MF, popularity.

``MODELS`` maps the name stored in run configs and checkpoints to the class; every
class is built as ``MODELS[name](graph, **config)``.
"""

from __future__ import annotations

from .base import Propagation, Recommender
from .lightgcn import LightGCN, normalized_adjacency
from .mf import MF
from .pop import Popularity
from .sage import HeteroGraphSAGE

MODELS: dict[str, type[Recommender]] = {
    "lightgcn": LightGCN,
    "graphsage": HeteroGraphSAGE,
    "mf": MF,
    "pop": Popularity,
}

__all__ = [
    "MODELS",
    "HeteroGraphSAGE",
    "LightGCN",
    "MF",
    "Popularity",
    "Propagation",
    "Recommender",
    "normalized_adjacency",
]
