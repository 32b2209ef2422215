"""The graph format: a PyG ``HeteroData`` with id maps; its layout, names and validation.

Saving and loading the file is :mod:`gnnrec.gnn.graph_file`; the train-only view models
are trained on is :mod:`gnnrec.gnn.views`; the synthetic generator is
:mod:`gnnrec.gnn.generators`.

Layout (every node and edge type is always present; any edge type may be empty)::

    data['user'|'item'|'tag'].num_nodes     int
    data['user'|'item'|'tag'].ext_id        list[str], index -> external id (the id map)
    data['user'|'item'].x                   optional Float[N, F], with .feature_names list[str]
    data['user','interacts','item']         edge_index Long[2, E], weight Float[E], time Long[E]
                                            (unix seconds, 0 = unknown), optional split Long[E]
                                            (0 = train, 1 = valid, 2 = test)
    data['item','rev_interacts','user']     the same edges flipped, same order and attributes
    data['user','friend','user']            edge_index Long[2, 2F]: edges [0, F) and their
                                            mirrors [F, 2F); optional weight Float[2F]
    data['item','has_tag','tag']            edge_index, weight
    data['tag','rev_has_tag','item']        the same edges flipped
    data.tag_events                         optional Long[3, N]: who tagged what (user, item,
                                            tag index per tagging event), when the tags are
                                            user-generated and has_tag counts these events
    data.split_info                         dict (see ``gnnrec.gnn.split``), when split
    data.exported_at                        optional int: Neo4j's clock (epoch µs) when
                                            ``gnnrec export`` started (see graph/export.py)

On disk (:func:`gnnrec.gnn.graph_file.save_graph`): ``torch.save({"format":
"gnnrec.graph/1", "data": data.to_dict(), ...})``: plain dicts, tuples, lists, strings and
tensors only, so ``torch.load(path, weights_only=True)`` reads it without any gnnrec class.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from gnnrec.errors import GnnrecError

FORMAT = "gnnrec.graph/1"
# The node and edge type names, defined here only.
USER, ITEM, TAG = "user", "item", "tag"
NODE_TYPES = (USER, ITEM, TAG)
EdgeType = tuple[str, str, str]
UI = ("user", "interacts", "item")
IU = ("item", "rev_interacts", "user")
UU = ("user", "friend", "user")
IT = ("item", "has_tag", "tag")
TI = ("tag", "rev_has_tag", "item")
EDGE_TYPES = (UI, IU, UU, IT, TI)
TRAIN, VALID, TEST = 0, 1, 2  # the values of interacts.split
_REVERSE = {IU: UI, TI: IT}

ArrayLike = Tensor | np.ndarray | Sequence[int] | Sequence[float]


class GraphFormatError(GnnrecError, ValueError):
    """A graph file or in-memory graph that does not follow the ``gnnrec.graph/1`` layout."""


class IdMap:
    """External id <-> index for one node type (``ext_id`` list plus the reverse dict)."""

    def __init__(self, ext_ids: Sequence[str], node_type: str = "node") -> None:
        self.node_type = node_type
        self.ext_ids = list(ext_ids)
        self._index = {e: i for i, e in enumerate(self.ext_ids)}
        if len(self._index) != len(self.ext_ids):
            raise GraphFormatError(f"{node_type} ext_id has duplicate external ids")

    def __len__(self) -> int:
        return len(self.ext_ids)

    def __contains__(self, ext: object) -> bool:
        return ext in self._index

    def index(self, ext: str) -> int:
        """Index of one external id; ``KeyError`` when unknown."""
        return self._index[ext]

    def get(self, ext: str) -> int | None:
        return self._index.get(ext)


def id_map(data: HeteroData, node_type: str) -> IdMap:
    """The id map of ``node_type`` (built on each call: keep the result)."""
    return IdMap(data[node_type].ext_id, node_type)


def _long(x: ArrayLike, what: str) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.from_numpy(np.array(x))
    if t.is_floating_point() or t.dtype == torch.bool:
        raise GraphFormatError(f"{what}: expected integers, got {t.dtype}")
    return t.to(torch.long).contiguous()


def _float(x: ArrayLike, what: str) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.from_numpy(np.array(x, dtype=np.float32))
    return t.to(torch.float32).contiguous()


def build_graph(
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    ui_edge_index: ArrayLike,
    *,
    weight: ArrayLike | None = None,
    time: ArrayLike | None = None,
    split: ArrayLike | None = None,
    friend_edge_index: ArrayLike | None = None,
    friend_weight: ArrayLike | None = None,
    tag_ids: Sequence[str] = (),
    item_tag_edge_index: ArrayLike | None = None,
    item_tag_weight: ArrayLike | None = None,
    tag_events: ArrayLike | None = None,
    user_x: ArrayLike | None = None,
    user_feature_names: Sequence[str] | None = None,
    item_x: ArrayLike | None = None,
    item_feature_names: Sequence[str] | None = None,
) -> HeteroData:
    """Build a validated graph from index arrays (what the exporter and generators call).

    Args:
        user_ids, item_ids, tag_ids: external ids; position = node index.
        ui_edge_index: Long[2, E] (user index, item index); pairs must be unique.
        weight: Float[E] (default 1), time: Long[E] unix seconds (default 0 = unknown),
            split: Long[E] in {0, 1, 2} (default: no split).
        friend_edge_index: Long[2, F'] user pairs, either or both directions; stored once per
            unordered pair in both directions ([2, 2F]); self-links are an error.
        friend_weight: Float[F'] (first weight of a pair wins), item_tag_weight: Float[T].
        tag_events: Long[3, N] (user, item, tag) per tagging event, for user-generated tags.
        user_x, item_x: Float[N, F] node features with their ``*_feature_names``.
    """
    data = HeteroData()
    for nt, ids in (("user", user_ids), ("item", item_ids), ("tag", tag_ids)):
        data[nt].num_nodes = len(ids)
        data[nt].ext_id = [str(e) for e in ids]
    ei = _long(ui_edge_index, "ui_edge_index").reshape(2, -1)
    n = ei.size(1)
    data[UI].edge_index = ei
    data[UI].weight = _float(weight, "weight") if weight is not None else torch.ones(n)
    data[UI].time = _long(time, "time") if time is not None else torch.zeros(n, dtype=torch.long)
    if split is not None:
        data[UI].split = _long(split, "split")
    if friend_edge_index is None:
        data[UU].edge_index = torch.zeros(2, 0, dtype=torch.long)
    else:
        fe = _long(friend_edge_index, "friend_edge_index").reshape(2, -1)
        if (loops := (fe[0] == fe[1]).nonzero()).numel():
            k = int(loops[0])
            who = data["user"].ext_id[int(fe[0, k])]
            raise GraphFormatError(f"friend edge {k} links user {who} to itself")
        a, b = torch.minimum(fe[0], fe[1]), torch.maximum(fe[0], fe[1])
        keys = a * max(len(user_ids), 1) + b
        _, first = np.unique(keys.numpy(), return_index=True)
        first = torch.from_numpy(np.sort(first))
        a, b = a[first], b[first]
        data[UU].edge_index = torch.stack([torch.cat([a, b]), torch.cat([b, a])])
        if friend_weight is not None:
            fw = _float(friend_weight, "friend_weight")[first]
            data[UU].weight = torch.cat([fw, fw])
    te = (torch.zeros(2, 0, dtype=torch.long) if item_tag_edge_index is None
          else _long(item_tag_edge_index, "item_tag_edge_index").reshape(2, -1))
    data[IT].edge_index = te
    data[IT].weight = (_float(item_tag_weight, "item_tag_weight") if item_tag_weight is not None
                       else torch.ones(te.size(1)))
    if tag_events is not None:
        data.tag_events = _long(tag_events, "tag_events").reshape(3, -1)
    feats = (("user", user_x, user_feature_names), ("item", item_x, item_feature_names))
    for nt, x, names in feats:
        if x is not None:
            xt = _float(x, f"{nt} features")
            data[nt].x = xt
            data[nt].feature_names = (list(names) if names is not None
                                      else [f"f{j}" for j in range(xt.size(1))])
    return complete_graph(data)


def graph_from_frames(
    interactions: pd.DataFrame,
    *,
    friends: pd.DataFrame | None = None,
    item_tags: pd.DataFrame | None = None,
    tag_events: pd.DataFrame | None = None,
    user_features: pd.DataFrame | None = None,
    item_features: pd.DataFrame | None = None,
    users: Sequence[str] | None = None,
    items: Sequence[str] | None = None,
    duplicates: Literal["error", "sum", "last"] = "error",
) -> HeteroData:
    """Build a graph from DataFrames of external ids.

    Args:
        interactions: columns ``user``, ``item`` and optional ``weight``, ``time`` (unix s).
        friends: columns ``user``, ``friend`` and optional ``weight`` (undirected).
        item_tags: columns ``item``, ``tag`` and optional ``weight``.
        tag_events: columns ``user``, ``item``, ``tag``: who tagged what, when the tags are
            user-generated (``item_tags`` weights count these events); its users, items and
            tags must be named elsewhere too.
        user_features, item_features: numeric columns, indexed by external id.
        users, items: the full node lists (order = index); default: order of first
            appearance in interactions, then friends / tags / features.
        duplicates: a repeated (user, item) pair is an error, or merged (``sum``: weights
            added, latest time kept; ``last``: the last row wins).
    """
    for col in ("user", "item"):
        if col not in interactions:
            raise GraphFormatError(f"interactions: missing column {col!r}")
    df = interactions.reset_index(drop=True)
    bad = df[["user", "item"]].isna().any(axis=1)
    if bad.any():
        raise GraphFormatError(f"interactions row {int(bad.idxmax())}: missing user or item")
    df = df.assign(user=df["user"].astype(str), item=df["item"].astype(str))
    if "weight" not in df:
        df["weight"] = 1.0
    if "time" not in df:
        df["time"] = 0
    w = pd.to_numeric(df["weight"], errors="coerce")
    if (badw := ~np.isfinite(w.to_numpy(dtype=np.float64))).any():
        raise GraphFormatError(f"interactions row {int(np.argmax(badw))}: weight is not a number")
    df["weight"] = w.astype(np.float32)
    df["time"] = pd.to_numeric(df["time"], errors="coerce").fillna(0).astype(np.int64)
    dup = df.duplicated(["user", "item"], keep=False)
    if dup.any():
        if duplicates == "error":
            r = df[dup].iloc[0]
            raise GraphFormatError(
                f"interactions: user {r['user']} and item {r['item']} appear "
                f"{int(((df['user'] == r['user']) & (df['item'] == r['item'])).sum())} times; pass "
                "duplicates='sum' or 'last' to merge repeated pairs")
        if duplicates == "sum":
            df = df.groupby(["user", "item"], sort=False, as_index=False).agg(
                weight=("weight", "sum"), time=("time", "max"))
        else:
            df = df.drop_duplicates(["user", "item"], keep="last")

    def order(given: Sequence[str] | None, *cols: Any) -> list[str]:
        if given is not None:
            return [str(g) for g in given]
        parts = [pd.Series(c, dtype=object).astype(str) for c in cols if c is not None]
        return list(pd.unique(pd.concat(parts, ignore_index=True))) if parts else []

    f_cols = (friends["user"], friends["friend"]) if friends is not None else (None, None)
    user_ids = order(users, df["user"], *f_cols,
                     user_features.index if user_features is not None else None)
    item_ids = order(items, df["item"], item_tags["item"] if item_tags is not None else None,
                     item_features.index if item_features is not None else None)
    tag_ids = order(None, item_tags["tag"] if item_tags is not None else None)
    umap, imap = IdMap(user_ids, "user"), IdMap(item_ids, "item")
    tmap = IdMap(tag_ids, "tag")

    def idx(m: IdMap, values: pd.Series, what: str) -> np.ndarray:
        pos = pd.Index(m.ext_ids).get_indexer(values.astype(str))
        if (missing := pos < 0).any():
            raise GraphFormatError(f"{what} row {int(np.argmax(missing))}: unknown {m.node_type} "
                                   f"{values.iloc[int(np.argmax(missing))]!r}")
        return pos.astype(np.int64)

    kw: dict[str, Any] = {}
    if friends is not None and len(friends):
        kw["friend_edge_index"] = np.stack([idx(umap, friends["user"], "friends"),
                                            idx(umap, friends["friend"], "friends")])
        if "weight" in friends:
            kw["friend_weight"] = friends["weight"].to_numpy(np.float32)
    if item_tags is not None and len(item_tags):
        kw["item_tag_edge_index"] = np.stack([idx(imap, item_tags["item"], "item_tags"),
                                              idx(tmap, item_tags["tag"], "item_tags")])
        if "weight" in item_tags:
            kw["item_tag_weight"] = item_tags["weight"].to_numpy(np.float32)
    if tag_events is not None:
        kw["tag_events"] = np.stack([idx(umap, tag_events["user"], "tag_events"),
                                     idx(imap, tag_events["item"], "tag_events"),
                                     idx(tmap, tag_events["tag"], "tag_events")])
    for nt, feats, m in (("user", user_features, umap), ("item", item_features, imap)):
        if feats is not None:
            x = feats.reindex(pd.Index(m.ext_ids)).astype(np.float32)
            if x.isna().any().any():
                raise GraphFormatError(f"{nt}_features: missing values (or {nt}s without a row)")
            kw[f"{nt}_x"], kw[f"{nt}_feature_names"] = x.to_numpy(), [str(c) for c in x.columns]
    ui = np.stack([idx(umap, df["user"], "interactions"), idx(imap, df["item"], "interactions")])
    return build_graph(user_ids, item_ids, ui, weight=df["weight"].to_numpy(),
                       time=df["time"].to_numpy(), tag_ids=tag_ids, **kw)


def complete_graph(data: HeteroData) -> HeteroData:
    """Fill in what the layout allows to be implied, then :func:`validate_graph`.

    Adds empty ``tag`` nodes and empty friend / tag edge types when missing, default
    interaction ``weight`` (1) and ``time`` (0), and the reverse edge types by flipping.
    Works on a shallow copy; the input is not modified.
    """
    data = copy.copy(data)
    if "tag" not in data.node_types:
        data["tag"].num_nodes = 0
        data["tag"].ext_id = []
    for et in (UI, UU, IT):
        if et not in data.edge_types:
            data[et].edge_index = torch.zeros(2, 0, dtype=torch.long)
    n = data[UI].edge_index.size(1) if "edge_index" in data[UI] else 0
    if "weight" not in data[UI]:
        data[UI].weight = torch.ones(n)
    if "time" not in data[UI]:
        data[UI].time = torch.zeros(n, dtype=torch.long)
    if "weight" not in data[IT]:
        data[IT].weight = torch.ones(data[IT].edge_index.size(1))
    for rev, fwd in _REVERSE.items():
        if rev not in data.edge_types:
            for key, value in data[fwd].items():
                data[rev][key] = value.flip(0) if key == "edge_index" else value
    validate_graph(data)
    return data


def validate_graph(data: HeteroData) -> None:
    """Raise :class:`GraphFormatError` naming the first thing that breaks the layout."""
    for nt in NODE_TYPES:
        if nt not in data.node_types:
            raise GraphFormatError(f"missing node type {nt!r}")
        store = data[nt]
        if "ext_id" not in store:
            raise GraphFormatError(f"{nt}: missing ext_id (the index -> external id list)")
        if not isinstance(store.ext_id, list | tuple):
            raise GraphFormatError(f"{nt}.ext_id must be a list of str")
        if store.num_nodes != len(store.ext_id):
            raise GraphFormatError(
                f"{nt}: num_nodes {store.num_nodes} != {len(store.ext_id)} ext ids")
        if len(set(store.ext_id)) != len(store.ext_id):
            raise GraphFormatError(f"{nt}: ext_id has duplicate external ids")
        if "x" in store:
            if store.x.dim() != 2 or store.x.size(0) != store.num_nodes:
                raise GraphFormatError(f"{nt}.x must be [{store.num_nodes}, F]")
            if len(store.get("feature_names", [])) != store.x.size(1):
                raise GraphFormatError(
                    f"{nt}.feature_names must name the {store.x.size(1)} columns")
    for et in EDGE_TYPES:
        if et not in data.edge_types or "edge_index" not in data[et]:
            raise GraphFormatError(f"missing edge type {et}")
        ei = data[et].edge_index
        name = "__".join(et)
        if ei.dtype != torch.long or ei.dim() != 2 or ei.size(0) != 2:
            raise GraphFormatError(f"{name}.edge_index must be Long[2, E], got {ei.dtype} "
                                   f"{list(ei.shape)}")
        for row, nt in ((0, et[0]), (1, et[2])):
            if ei.numel() and (int(ei[row].min()) < 0 or int(ei[row].max()) >= data[nt].num_nodes):
                raise GraphFormatError(f"{name}.edge_index row {row} has ids outside "
                                       f"0..{data[nt].num_nodes - 1}")
        for key, value in data[et].items():
            if key != "edge_index" and isinstance(value, Tensor) and value.size(0) != ei.size(1):
                raise GraphFormatError(f"{name}.{key} has {value.size(0)} values for "
                                       f"{ei.size(1)} edges")
    ui = data[UI]
    if ui.time.dtype != torch.long or ui.weight.dtype != torch.float32:
        raise GraphFormatError("interacts: time must be Long (unix seconds), weight Float")
    if "split" in ui and ui.split.numel() and (int(ui.split.min()) < 0 or int(ui.split.max()) > 2):
        raise GraphFormatError("interacts.split values must be 0 (train), 1 (valid) or 2 (test)")
    keys = (ui.edge_index[0] * data["item"].num_nodes + ui.edge_index[1]).numpy()
    keys.sort()  # in place: one Int64 array per interaction, no more
    if keys.size > 1 and (keys[1:] == keys[:-1]).any():
        raise GraphFormatError("interacts: a (user, item) pair appears more than once")
    del keys
    for rev, fwd in _REVERSE.items():  # row by row: no flipped copy
        r, f = data[rev].edge_index, data[fwd].edge_index
        if r.shape != f.shape or not (torch.equal(r[0], f[1]) and torch.equal(r[1], f[0])):
            raise GraphFormatError(f"{rev} must be {fwd} flipped, in the same order")
    if "tag_events" in data:
        ev = data.tag_events
        if ev.dtype != torch.long or ev.dim() != 2 or ev.size(0) != 3:
            raise GraphFormatError(f"tag_events must be Long[3, N] (user, item, tag), got "
                                   f"{ev.dtype} {list(ev.shape)}")
        for row, nt in enumerate(NODE_TYPES):
            if ev.numel() and (int(ev[row].min()) < 0 or int(ev[row].max()) >= data[nt].num_nodes):
                raise GraphFormatError(f"tag_events row {row} has {nt} ids outside "
                                       f"0..{data[nt].num_nodes - 1}")
    fe, half = data[UU].edge_index, data[UU].edge_index.size(1) // 2
    if fe.size(1) % 2 or not (torch.equal(fe[0, half:], fe[1, :half])
                              and torch.equal(fe[1, half:], fe[0, :half])):
        raise GraphFormatError("friend edges must be [pairs, mirrored pairs] (both directions)")


def fingerprint(data: HeteroData) -> str:
    """sha256 over node counts and every edge tensor (edge_index, weight, time, split)."""
    h = hashlib.sha256()
    for nt in sorted(data.node_types):
        h.update(f"{nt}:{int(data[nt].num_nodes)};".encode())
    for et in sorted(data.edge_types):
        h.update(("__".join(et) + ";").encode())
        for key in ("edge_index", "weight", "time", "split"):
            if key in data[et]:
                h.update(key.encode())
                h.update(data[et][key].detach().cpu().contiguous().numpy().tobytes())
    if "tag_events" in data:
        h.update(b"tag_events;" + data.tag_events.contiguous().numpy().tobytes())
    return h.hexdigest()


def has_split(data: HeteroData) -> bool:
    return "split" in data[UI]

