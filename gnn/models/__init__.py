"""Recommender models: LightGCN (optionally social), XSimGCL, heterogeneous GraphSAGE, MF,
popularity, and the iALS and EASE baselines.

``MODELS`` maps the name stored in run configs and checkpoints to the class; every
class is built as ``MODELS[name](graph, **config)``.
"""

from __future__ import annotations

from .base import Propagation, Recommender
from .ease import EASE
from .ials import IALS
from .lightgcn import LightGCN, normalized_adjacency
from .mf import MF
from .pop import Popularity
from .sage import HeteroGraphSAGE
from .xsimgcl import XSimGCL

MODELS: dict[str, type[Recommender]] = {
    "lightgcn": LightGCN,
    "xsimgcl": XSimGCL,
    "graphsage": HeteroGraphSAGE,
    "mf": MF,
    "pop": Popularity,
    "ials": IALS,
    "ease": EASE,
}

__all__ = [
    "EASE",
    "IALS",
    "MODELS",
    "HeteroGraphSAGE",
    "LightGCN",
    "MF",
    "Popularity",
    "Propagation",
    "Recommender",
    "XSimGCL",
    "normalized_adjacency",
]
