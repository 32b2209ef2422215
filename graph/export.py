"""Export the Neo4j graph to a PyG ``HeteroData`` (one streaming pass per type).

Nodes come first, one query per label returning column lists (internal id,
external id); relationships are then read in pages of start nodes looked up by
internal id (``WHERE id(n) IN $ids`` is an id seek, so no ``SKIP`` and no rescans),
each page answered as one record of parallel lists that numpy maps to indices with
``searchsorted``, so there is no per-relationship Python object.

Result (see ``gnn/data.py`` for the file format)::

    data['user'|'item'|'tag'].num_nodes, .ext_id (index -> external id)
    data['user'|'item'].x, .feature_names      numeric / low-cardinality attributes
    ('user','interacts','item')  edge_index [2,E], weight [E], time [E] (0 = unknown)
    ('item','rev_interacts','user'), ('user','friend','user') (both directions),
    ('item','has_tag','tag') with weight, ('tag','rev_has_tag','item')
    data.tag_events  Long[3, N] (user, item, tag) per TAGGED relationship, when there are any
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData
from tqdm import tqdm

from gnnrec.errors import GnnrecError
from gnnrec.graph.client import GraphClient

# Node properties that are not attributes: the id itself and what write-back stores.
_SKIP_PROPERTIES = ("id", "name")
_WRITEBACK_PREFIX = "gnnrec_"
_MAX_CATEGORIES = 32

_NODES = "MATCH (n:$($label)) RETURN collect(id(n)) AS nid, collect(n[$key]) AS ext"
_NODE_KEYS = "MATCH (n:$($label)) UNWIND keys(n) AS k RETURN DISTINCT k"
# collect() drops nulls, so only nodes that have the property are read (both lists align).
_NODE_COLUMN = ("MATCH (n:$($label)) WHERE n[$key] IS NOT NULL "
                "RETURN collect(id(n)) AS nid, collect(n[$key]) AS v")
_RELS = {
    "INTERACTED": (
        "User",
        "MATCH (s:User)-[r:INTERACTED]->(d:Item) WHERE id(s) IN $ids "
        "RETURN collect(id(s)) AS s, collect(id(d)) AS d, "
        "collect(coalesce(r.weight, 1.0)) AS w, collect(coalesce(r.ts, 0)) AS t",
    ),
    "FRIEND": (
        "User",
        "MATCH (s:User)-[r:FRIEND]->(d:User) WHERE id(s) IN $ids "
        "RETURN collect(id(s)) AS s, collect(id(d)) AS d, "
        "collect(coalesce(r.weight, 1.0)) AS w, collect(0) AS t",
    ),
    "HAS_TAG": (
        "Item",
        "MATCH (s:Item)-[r:HAS_TAG]->(d:Tag) WHERE id(s) IN $ids "
        "RETURN collect(id(s)) AS s, collect(id(d)) AS d, "
        "collect(coalesce(r.weight, 1.0)) AS w, collect(0) AS t",
    ),
    "TAGGED": (
        "User",
        "MATCH (s:User)-[r:TAGGED]->(d:Item) WHERE id(s) IN $ids MATCH (g:Tag {name: r.tag}) "
        "RETURN collect(id(s)) AS s, collect(id(d)) AS d, collect(1.0) AS w, "
        "collect(id(g)) AS t",
    ),
}
_COUNT_RELS = "MATCH ()-[r:$($type)]->() RETURN count(r) AS n"


def _read_nodes(client: GraphClient, label: str, key: str) -> tuple[np.ndarray, list[str]]:
    """Internal ids (sorted) and external ids of every node with ``label``."""
    nid_list, ext_list = client.read_values(_NODES, {"label": label, "key": key})[0]
    nid = np.asarray(nid_list, dtype=np.int64)
    ext = [str(x) for x in ext_list]
    order = np.argsort(nid, kind="stable")
    return nid[order], [ext[i] for i in order]


def _to_index(sorted_nid: np.ndarray, nid: np.ndarray, what: str) -> np.ndarray:
    pos = np.searchsorted(sorted_nid, nid)
    pos = np.clip(pos, 0, max(len(sorted_nid) - 1, 0))
    if len(nid) and (len(sorted_nid) == 0 or not np.array_equal(sorted_nid[pos], nid)):
        raise GnnrecError(f"export: {what} points at a node missing from the node pass")
    return pos


def _read_rels(
    client: GraphClient,
    rel_type: str,
    src_nid: np.ndarray,
    page_size: int,
    bar: tqdm,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All ``rel_type`` relationships as (src nid, dst nid, weight, time) arrays."""
    _, cypher = _RELS[rel_type]
    total = client.read(_COUNT_RELS, {"type": rel_type})[0]["n"]
    # Pages of start nodes sized so that one page holds about `page_size` relationships.
    per_node = max(total / max(len(src_nid), 1), 1e-9)
    nodes_per_page = int(max(1, min(len(src_nid), page_size / per_node)))
    parts: list[tuple[Any, ...]] = []
    for lo in range(0, len(src_nid), nodes_per_page):
        ids = src_nid[lo : lo + nodes_per_page].tolist()
        part = client.read_values(cypher, {"ids": ids})[0]  # [s, d, w, t] column lists
        parts.append(tuple(part))
        bar.update(len(part[0]))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32), empty
    s = np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts])
    d = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts])
    w = np.concatenate([np.asarray(p[2], dtype=np.float64) for p in parts]).astype(np.float32)
    t = np.concatenate([np.asarray(p[3], dtype=np.int64) for p in parts])
    if len(s) != total:
        raise GnnrecError(
            f"export: read {len(s)} {rel_type} relationships but Neo4j counts {total}; "
            "was the graph written to during the export?"
        )
    return s, d, w, t


def attributes_to_features(
    columns: dict[str, list[Any]],
) -> tuple[torch.Tensor, list[str]] | None:
    """Numeric properties (z-scored, missing -> 0) and categorical text (one-hot).

    ``columns`` maps a property name to its values in node order (None = missing).
    Text counts as categorical when it has 2..32 levels and each level repeats on
    average (levels <= nodes / 2), so titles and names are not one-hot encoded.
    Returns ``(x [N, F], feature_names)`` or ``None`` when no usable attribute exists.
    """
    frame = pd.DataFrame(columns)
    features: list[np.ndarray] = []
    names: list[str] = []
    for col in frame.columns:
        values = frame[col]
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().sum() == values.notna().sum() and values.notna().any():
            arr = numeric.to_numpy(dtype=np.float64)
            mean, std = np.nanmean(arr), np.nanstd(arr)
            features.append(np.nan_to_num((arr - mean) / (std if std > 0 else 1.0)))
            names.append(str(col))
        elif values.map(lambda v: v is None or isinstance(v, str)).all():
            levels = sorted(values.dropna().unique())
            if 1 < len(levels) <= min(_MAX_CATEGORIES, len(values) // 2):
                for level in levels:
                    features.append((values == level).to_numpy(dtype=np.float64))
                    names.append(f"{col}={level}")
    if not features:
        return None
    return torch.tensor(np.stack(features, axis=1), dtype=torch.float32), names


def _features(client: GraphClient, label: str, sorted_nid: np.ndarray) -> Any:
    """Attribute columns of ``label``, read one property at a time as lists."""
    keys = [r["k"] for r in client.read(_NODE_KEYS, {"label": label})]
    keys = sorted(k for k in keys
                  if k not in _SKIP_PROPERTIES and not k.startswith(_WRITEBACK_PREFIX))
    columns: dict[str, list[Any]] = {}
    for key in keys:
        nid, column = client.read_values(_NODE_COLUMN, {"label": label, "key": key})[0]
        order = _to_index(sorted_nid, np.asarray(nid, dtype=np.int64), f"{label}.{key}")
        values: list[Any] = [None] * len(sorted_nid)
        for pos, value in zip(order.tolist(), column, strict=True):
            values[pos] = value
        columns[key] = values
    return attributes_to_features(columns) if columns else None


def export_hetero(client: GraphClient, page_size: int = 50_000) -> tuple[HeteroData, dict]:
    """Read the whole graph into a ``HeteroData``; returns (data, summary counts/timing)."""
    start = time.perf_counter()
    user_nid, user_ext = _read_nodes(client, "User", "id")
    item_nid, item_ext = _read_nodes(client, "Item", "id")
    tag_nid, tag_ext = _read_nodes(client, "Tag", "name")
    if not user_ext or not item_ext:
        raise GnnrecError(
            f"export: the graph has {len(user_ext)} users and {len(item_ext)} items; "
            "ingest interactions first (gnnrec ingest ...)"
        )
    data = HeteroData()
    for name, ext, nid in (("user", user_ext, user_nid), ("item", item_ext, item_nid),
                           ("tag", tag_ext, tag_nid)):
        data[name].num_nodes = len(ext)
        data[name].ext_id = ext
        if name != "tag" and (feats := _features(client, name.capitalize(), nid)) is not None:
            data[name].x, data[name].feature_names = feats
    # relationship type -> (edge type, reverse edge type, start nids, end nids)
    specs = {
        "INTERACTED": (("user", "interacts", "item"), ("item", "rev_interacts", "user"),
                       user_nid, item_nid),
        "FRIEND": (("user", "friend", "user"), None, user_nid, user_nid),
        "HAS_TAG": (("item", "has_tag", "tag"), ("tag", "rev_has_tag", "item"),
                    item_nid, tag_nid),
    }
    counts: dict[str, int] = {}
    with tqdm(desc="export relationships", unit="rel", unit_scale=True) as bar:
        for rel_type, (edge_type, reverse_type, src_nid, dst_nid) in specs.items():
            s, d, w, t = _read_rels(client, rel_type, src_nid, page_size, bar)
            si = torch.from_numpy(_to_index(src_nid, s, f"{rel_type} start"))
            di = torch.from_numpy(_to_index(dst_nid, d, f"{rel_type} end"))
            counts[rel_type] = len(s)
            weight, when = torch.from_numpy(w), torch.from_numpy(t)
            if reverse_type is None:  # FRIEND: one stored relationship, both directions
                data[edge_type].edge_index = torch.cat([torch.stack([si, di]),
                                                        torch.stack([di, si])], dim=1)
                data[edge_type].weight = torch.cat([weight, weight])
                continue
            data[edge_type].edge_index = torch.stack([si, di])
            data[reverse_type].edge_index = torch.stack([di, si])
            for store in (data[edge_type], data[reverse_type]):
                store.weight = weight
                if rel_type == "INTERACTED":
                    store.time = when
        # TAGGED: who tagged what (the tag node's id comes in the time column)
        s, d, _, t = _read_rels(client, "TAGGED", user_nid, page_size, bar)
        counts["TAGGED"] = len(s)
        if len(s):
            data.tag_events = torch.from_numpy(np.stack([
                _to_index(user_nid, s, "TAGGED start"), _to_index(item_nid, d, "TAGGED end"),
                _to_index(tag_nid, t, "TAGGED tag")]))
    if counts["INTERACTED"] == 0:
        raise GnnrecError("export: the graph has no INTERACTED relationships to train on")
    seconds = time.perf_counter() - start
    relationships = sum(counts.values())
    summary = {
        "users": len(user_ext), "items": len(item_ext), "tags": len(tag_ext),
        "interactions": counts["INTERACTED"], "friendships": counts["FRIEND"],
        "item_tags": counts["HAS_TAG"], "taggings": counts["TAGGED"], "seconds": round(seconds, 3),
        "rels_per_second": round(relationships / max(seconds, 1e-9)),
    }
    return data, summary


_NAIVE_NODES = {
    "user": "MATCH (n:User) RETURN n.id AS id",
    "item": "MATCH (n:Item) RETURN n.id AS id",
    "tag": "MATCH (n:Tag) RETURN n.name AS id",
}
_NAIVE = {
    "INTERACTED": ("MATCH (s:User)-[r:INTERACTED]->(d:Item) "
                   "RETURN s.id AS s, d.id AS d, r.weight AS w, r.ts AS t", "user", "item"),
    "FRIEND": ("MATCH (s:User)-[r:FRIEND]->(d:User) RETURN s.id AS s, d.id AS d", "user", "user"),
    "HAS_TAG": ("MATCH (s:Item)-[r:HAS_TAG]->(d:Tag) RETURN s.id AS s, d.name AS d, "
                "r.weight AS w", "item", "tag"),
}


def naive_export(client: GraphClient) -> dict[str, torch.Tensor]:
    """Edge indices the obvious way: ``.data()`` row dicts and Python dict id maps.

    The baseline of ``experiments/export_bench.py``; not used by the product.
    """
    maps: dict[str, dict[str, int]] = {}
    for name, cypher in _NAIVE_NODES.items():
        with client.session() as session:
            rows = session.run(cypher).data()
        maps[name] = {r["id"]: i for i, r in enumerate(rows)}
    out = {}
    for rel, (cypher, src, dst) in _NAIVE.items():
        with client.session() as session:
            rows = session.run(cypher).data()
        out[rel] = torch.tensor([[maps[src][r["s"]] for r in rows],
                                 [maps[dst][r["d"]] for r in rows]], dtype=torch.long)
    return out
