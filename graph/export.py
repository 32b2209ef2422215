"""Export the Neo4j graph to a PyG ``HeteroData`` (one streaming pass per type).

Nodes come first, one query per label returning column lists (internal id,
external id); relationships are then read in pages of start nodes looked up by
internal id (``WHERE id(n) IN $ids`` is an id seek, so no ``SKIP`` and no rescans),
two pages at a time, each page answered as one record of parallel lists that numpy maps
to indices with ``searchsorted``, so there is no per-relationship Python object. A type
with no relationship is not paged at all.

Result (see ``gnn/data.py`` for the file format)::

    data['user'|'item'|'tag'].num_nodes, .ext_id (index -> external id)
    data['user'|'item'].x, .feature_names      numeric / low-cardinality attributes
    ('user','interacts','item')  edge_index [2,E], weight [E], time [E] (0 = unknown)
    ('item','rev_interacts','user'), ('user','friend','user') (both directions),
    ('item','has_tag','tag') with weight, ('tag','rev_has_tag','item')
    data.tag_events  Long[3, N] (user, item, tag) per TAGGED relationship, when there are any
    data.exported_at int: Neo4j's clock (epoch µs) when the export started; serving replays
                     the online feedback received after it (gnnrec.serve.service)

The graph may hold any property pattern (it need not come from ``gnnrec ingest``): node
properties become features where they can (``gnnrec.graph.features``), relationship
weights and times are typed in Cypher with defaults for unusable values, nodes without
an id are skipped with their relationships, and the summary names all of it
(``skipped_properties``, ``defaulted_properties``, ``skipped_nodes``,
``skipped_relationships``).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import HeteroData
from tqdm import tqdm

from gnnrec.errors import GnnrecError
from gnnrec.graph.client import GraphClient
from gnnrec.graph.features import attributes_to_features, node_features
from gnnrec.graph.forgotten import forgotten_ids
from gnnrec.graph.serving import neo4j_clock_us

__all__ = ["attributes_to_features", "export_hetero", "naive_export"]

# Node properties that are not attributes: the id itself, when online feedback created the
# user (gnnrec.graph.serving) and what write-back stores.
_SKIP_PROPERTIES = ("id", "name", "received")
_WRITEBACK_PREFIX = "gnnrec_"

# Nodes without their key (User.id, Item.id, Tag.name) cannot be named in an id map:
# they are skipped (with their relationships) and counted. Both collect()s skip the
# rows whose key is null (collect drops nulls), so nid and ext align.
_NODES = ("MATCH (n:$($label)) WITH id(n) AS nid, n[$key] AS ext "
          "RETURN collect(CASE WHEN ext IS NOT NULL THEN nid END) AS nid, collect(ext) AS ext, "
          "collect(CASE WHEN ext IS NULL THEN nid END) AS keyless")
_NODE_KEYS = "MATCH (n:$($label)) UNWIND keys(n) AS k RETURN DISTINCT k"
# collect() drops nulls, so only nodes that have the property are read (both lists align).
_NODE_COLUMN = ("MATCH (n:$($label)) WHERE n[$key] IS NOT NULL AND n[$id] IS NOT NULL "
                "RETURN collect(id(n)) AS nid, collect(n[$key]) AS v")

# Relationship properties are typed in Cypher, so the page stays column lists of one
# type each: a weight is any finite integer or float (else 1.0); a time is unix seconds
# from an integer, a float (fraction dropped), a datetime (no zone: UTC) or a date
# (midnight UTC), else 0 (= unknown). Unusable values come back as a sentinel (NaN, or
# _NO_TIME) and are counted; the count(...) columns say how many had the property.
_NO_TIME = -(2**63)
_WEIGHT = ("CASE WHEN r.weight IS :: INTEGER NOT NULL | FLOAT NOT NULL "
           "THEN toFloat(r.weight) ELSE $nan END")
_TIME = ("CASE WHEN r.ts IS :: INTEGER NOT NULL THEN r.ts "
         "WHEN r.ts IS :: FLOAT NOT NULL AND abs(r.ts) < 9.0e18 THEN toInteger(r.ts) "
         "WHEN r.ts IS :: ZONED DATETIME NOT NULL THEN r.ts.epochSeconds "
         "WHEN r.ts IS :: LOCAL DATETIME NOT NULL "
         "THEN datetime({datetime: r.ts, timezone: 'UTC'}).epochSeconds "
         "WHEN r.ts IS :: DATE NOT NULL THEN datetime({date: r.ts, timezone: 'UTC'}).epochSeconds "
         "ELSE $no_time END")
_PAGE = ("MATCH (s:{src})-[r:{rel}]->(d:{dst}) WHERE id(s) IN $ids "
         "RETURN collect(id(s)) AS s, collect(id(d)) AS d, collect({w}) AS w, collect({t}) AS t, "
         "count(r.weight) AS has_w, count(r.ts) AS has_t")
# relationship type -> (start label, page query, the typed properties it reads)
_RELS = {
    "INTERACTED": ("User", _PAGE.format(src="User", rel="INTERACTED", dst="Item",
                                        w=_WEIGHT, t=_TIME), ("weight", "ts")),
    "FRIEND": ("User", _PAGE.format(src="User", rel="FRIEND", dst="User", w=_WEIGHT, t="0"),
               ("weight",)),
    "HAS_TAG": ("Item", _PAGE.format(src="Item", rel="HAS_TAG", dst="Tag", w=_WEIGHT, t="0"),
                ("weight",)),
    # who tagged what; the tag node's id comes in the time column (_NO_TIME: no such tag)
    "TAGGED": ("User", "MATCH (s:User)-[r:TAGGED]->(d:Item) WHERE id(s) IN $ids "
                       "OPTIONAL MATCH (g:Tag {name: r.tag}) "
                       "RETURN collect(id(s)) AS s, collect(id(d)) AS d, collect(1.0) AS w, "
                       "collect(coalesce(id(g), $no_time)) AS t, count(r.weight) AS has_w, "
                       "count(r.ts) AS has_t", ()),
}
_COUNT_RELS = "MATCH ()-[r:$($type)]->() RETURN count(r) AS n"
# Pages read at the same time (one session each): the server computes one page while the
# driver and numpy decode another: on the 10M synthetic graph (2 cores) the export's
# reading took 28-32 s with 2 readers against 38-41 s with 1.
_READERS = 2
# Only run when some values were unusable: which types they had.
_REL_VALUE_TYPES = ("MATCH ()-[r:$($type)]->() WHERE r[$key] IS NOT NULL "
                    "RETURN valueType(r[$key]) AS type, count(*) AS n")
_USABLE_TYPES = {"weight": ("INTEGER", "FLOAT"),
                 "ts": ("INTEGER", "FLOAT", "ZONED DATETIME", "LOCAL DATETIME", "DATE")}
_DEFAULTS = {"weight": 1.0, "ts": 0}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class _Report:
    """What the export could not use as it was, for the summary."""

    skipped_nodes: list[dict[str, Any]] = field(default_factory=list)
    skipped_properties: list[dict[str, Any]] = field(default_factory=list)
    skipped_relationships: list[dict[str, Any]] = field(default_factory=list)
    defaulted_properties: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[dict[str, Any]]]:
        return {"skipped_properties": self.skipped_properties,
                "defaulted_properties": self.defaulted_properties,
                "skipped_nodes": self.skipped_nodes,
                "skipped_relationships": self.skipped_relationships}


@dataclass
class _Nodes:
    nid: np.ndarray  # sorted internal ids of the exported nodes
    ext: list[str]  # their external ids, in the same order
    keyless: np.ndarray  # sorted internal ids of the nodes skipped for lack of a key
    # sorted internal ids of the users skipped because a forget tombstone names them
    forgotten: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def skipped(self) -> np.ndarray:
        return np.concatenate([self.keyless, self.forgotten])


_FORGOTTEN_REASON = "a forget tombstone names it (gnnrec forget): never exported"


def _read_nodes(client: GraphClient, label: str, key: str, report: _Report) -> _Nodes:
    """Every node with ``label`` that has ``key`` (sorted by internal id)."""
    nid_list, ext_list, keyless = client.read_values(_NODES, {"label": label, "key": key})[0]
    nid = np.asarray(nid_list, dtype=np.int64)
    ext = [str(x) for x in ext_list]
    order = np.argsort(nid, kind="stable")
    ext = [ext[i] for i in order]
    if len(set(ext)) != len(ext):
        seen: set[str] = set()
        dupes = sorted({x for x in ext if x in seen or seen.add(x)})  # type: ignore[func-returns-value]
        raise GnnrecError(
            f"export: {len(dupes)} {label}.{key} value(s) name more than one node as text "
            f"(e.g. {dupes[0]!r}: an integer and a string, or no uniqueness constraint); "
            f"find them with: MATCH (n:{label}) WITH toString(n.{key}) AS k, count(*) AS c "
            "WHERE c > 1 RETURN k, c")
    if keyless:
        report.skipped_nodes.append({"label": label, "count": len(keyless),
                                     "reason": f"no {key} property"})
    return _Nodes(nid[order], ext, np.sort(np.asarray(keyless, dtype=np.int64)))


def _without_forgotten(client: GraphClient, users: _Nodes, key_file: Path | None,
                       report: _Report) -> _Nodes:
    """``users`` less those a forget tombstone names (they and their relationships are
    skipped, as keyless nodes are)."""
    gone = forgotten_ids(client, users.ext, key_file)
    if not gone:
        return users
    keep = np.array([u not in gone for u in users.ext], dtype=bool)
    report.skipped_nodes.append({"label": "User", "count": int((~keep).sum()),
                                 "reason": _FORGOTTEN_REASON})
    return _Nodes(users.nid[keep], [u for u, k in zip(users.ext, keep, strict=True) if k],
                  users.keyless, np.sort(users.nid[~keep]))


def _to_index(sorted_nid: np.ndarray, nid: np.ndarray, what: str) -> np.ndarray:
    pos = np.searchsorted(sorted_nid, nid)
    pos = np.clip(pos, 0, max(len(sorted_nid) - 1, 0))
    if len(nid) and (len(sorted_nid) == 0 or not np.array_equal(sorted_nid[pos], nid)):
        raise GnnrecError(f"export: {what} points at a node missing from the node pass")
    return pos


def _read_rels(
    client: GraphClient,
    rel_type: str,
    src: _Nodes,
    page_size: int,
    bar: tqdm,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """``rel_type`` relationships as (src nid, dst nid, weight, time) arrays, unusable
    values as sentinels, and how many relationships had each property. Pages go over
    every start node, keyless ones too (their relationships are dropped afterwards)."""
    skipped = src.skipped()
    src_nid = np.concatenate([src.nid, skipped]) if len(skipped) else src.nid
    _, cypher, _ = _RELS[rel_type]
    total = client.read(_COUNT_RELS, {"type": rel_type})[0]["n"]
    # Pages of start nodes sized so that one page holds about `page_size` relationships.
    per_node = max(total / max(len(src_nid), 1), 1e-9)
    nodes_per_page = int(max(1, min(len(src_nid), page_size / per_node)))

    def page(lo: int) -> tuple[Any, ...]:  # [s, d, w, t, has_w, has_t]
        return tuple(client.read_values(cypher, {
            "nan": float("nan"), "no_time": _NO_TIME,
            "ids": src_nid[lo : lo + nodes_per_page].tolist()})[0])

    parts: list[tuple[Any, ...]] = []
    if total:  # pages in order, _READERS at a time: the server works while numpy decodes
        with ThreadPoolExecutor(_READERS, thread_name_prefix="export") as pool:
            for part in pool.map(page, range(0, len(src_nid), nodes_per_page)):
                parts.append(part)
                bar.update(len(part[0]))
    has = {"weight": sum(p[4] for p in parts), "ts": sum(p[5] for p in parts)}
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float64), empty, has
    s = np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts])
    d = np.concatenate([np.asarray(p[1], dtype=np.int64) for p in parts])
    w = np.concatenate([np.asarray(p[2], dtype=np.float64) for p in parts])
    t = np.concatenate([np.asarray(p[3], dtype=np.int64) for p in parts])
    if len(s) != total:
        raise GnnrecError(
            f"export: read {len(s)} {rel_type} relationships but Neo4j counts {total}; "
            "was the graph written to during the export?"
        )
    return s, d, w, t, has


def _default_values(client: GraphClient, rel_type: str, prop: str, bad: np.ndarray,
                    has: int, report: _Report) -> None:
    """Count the unusable ``prop`` values (``bad``) in the summary, by reason.

    Missing values are listed only when some relationships of the type have the
    property (a FRIEND without weight, LastFM's plays without time are the norm).
    """
    total, value = len(bad), _DEFAULTS[prop]
    missing, unusable = total - has, int(bad.sum()) - (total - has)
    entries: list[tuple[int, str]] = []
    if 0 < missing < total:
        entries.append((missing, "missing"))
    if unusable:
        rows = client.read(_REL_VALUE_TYPES, {"type": rel_type, "key": prop})
        wrong = {r["type"].removesuffix(" NOT NULL"): r["n"] for r in rows}
        wrong = {k: n for k, n in wrong.items() if k not in _USABLE_TYPES[prop]}
        what = "a number" if prop == "weight" else "a time"
        entries += [(n, f"not {what}: {k}") for k, n in sorted(wrong.items())]
        if unusable > sum(wrong.values()):
            entries.append((unusable - sum(wrong.values()),
                            "not a finite number (NaN, infinity or out of range)"))
    report.defaulted_properties += [{"relationship": rel_type, "property": prop, "count": n,
                                     "value": value, "reason": why} for n, why in entries]


def _typed(client: GraphClient, rel_type: str, w: np.ndarray, t: np.ndarray,
           has: dict[str, int], report: _Report) -> tuple[np.ndarray, np.ndarray]:
    """Weights (float32) and times with the unusable values replaced by the defaults."""
    props = _RELS[rel_type][2]
    bad_w = ~np.isfinite(w) | (np.abs(w) > _FLOAT32_MAX)
    bad_t = t == _NO_TIME
    for prop, bad in (("weight", bad_w), ("ts", bad_t)):
        if prop in props and bad.any():
            _default_values(client, rel_type, prop, bad, has[prop], report)
    w = np.where(bad_w, _DEFAULTS["weight"], w).astype(np.float32)
    return w, np.where(bad_t, _DEFAULTS["ts"], t)


def _without_keyless(rel_type: str, ends: tuple[_Nodes, ...], columns: list[np.ndarray],
                     report: _Report) -> list[np.ndarray]:
    """Drop the relationships whose start or end node was skipped for lack of a key, or
    is a forgotten user (``columns`` starts with the start and end nids)."""
    keep = np.ones(len(columns[0]), dtype=bool)
    for attr, reason in (("keyless", "its start or end node has no id (the node is skipped)"),
                         ("forgotten", "its user was forgotten (" + _FORGOTTEN_REASON + ")")):
        drop = np.zeros(len(columns[0]), dtype=bool)
        for nodes, nid in zip(ends, columns[:2], strict=True):
            if len(getattr(nodes, attr)):
                drop |= np.isin(nid, getattr(nodes, attr))
        drop &= keep
        if drop.any():
            report.skipped_relationships.append({
                "relationship": rel_type, "count": int(drop.sum()), "reason": reason})
            keep &= ~drop
    if keep.all():
        return columns
    return [c[keep] for c in columns]


def _features(client: GraphClient, label: str, nodes: _Nodes, key: str,
              report: _Report) -> tuple[torch.Tensor, list[str]] | None:
    """Attribute columns of ``label``, read one property at a time as lists."""
    keys = [r["k"] for r in client.read(_NODE_KEYS, {"label": label})]
    keys = sorted(k for k in keys
                  if k not in _SKIP_PROPERTIES and not k.startswith(_WRITEBACK_PREFIX))
    columns: dict[str, list[Any]] = {}
    for prop in keys:
        nid, column = client.read_values(_NODE_COLUMN,
                                         {"label": label, "key": prop, "id": key})[0]
        nid = np.asarray(nid, dtype=np.int64)
        if len(nodes.forgotten):
            kept = ~np.isin(nid, nodes.forgotten)
            nid, column = nid[kept], [v for v, k in zip(column, kept, strict=True) if k]
        if not len(nid):  # only keyless (or forgotten) nodes have it
            continue
        order = _to_index(nodes.nid, nid, f"{label}.{prop}")
        values: list[Any] = [None] * len(nodes.nid)
        for pos, value in zip(order.tolist(), column, strict=True):
            values[pos] = value
        columns[prop] = values
    feats, skipped = node_features(columns, len(nodes.nid))
    report.skipped_properties += [{"label": label, "property": prop, "reason": reason}
                                  for prop, reason in skipped]
    return feats


def export_hetero(client: GraphClient, page_size: int = 50_000,
                  progress: bool = True, key_file: Path | None = None,
                  ) -> tuple[HeteroData, dict]:
    """Read the whole graph into a ``HeteroData``; returns (data, summary).

    The summary holds counts and timing, and names what could not be used as it was:
    ``skipped_properties`` (node properties that are not features, with the reason),
    ``defaulted_properties`` (relationship weights and times replaced by 1.0 / 0),
    ``skipped_nodes`` (nodes without an id, users a forget tombstone names: matched with
    the key of ``key_file``, :mod:`gnnrec.graph.forgotten`) and ``skipped_relationships``
    (theirs, and taggings naming no tag).
    """
    start = time.perf_counter()
    exported_at = neo4j_clock_us(client)  # feedback received from now on is not in it
    report = _Report()
    keys = {"user": "id", "item": "id", "tag": "name"}
    nodes = {name: _read_nodes(client, name.capitalize(), key, report)
             for name, key in keys.items()}
    nodes["user"] = _without_forgotten(client, nodes["user"], key_file, report)
    users, items, tags = nodes["user"], nodes["item"], nodes["tag"]
    if not users.ext or not items.ext:
        raise GnnrecError(
            f"export: the graph has {len(users.ext)} users and {len(items.ext)} items; "
            "ingest interactions first (gnnrec ingest ...)"
        )
    data = HeteroData()
    data.exported_at = exported_at
    for name, node in nodes.items():
        data[name].num_nodes = len(node.ext)
        data[name].ext_id = node.ext
        if name != "tag" and (feats := _features(client, name.capitalize(), node,
                                                  keys[name], report)) is not None:
            data[name].x, data[name].feature_names = feats
    # relationship type -> (edge type, reverse edge type, start nodes, end nodes)
    specs = {
        "INTERACTED": (("user", "interacts", "item"), ("item", "rev_interacts", "user"),
                       users, items),
        "FRIEND": (("user", "friend", "user"), None, users, users),
        "HAS_TAG": (("item", "has_tag", "tag"), ("tag", "rev_has_tag", "item"), items, tags),
    }
    counts: dict[str, int] = {}
    with tqdm(desc="export relationships", unit="rel", unit_scale=True,
              disable=not progress) as bar:
        for rel_type, (edge_type, reverse_type, src, dst) in specs.items():
            s, d, w, t, has = _read_rels(client, rel_type, src, page_size, bar)
            w, t = _typed(client, rel_type, w, t, has, report)
            s, d, w, t = _without_keyless(rel_type, (src, dst), [s, d, w, t], report)
            si = torch.from_numpy(_to_index(src.nid, s, f"{rel_type} start"))
            di = torch.from_numpy(_to_index(dst.nid, d, f"{rel_type} end"))
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
        s, d, _, t, _ = _read_rels(client, "TAGGED", users, page_size, bar)
        s, d, t = _without_keyless("TAGGED", (users, items), [s, d, t], report)
        if (untagged := t == _NO_TIME).any():
            report.skipped_relationships.append({
                "relationship": "TAGGED", "count": int(untagged.sum()),
                "reason": "its tag property names no Tag node"})
            s, d, t = s[~untagged], d[~untagged], t[~untagged]
        counts["TAGGED"] = len(s)
        if len(s):
            data.tag_events = torch.from_numpy(np.stack([
                _to_index(users.nid, s, "TAGGED start"), _to_index(items.nid, d, "TAGGED end"),
                _to_index(tags.nid, t, "TAGGED tag")]))
    if counts["INTERACTED"] == 0:
        raise GnnrecError("export: the graph has no INTERACTED relationships to train on")
    seconds = time.perf_counter() - start
    relationships = sum(counts.values())
    summary = {
        "users": len(users.ext), "items": len(items.ext), "tags": len(tags.ext),
        "interactions": counts["INTERACTED"], "friendships": counts["FRIEND"],
        "item_tags": counts["HAS_TAG"], "taggings": counts["TAGGED"], "seconds": round(seconds, 3),
        "rels_per_second": round(relationships / max(seconds, 1e-9)),
        "exported_at": exported_at,
        **report.to_dict(),
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
