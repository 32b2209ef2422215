"""CSR neighbour sampling and mini-batches for hetero GNNs (numpy; no pyg-lib, no ray).

What is sampled is the train view of the graph (:class:`~gnnrec.gnn.views.TrainView`):
its CSR of an edge type ``(src, rel, dst)`` is keyed by the **destination**: row ``v`` of
type ``dst`` lists the ``src`` nodes ``u`` with an edge ``u -> v`` (the in-neighbours that
send messages to ``v``). Sampling a ``dst`` node therefore adds ``src`` nodes, exactly as
PyG's ``NeighborLoader`` does. Only train interactions are there.

Per hop and edge type all frontier nodes are sampled at once:

- with replacement: ``indptr[v] + floor(rand * deg(v))``, ``k`` draws per node;
- without replacement: every neighbour where ``deg(v) <= k``, else a uniform ``k``-subset
  by Floyd's algorithm, vectorised over the nodes (a Python loop over the ``k`` draws,
  never over nodes; ``O(k^2)`` compares per node, no sort, no retry).

As in PyG, hop ``h + 1`` expands only the nodes first reached at hop ``h``. Batches are
PyG-shaped ``HeteroData``: per node type ``n_id`` (global ids: the seeds in the order
given, then each hop's new nodes, ascending), ``num_nodes``, ``batch_size`` (seed types),
``num_sampled_nodes`` (per hop, seeds included) and ``x`` when the graph has features;
per edge type a local ``edge_index`` Long[2, M] (row 0 indexes ``src`` n_id, row 1
``dst`` n_id; sorted by ``dst``, so a model builds its block's CSR without a sort),
``e_id`` (column in the full graph's ``edge_index``), ``num_sampled_edges``, ``weight`` when
the graph has one and ``distinct`` (no ``(src, dst)`` pair repeats: sampled without
replacement from a CSR without repeated entries). A batch of :class:`NodeBatchSampler` or
:class:`LinkBatchSampler` is a pure function of ``(seed, epoch, index)``, so any process
(a Ray worker) rebuilds it bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from gnnrec.errors import GnnrecError
from gnnrec.gnn.data import UI, EdgeType
from gnnrec.gnn.negative import NegativeSampler
from gnnrec.gnn.views import TrainView

NumNeighbors = Sequence[int] | Mapping[EdgeType, Sequence[int]]


class SamplerError(GnnrecError):
    """Bad sampler settings or seeds (unknown type, id out of range, bad fan-out)."""


@dataclass
class SampledArrays:
    """One sampled batch as numpy arrays (what Ray workers return; see module docstring).

    ``seed_local[nt]``: local index of each given seed (duplicates included); ``meta``:
    batch-level arrays such as link labels.
    """

    n_id: dict[str, np.ndarray]
    edge_index: dict[EdgeType, np.ndarray]
    e_id: dict[EdgeType, np.ndarray]
    batch_size: dict[str, int]
    num_sampled_nodes: dict[str, list[int]]
    num_sampled_edges: dict[EdgeType, list[int]]
    seed_local: dict[str, np.ndarray]
    weight: dict[EdgeType, np.ndarray] = field(default_factory=dict)
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    distinct: dict[EdgeType, bool] = field(default_factory=dict)


def _as_graph(graph: HeteroData | TrainView) -> TrainView:
    return graph if isinstance(graph, TrainView) else TrainView.from_graph(graph)


def _fanouts(num_neighbors: NumNeighbors, edge_types: list[EdgeType]) -> dict[EdgeType, list[int]]:
    """Per-edge-type fan-out lists of one common length (missing types: 0 = not sampled)."""
    if isinstance(num_neighbors, Mapping):
        unknown = [et for et in num_neighbors if tuple(et) not in edge_types]
        if unknown:
            raise SamplerError(f"num_neighbors names unknown edge types {unknown}; "
                               f"the graph has {edge_types}")
        given = {tuple(et): [int(k) for k in ks] for et, ks in num_neighbors.items()}
        hops = {len(ks) for ks in given.values()}
        if len(hops) > 1:
            raise SamplerError(f"num_neighbors lists differ in length (hops): {given}")
        n = hops.pop() if hops else 0
        out = {et: given.get(et, [0] * n) for et in edge_types}
    else:
        out = {et: [int(k) for k in num_neighbors] for et in edge_types}
    for et, ks in out.items():
        if any(k < -1 for k in ks):
            raise SamplerError(f"fan-out for {et} must be >= 0 or -1 (all), got {ks}")
    return out


def _floyd(deg: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Int[k, m]: a uniform k-subset of ``0..deg[j]-1`` in column j (deg > k), by Floyd.

    Step ``s`` draws ``t`` in ``[0, deg - k + s]`` and takes ``deg - k + s`` instead when
    ``t`` was taken already; the loop runs over the k steps, vectorised over the rows.
    """
    most = int(deg.max(initial=0))
    # The narrowest ints compare fastest. Float32 draws (multiples of 2**-24) are uniform
    # within (deg / 2**24) relative, under 0.03 % where all degrees are below 2**12.
    it = np.int16 if most < 2**15 else np.int32 if most < 2**31 else np.int64
    ft = np.float32 if most < 2**12 else np.float64
    chosen = np.empty((k, deg.size), dtype=it)
    top = (deg - k).astype(it) + np.arange(k, dtype=it)[:, None]
    draw = np.minimum((rng.random((k, deg.size), dtype=ft) * (top + 1)).astype(it), top)
    chosen[0] = draw[0]
    for s in range(1, k):
        taken = (chosen[:s] == draw[s]).any(axis=0)
        chosen[s] = np.where(taken, top[s], draw[s])
    return chosen


def _repeats(c: Any) -> bool:
    """Whether some row of the CSR ``c`` lists a column twice (a repeated edge)."""
    if c.nnz < 2:
        return False
    keys = c.rows() * (int(c.indices.max()) + 1) + c.indices
    keys.sort()
    return bool((keys[1:] == keys[:-1]).any())


def sample_positions(indptr: np.ndarray, nodes: np.ndarray, k: int, replace: bool,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sample up to ``k`` in-neighbours of every node in ``nodes`` (Int64[n]) at once.

    Returns ``(row Int64[M], pos Int64[M])``: ``row`` indexes ``nodes`` and is
    non-decreasing (each node's picks together, in the order of ``nodes``), ``pos`` the CSR
    entry (``indices[pos]`` is the neighbour). ``k = -1`` takes every neighbour.
    """
    start = indptr[nodes]
    deg = indptr[nodes + 1] - start
    if replace and k >= 0:
        some = np.flatnonzero(deg > 0)
        d = deg[some][:, None]
        off = np.minimum((rng.random((some.size, k)) * d).astype(np.int64), d - 1)
        return np.repeat(some, k), (start[some][:, None] + off).ravel()
    take = deg if k < 0 else np.minimum(deg, k)
    first = np.cumsum(take) - take
    row = np.repeat(np.arange(nodes.size), take)
    # each node's first `take` entries (all of them where deg <= k) ...
    pos = np.repeat(start - first, take) + np.arange(row.size)
    big = np.flatnonzero(deg > k) if k >= 0 else first[:0]
    if big.size:  # ... and a uniform k-subset (Floyd) where deg > k
        pos[(first[big][:, None] + np.arange(k)).ravel()] = (
            start[big][:, None] + _floyd(deg[big], k, rng).T).ravel()
    return row, pos


class NeighborSampler:
    """k-hop heterogeneous neighbour sampler over train edges (PyG ``NeighborLoader`` shape).

    Args:
        graph: a ``HeteroData`` (``gnnrec.gnn.data`` layout) or its prebuilt
            :class:`~gnnrec.gnn.views.TrainView` (what is sampled: its CSRs).
        num_neighbors: fan-out per hop, one list for all edge types (``[15, 10, 5]``) or a dict
            ``{edge_type: [k1, k2, ...]}`` (missing types are not sampled); ``-1`` = all.
        replace: sample with replacement (exactly ``k`` per node of degree > 0).
        seed: seed of the generator used by :meth:`sample`.

    Not thread-safe: it keeps one global->local scratch map per node type.
    """

    def __init__(self, graph: HeteroData | TrainView, num_neighbors: NumNeighbors = (15, 10, 5),
                 replace: bool = False, seed: int = 0) -> None:
        self.graph = _as_graph(graph)
        self.edge_types = self.graph.edge_types
        self.num_neighbors = _fanouts(num_neighbors, self.edge_types)
        self.num_hops = len(next(iter(self.num_neighbors.values()), []))
        self.replace = replace
        self.rng = np.random.default_rng(seed)
        # a batch's edges repeat no (src, dst) pair: each node is expanded once per edge type
        self.distinct = {et: not replace and not _repeats(self.graph.csr[et])
                         for et in self.edge_types if any(self.num_neighbors[et])}
        self._local = {nt: np.full(n, -1, dtype=np.int64) for nt, n in self.graph.num_nodes.items()}

    def sample(self, seeds: Mapping[str, Tensor | Sequence[int]]) -> HeteroData:
        """The sampled subgraph around ``seeds`` (``{node_type: Long[B]}``) as ``HeteroData``."""
        arrays = self.sample_arrays({nt: np.asarray(s, dtype=np.int64) for nt, s in seeds.items()},
                                    self.rng)
        return self.to_data(arrays)

    def _unique_seeds(self, nt: str, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Give the distinct seeds local ids ``0..B-1`` in first-occurrence order.

        Returns (unique seeds Int64[B], local id of every given seed Int64[len(s)]).
        """
        s = s.reshape(-1)
        n = self.graph.num_nodes[nt]
        if s.size and (int(s.min()) < 0 or int(s.max()) >= n):
            bad = int(s[(s < 0) | (s >= n)][0])
            raise SamplerError(f"seed {bad} of node type {nt!r} is outside 0..{n - 1}")
        local, ids = self._local[nt], np.arange(s.size)
        local[s] = ids  # distinct seeds (the usual case) read their own position back
        if (local[s] == ids).all():
            return s, ids
        local[s] = -1
        uniq, first, inv = np.unique(s, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        local[uniq[order]] = np.arange(order.size)
        return uniq[order], rank[inv]

    def _new_nodes(self, nt: str, cands: list[np.ndarray]) -> np.ndarray:
        """Distinct nodes of ``cands`` without a local id yet (ascending global id)."""
        n, local = self.graph.num_nodes[nt], self._local[nt]
        if sum(c.size for c in cands) * 4 < n:  # few candidates: sort them
            u = np.unique(np.concatenate(cands))
        else:  # many: mark them in a dense mask
            mark = np.zeros(n, dtype=bool)
            for c in cands:
                mark[c] = True
            u = np.flatnonzero(mark)
        return u[local[u] < 0]

    def sample_arrays(self, seeds: Mapping[str, np.ndarray],
                      rng: np.random.Generator) -> SampledArrays:
        """Sample around ``seeds`` (``{node_type: Int64[B]}``) with ``rng``; numpy result.

        Local ids of a hop's new nodes are one contiguous range, so a frontier is kept as
        (global ids, first local id) and ``dst`` local ids are ``row + first``.
        """
        types = list(self.graph.num_nodes)
        if unknown := sorted(set(seeds) - set(types)):
            raise SamplerError(f"seeds of unknown node types {unknown}; types: {sorted(types)}")
        nodes: dict[str, list[np.ndarray]] = {nt: [] for nt in types}
        counts: dict[str, list[int]] = {nt: [] for nt in types}
        edges: dict[EdgeType, list[tuple[np.ndarray, np.ndarray, np.ndarray, Any]]] = {
            et: [] for et in self.edge_types}
        seed_local: dict[str, np.ndarray] = {}
        frontier: dict[str, tuple[np.ndarray, int]] = {}
        try:
            for nt in types:
                uniq = np.empty(0, np.int64)
                if nt in seeds:
                    uniq, seed_local[nt] = self._unique_seeds(nt, np.asarray(seeds[nt], np.int64))
                    frontier[nt] = (uniq, 0)
                nodes[nt].append(uniq)
                counts[nt].append(uniq.size)
            for hop in range(self.num_hops):
                found: dict[str, list[np.ndarray]] = {}
                hop_edges = []
                for et in self.edge_types:
                    k = self.num_neighbors[et][hop]
                    c = self.graph.csr[et]
                    if k == 0 or et[2] not in frontier or c.nnz == 0:
                        continue
                    glob, first = frontier[et[2]]
                    row, pos = sample_positions(c.indptr, glob, k, self.replace, rng)
                    src, eid, w = c.take(pos)
                    row += first
                    hop_edges.append((et, src, row, eid, w))
                    found.setdefault(et[0], []).append(src)
                frontier = {}
                for nt in types:
                    new = self._new_nodes(nt, found[nt]) if nt in found else np.empty(0, np.int64)
                    first = sum(counts[nt])
                    self._local[nt][new] = np.arange(first, first + new.size)
                    counts[nt].append(new.size)
                    nodes[nt].append(new)
                    if new.size:
                        frontier[nt] = (new, first)
                for et in self.edge_types:  # one entry per hop, empty when not sampled
                    edges[et].append((*(np.empty(0, np.int64),) * 3, None))
                for et, src, dst, eid, w in hop_edges:
                    edges[et][-1] = (self._local[et[0]][src], dst, eid, w)
        finally:
            for nt, parts in nodes.items():
                for part in parts:
                    self._local[nt][part] = -1
        n_id = {nt: np.concatenate(p) for nt, p in nodes.items()}
        edge_index, e_id, num_edges, weight = {}, {}, {}, {}
        for et, parts in edges.items():
            num_edges[et] = [p[0].size for p in parts]
            edge_index[et] = np.empty((2, sum(num_edges[et])), dtype=np.int64)
            if parts:
                np.concatenate([p[0] for p in parts], out=edge_index[et][0])
                np.concatenate([p[1] for p in parts], out=edge_index[et][1])
            e_id[et] = np.concatenate([p[2] for p in parts] or [np.empty(0, np.int64)])
            if self.graph.csr[et].has_weight:
                weight[et] = np.concatenate([p[3] for p in parts if p[3] is not None]
                                            or [np.empty(0, np.float32)])
        return SampledArrays(n_id, edge_index, e_id, {nt: counts[nt][0] for nt in seeds},
                             counts, num_edges, seed_local, weight,
                             distinct={et: self.distinct.get(et, True) for et in edges})

    def to_data(self, a: SampledArrays) -> HeteroData:
        """PyG ``HeteroData`` of a sample (features and edge weights gathered by id)."""
        data = HeteroData()
        for nt, n_id in a.n_id.items():
            store = data[nt]
            store.n_id = _tensor(n_id)
            store.num_nodes = int(n_id.size)
            store.num_sampled_nodes = list(a.num_sampled_nodes[nt])
            if nt in a.batch_size:
                store.batch_size = int(a.batch_size[nt])
            if nt in self.graph.x:
                store.x = torch.from_numpy(self.graph.x[nt][n_id])
        for et in self.edge_types:
            store = data[et]
            store.edge_index = _tensor(a.edge_index[et])
            store.e_id = _tensor(a.e_id[et])
            store.num_sampled_edges = list(a.num_sampled_edges[et])
            store.distinct = bool(a.distinct.get(et, False))
            if et in a.weight:
                store.weight = _tensor(a.weight[et])
        return data


def _tensor(a: np.ndarray) -> Tensor:
    """Tensor of ``a`` (ids widened to Long), sharing memory when ``a`` is writable Int64
    or float (a copy for Int32 arrays and for Ray's read-only views)."""
    if a.dtype.kind in "iu" and a.dtype != np.int64:
        return torch.from_numpy(a.astype(np.int64))
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _index_dtype(n: int) -> type:
    """Int32 for positions below ``n`` when they fit: half the bytes of Int64."""
    return np.int32 if n < 2**31 else np.int64


def _batch_rng(seed: int, epoch: int, index: int) -> tuple[np.random.Generator, int]:
    """(numpy generator, torch seed) of one batch: a pure function of its coordinates."""
    ss = np.random.SeedSequence([seed, epoch, index, 0x5A3])
    return np.random.default_rng(ss), int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


class _EpochBatches:
    """Shared epoch logic: shuffled fixed-size batches over ``num_items`` items.

    Subclasses define ``batch_arrays(epoch, index) -> SampledArrays``, ``to_data(arrays)
    -> HeteroData`` and ``rebuild_kwargs()`` (constructor arguments except ``graph``: how
    Ray workers rebuild the same sampler).
    """

    num_items: int
    batch_size: int
    shuffle: bool
    drop_last: bool
    seed: int
    sampler: NeighborSampler
    batch_arrays: Callable[[int, int], SampledArrays]
    to_data: Callable[[SampledArrays], HeteroData]

    def _init_epochs(self) -> None:
        self.epoch = 0
        self._perm_epoch: int | None = None
        self._perm = np.empty(0, np.int64)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_items // self.batch_size
        return -(-self.num_items // self.batch_size)

    def _items(self, epoch: int, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise SamplerError(f"batch index {index} outside 0..{len(self) - 1}")
        if self._perm_epoch != epoch:
            # Int32 where it fits (half the bytes); shuffling arange(n) in place draws
            # the same permutation as ``permutation(n)``
            self._perm = np.arange(self.num_items, dtype=_index_dtype(self.num_items))
            if self.shuffle:
                np.random.default_rng([self.seed, epoch, 0xE9]).shuffle(self._perm)
            self._perm_epoch = epoch
        return self._perm[index * self.batch_size:(index + 1) * self.batch_size]

    def batch(self, epoch: int, index: int) -> HeteroData:
        """Batch ``index`` of ``epoch`` (the same wherever and whenever it is computed)."""
        return self.to_data(self.batch_arrays(epoch, index))

    def iter_epoch(self, epoch: int) -> Iterator[HeteroData]:
        for index in range(len(self)):
            yield self.batch(epoch, index)

    def __iter__(self) -> Iterator[HeteroData]:
        """The batches of the current epoch; the next ``iter()`` starts the next epoch."""
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self.iter_epoch(epoch)


class NodeBatchSampler(_EpochBatches):
    """Shuffled batches of seed nodes of one type with their sampled subgraphs.

    Args:
        graph, num_neighbors, replace: as :class:`NeighborSampler`.
        node_type: the seed type; input_nodes: Long[S] its seed ids (default: all nodes).
        batch_size: seeds per batch; shuffle / drop_last as ``DataLoader``; seed: base seed.
    """

    def __init__(self, graph: HeteroData | TrainView, node_type: str,
                 num_neighbors: NumNeighbors = (15, 10, 5), *, batch_size: int = 2048,
                 input_nodes: Tensor | np.ndarray | None = None, replace: bool = False,
                 shuffle: bool = True, drop_last: bool = False, seed: int = 0) -> None:
        self.sampler = NeighborSampler(graph, num_neighbors, replace, seed)
        if node_type not in self.sampler.graph.num_nodes:
            raise SamplerError(f"unknown node type {node_type!r}")
        self.node_type = node_type
        self.input_nodes = (np.arange(self.sampler.graph.num_nodes[node_type], dtype=np.int64)
                            if input_nodes is None else np.asarray(input_nodes, dtype=np.int64))
        self.num_items, self.batch_size = int(self.input_nodes.size), int(batch_size)
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self._init_epochs()

    def rebuild_kwargs(self) -> dict[str, Any]:
        return dict(node_type=self.node_type, num_neighbors=self.sampler.num_neighbors,
                    batch_size=self.batch_size, input_nodes=self.input_nodes,
                    replace=self.sampler.replace, shuffle=self.shuffle,
                    drop_last=self.drop_last, seed=self.seed)

    def batch_arrays(self, epoch: int, index: int) -> SampledArrays:
        seeds = self.input_nodes[self._items(epoch, index)]
        rng, _ = _batch_rng(self.seed, epoch, index)
        return self.sampler.sample_arrays({self.node_type: seeds}, rng)

    def to_data(self, arrays: SampledArrays) -> HeteroData:
        return self.sampler.to_data(arrays)


class LinkBatchSampler(_EpochBatches):
    """BPR batches: shuffled train (user, item) positives, negatives and their subgraph.

    Each batch of ``B`` positives gets ``num_negatives`` items per positive from
    :class:`gnnrec.gnn.negative.NegativeSampler` (never a train positive of the user); the
    seeds are the batch's users (type ``edge_type[0]``) and its positive and negative items.
    Like PyG's ``LinkNeighborLoader`` with triplet negatives, the batch carries
    ``data[src].src_index`` Long[B], ``data[dst].dst_pos_index`` Long[B],
    ``data[dst].dst_neg_index`` Long[B, num_negatives] (local indices) and
    ``data[edge_type].input_id`` Long[B] (the positives' columns in the graph's edge_index).
    The positive edges themselves stay in the message-passing graph (as in PyG).
    """

    def __init__(self, graph: HeteroData | TrainView, num_neighbors: NumNeighbors = (15, 10, 5),
                 *, batch_size: int = 2048, num_negatives: int = 1, replace: bool = False,
                 shuffle: bool = True, drop_last: bool = False, seed: int = 0,
                 edge_type: EdgeType = UI) -> None:
        self.sampler = NeighborSampler(graph, num_neighbors, replace, seed)
        g = self.sampler.graph
        if edge_type not in g.csr:
            raise SamplerError(f"graph has no edge type {edge_type}")
        self.edge_type = edge_type
        # the positives are the view's CSR entries (no copy: 0 bytes per interaction here);
        # an epoch visits them in a seeded random order of entry positions
        self.positives = c = g.csr[edge_type]
        if not c.has_eid:
            raise SamplerError(f"the view's {edge_type} CSR keeps no edge ids")
        self.num_negatives = int(num_negatives)
        self.negatives = NegativeSampler(torch.from_numpy(c.indices.astype(np.int64)),
                                         torch.from_numpy(c.rows()),
                                         g.num_nodes[edge_type[0]], g.num_nodes[edge_type[2]],
                                         seed=seed)
        self.num_items, self.batch_size = c.nnz, int(batch_size)
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self._init_epochs()

    def rebuild_kwargs(self) -> dict[str, Any]:
        return dict(num_neighbors=self.sampler.num_neighbors, batch_size=self.batch_size,
                    num_negatives=self.num_negatives, replace=self.sampler.replace,
                    shuffle=self.shuffle, drop_last=self.drop_last, seed=self.seed,
                    edge_type=self.edge_type)

    def batch_arrays(self, epoch: int, index: int) -> SampledArrays:
        idx = self._items(epoch, index)
        rng, torch_seed = _batch_rng(self.seed, epoch, index)
        c = self.positives
        users, eid, _ = c.take(idx, weights=False)  # one read of each (column, edge id) row
        pos = c.row_of(idx)
        self.negatives.generator.manual_seed(torch_seed)
        neg = self.negatives.sample(torch.from_numpy(users), self.num_negatives).numpy()
        src_t, _, dst_t = self.edge_type
        seeds = ({src_t: np.concatenate([users, pos, neg.ravel()])} if src_t == dst_t
                 else {src_t: users, dst_t: np.concatenate([pos, neg.ravel()])})
        a = self.sampler.sample_arrays(seeds, rng)
        b = idx.size
        local_dst = a.seed_local[dst_t][b if src_t == dst_t else 0:]
        a.meta = {"src_index": a.seed_local[src_t][:b], "dst_pos_index": local_dst[:b],
                  "dst_neg_index": local_dst[b:].reshape(b, self.num_negatives),
                  "input_id": eid}
        return a

    def to_data(self, arrays: SampledArrays) -> HeteroData:
        data = self.sampler.to_data(arrays)
        src_t, _, dst_t = self.edge_type
        m = {k: _tensor(v) for k, v in arrays.meta.items()}
        data[src_t].src_index = m["src_index"]
        data[dst_t].dst_pos_index = m["dst_pos_index"]
        data[dst_t].dst_neg_index = m["dst_neg_index"]
        data[self.edge_type].input_id = m["input_id"]
        return data


BatchSampler = NodeBatchSampler | LinkBatchSampler
