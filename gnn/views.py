"""The train-only view of a split graph: built once, passed down.

:meth:`TrainView.from_graph` is the one place where the held-out interactions (``split``
1 and 2) and the tagging of held-out pairs leave the graph. Models build their inputs from
the view (:meth:`~gnnrec.gnn.models.base.Recommender.inputs`), the negative sampler draws
from its train pairs, the neighbour sampler samples its CSRs (zero-copy through Ray's
object store: numpy arrays only) and the evaluator reads its :class:`SplitInteractions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from gnnrec.gnn.adjacency import CSR, member
from gnnrec.gnn.data import (
    EDGE_TYPES,
    IT,
    IU,
    NODE_TYPES,
    TEST,
    TI,
    TRAIN,
    UI,
    UU,
    VALID,
    EdgeType,
    GraphFormatError,
    has_split,
)
from gnnrec.gnn.models.base import GraphSizes

INTERACTIONS, TAGGING = (UI, IU), (IT, TI)
_FLIPPED = {IU: UI, UI: IU, TI: IT, IT: TI}


@dataclass(frozen=True)
class SplitInteractions:
    """Every interaction of a graph as one user -> item CSR, with each entry's split.

    ``split`` Int8[nnz] (0 train, 1 valid, 2 test) in the CSR's entry order; a graph
    without a split has every interaction in train (``has_split`` False). What evaluation
    and recommendation read, and what a run directory keeps.
    """

    num_items: int
    csr: CSR
    split: np.ndarray
    has_split: bool = True

    @classmethod
    def from_graph(cls, data: HeteroData) -> SplitInteractions:
        ei = data[UI].edge_index.cpu().numpy()
        n_users, n_items = int(data["user"].num_nodes), int(data["item"].num_nodes)
        csr = CSR.from_edges(ei[0], ei[1], n_users, num_cols=n_items)
        split = (data[UI].split.cpu().numpy()[csr.eid].astype(np.int8) if has_split(data)
                 else np.zeros(csr.nnz, dtype=np.int8))
        # the edge ids served only to order the split: 4 bytes less per interaction
        columns = CSR(csr.indptr, np.ascontiguousarray(csr.table[:, :1]))
        return cls(n_items, columns, split, has_split(data))

    @property
    def num_users(self) -> int:
        return self.csr.num_rows

    def part(self, splits: Sequence[int]) -> CSR:
        """user -> item CSR of the interactions whose split is in ``splits``."""
        return self.csr.select(np.isin(self.split, np.asarray(splits, dtype=np.int8)))

    def item_count(self, splits: Sequence[int] = (TRAIN,)) -> Tensor:
        """Long[I] interactions per item among ``splits``."""
        part = self.part(splits)
        return torch.from_numpy(np.bincount(part.indices, minlength=self.num_items))


def heldout_events(data: HeteroData, user: Tensor, item: Tensor) -> Tensor:
    """Bool mask: which (user, item) events are a valid or test interaction of ``data``."""
    ni = int(data["item"].num_nodes)
    keys = torch.from_numpy(SplitInteractions.from_graph(data).part((VALID, TEST)).keys(ni))
    return member(keys, user * ni + item)


def without_heldout_tagging(data: HeteroData) -> tuple[Tensor, Tensor]:
    """``(keep Bool[T], weight Float[T])`` of the item-tag edges once held-out tagging is gone.

    User-generated tags leak: a user who tagged a held-out item with a tag of their own
    (most LastFM tags have a single user) joins it to their train items through that
    tag. Each tagging event (``data.tag_events``) whose (user, item) pair is a valid or
    test interaction is subtracted from its (item, tag) weight; an edge left with no
    weight is dropped. Catalogue weight beyond the recorded events stays.
    """
    ev, it = data.tag_events, data[IT]
    nt = max(int(data["tag"].num_nodes), 1)
    held = ev[:, heldout_events(data, ev[0], ev[1])]
    codes, counts = torch.unique(held[1] * nt + held[2], return_counts=True)
    edge_codes = it.edge_index[0] * nt + it.edge_index[1]
    weight = it.weight.clone()
    if codes.numel():
        pos = torch.searchsorted(codes, edge_codes).clamp_(max=codes.numel() - 1)
        hit = codes[pos] == edge_codes  # the edges some held-out event tagged
        weight[hit] -= counts[pos[hit]].to(weight.dtype)
    return weight > 0, weight


def _edges(data: HeteroData, et: EdgeType) -> tuple[np.ndarray, np.ndarray | None]:
    """(edge_index Int64[2, E], weight or None) of ``et``; a missing reverse type is its
    forward type flipped, any other missing type empty."""
    for source, flip in ((et, False), (_FLIPPED.get(et), True)):
        if source in data.edge_types and "edge_index" in data[source]:
            store = data[source]
            ei = store.edge_index.cpu().numpy().astype(np.int64, copy=False)
            weight = store.weight.cpu().numpy() if "weight" in store else None
            return (ei[::-1] if flip else ei), weight
    return np.zeros((2, 0), dtype=np.int64), None


@dataclass(frozen=True)
class TrainView:
    """What training may see of a graph: its train edges, as CSRs, plus node features.

    ``csr[edge_type]`` holds the kept edges of each edge type ``(src, rel, dst)`` keyed by
    the destination: row ``v`` lists the sources ``u`` of edges ``u -> v`` (the
    in-neighbours that send messages to ``v``), with each entry's edge id (its column in
    the graph's ``edge_index``) and weight. Kept: the train interactions (``split == 0``;
    every interaction when the graph has no split) in both directions, every friendship,
    and the item-tag edges less the tagging of held-out pairs when the graph records who
    tagged what (:func:`without_heldout_tagging`). ``x``: node features Float[N, F] per
    node type that has them. ``interactions``: every interaction with its split, for
    evaluation on valid and test.
    """

    num_nodes: dict[str, int]
    csr: dict[EdgeType, CSR]
    interactions: SplitInteractions
    x: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_graph(cls, data: HeteroData) -> TrainView:
        num_nodes = {nt: int(data[nt].num_nodes or 0) if nt in data.node_types else 0
                     for nt in NODE_TYPES}
        train = None
        if has_split(data):
            split, n = data[UI].split, data[UI].edge_index.size(1)
            if split.numel() != n:
                raise GraphFormatError(f"interacts: split has {split.numel()} entries for "
                                       f"{n} edges")
            train = split.cpu().numpy() == TRAIN
        tags = (without_heldout_tagging(data) if train is not None and "tag_events" in data
                else None)
        csr: dict[EdgeType, CSR] = {}
        for et in EDGE_TYPES:  # IU is UI flipped and TI is IT flipped, in the same order
            ei, weight = _edges(data, et)
            eid = np.arange(ei.shape[1], dtype=np.int64)
            if train is not None and et in INTERACTIONS:
                eid = np.flatnonzero(train)
            elif tags is not None and et in TAGGING:
                eid, weight = np.flatnonzero(tags[0].numpy()), tags[1].numpy()
            csr[et] = CSR.from_edges(ei[1, eid], ei[0, eid], num_nodes[et[2]], eid=eid,
                                     weight=None if weight is None else weight[eid],
                                     num_cols=num_nodes[et[0]])
        # copies: nothing of the view refers to the graph's (maybe memory-mapped) tensors
        x = {nt: data[nt].x.cpu().numpy().copy() for nt in NODE_TYPES if "x" in data[nt]}
        return cls(num_nodes, csr, SplitInteractions.from_graph(data), x)

    @property
    def edge_types(self) -> list[EdgeType]:
        return sorted(self.csr)

    @property
    def num_users(self) -> int:
        return self.num_nodes["user"]

    @property
    def num_items(self) -> int:
        return self.num_nodes["item"]

    @property
    def sizes(self) -> GraphSizes:
        """The shape of this graph, what a model is built from."""
        return GraphSizes(
            num_users=self.num_users, num_items=self.num_items, num_tags=self.num_nodes["tag"],
            user_features=int(self.x["user"].shape[1]) if "user" in self.x else 0,
            item_features=int(self.x["item"].shape[1]) if "item" in self.x else 0,
            friend_edges=self.csr[UU].nnz, tag_edges=self.csr[IT].nnz)

    def edges(self, edge_type: EdgeType = UI) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(src Int64[E], dst Int64[E], e_id Int64[E])`` of the kept edges, in edge order."""
        c = self.csr[edge_type]
        order = np.argsort(c.eid, kind="stable")
        return (c.indices[order].astype(np.int64), c.rows()[order],
                c.eid[order].astype(np.int64))

    def edge_index(self, edge_type: EdgeType = UI) -> Tensor:
        """Long[2, E] the kept edges of ``edge_type`` (``src``, ``dst``), in edge order."""
        src, dst, _ = self.edges(edge_type)
        return torch.from_numpy(np.stack([src, dst]))

    def edge_weight(self, edge_type: EdgeType = UI) -> Tensor:
        """Float[E] the kept edges' weights, in edge order (ones when there are none)."""
        c = self.csr[edge_type]
        w = c.weight
        if w is None:
            return torch.ones(c.nnz)
        return torch.from_numpy(w[np.argsort(c.eid, kind="stable")])

    def train_pairs(self) -> tuple[Tensor, Tensor]:
        """``(users Long[E], items Long[E])`` of the train interactions, in edge order."""
        users, items, _ = self.edges(UI)
        return torch.from_numpy(users), torch.from_numpy(items)

    def features(self, node_type: str) -> Tensor | None:
        """Float[N, F] features of ``node_type`` (None when it has none)."""
        x = self.x.get(node_type)
        return None if x is None else torch.from_numpy(x).float()

