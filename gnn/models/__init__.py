"""Recommender models: LightGCN (optionally social), XSimGCL, heterogeneous GraphSAGE, MF,
popularity, and the iALS and EASE baselines.

``MODELS`` maps the name stored in runs to the class; every class is built as
``MODELS[name](sizes, **config)`` (see :mod:`gnnrec.gnn.models.base` for the interface).
"""

from __future__ import annotations

from .base import GraphSizes, Inputs, Propagation, Recommender
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
    "GraphSizes",
    "Inputs",
    "Popularity",
    "Propagation",
    "Recommender",
    "XSimGCL",
    "normalized_adjacency",
]
