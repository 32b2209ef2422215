"""Property-based round trip of the export through the real Neo4j (hypothesis).

Hypothesis draws node property tables (missing values, integers, floats with NaN and
infinity, booleans, text including very long strings, lists, dates, datetimes with and
without a zone, mixed types across nodes), relationship properties of every kind
(missing, numbers, text, booleans, lists, temporal values) and nodes with no properties
at all. Each example is loaded into the test server and exported; the result is checked
against a reference computed here, independently, with pandas: ids, edges, weights,
times, features, and what the summary says was skipped or defaulted.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gnnrec.graph import load
from gnnrec.graph.client import GraphClient
from gnnrec.graph.export import export_hetero
from gnnrec.graph.schema import clear_database

pytestmark = pytest.mark.integration

UTC = dt.UTC
LONG = "long text " * 1_000  # 10,000 characters
NAN, INF = float("nan"), float("inf")
FLOAT32_MAX = float(np.finfo(np.float32).max)

# -- value strategies ---------------------------------------------------------------
_ZONES = st.sampled_from([UTC, dt.timezone(dt.timedelta(hours=2)),
                          dt.timezone(dt.timedelta(hours=-5, minutes=-30))])
_WHEN = {"min_value": dt.datetime(1971, 1, 1), "max_value": dt.datetime(2100, 1, 1)}
VALUES = {
    "int": st.integers(-10**6, 10**6),
    "float": st.floats(-1e6, 1e6).map(lambda x: round(x, 3)) | st.sampled_from([NAN, INF, -INF]),
    "bool": st.booleans(),
    "text": st.sampled_from(["red", "green", "blue", "", LONG]),
    "free_text": st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
    "list": st.lists(st.integers(-3, 3), max_size=3) | st.lists(st.sampled_from("ab"),
                                                                min_size=1, max_size=3),
    "date": st.dates(dt.date(1971, 1, 1), dt.date(2100, 1, 1)),
    "datetime": st.datetimes(**_WHEN, timezones=_ZONES).map(lambda d: d.replace(microsecond=0)),
    "local_datetime": st.datetimes(**_WHEN).map(lambda d: d.replace(microsecond=0)),
    "duration": st.integers(1, 10**6).map(lambda s: dt.timedelta(seconds=s)),
}
WEIGHTS = st.one_of(
    st.none(), st.integers(-5, 1_000), st.floats(0, 1e3).map(lambda x: round(x, 3)),
    st.sampled_from([NAN, INF, 1e39, "2.5", "heavy", True, [1, 2]]))
TIMES = st.one_of(
    st.none(), st.integers(-10**9, 4 * 10**9), st.floats(-1e9, 4e9),
    st.sampled_from([NAN, -INF, 1e30, "2020-01-01", False, [5]]),
    VALUES["date"], VALUES["datetime"], VALUES["local_datetime"])


@st.composite
def columns(draw: st.DrawFn, n: int) -> dict[str, list[Any]]:
    """Property name -> one value per node (None = not set); mostly one kind per column."""
    out: dict[str, list[Any]] = {}
    for name in draw(st.lists(st.sampled_from(["a", "b", "c", "score", "when"]),
                              unique=True, max_size=4)):
        kinds = draw(st.sampled_from(sorted(VALUES)).map(lambda k: [k])
                     | st.lists(st.sampled_from(sorted(VALUES)), min_size=2, max_size=2,
                                unique=True))
        value = st.one_of(st.none(), *(VALUES[k] for k in kinds))
        out[name] = draw(st.lists(value, min_size=n, max_size=n))
    return out


@st.composite
def graphs(draw: st.DrawFn) -> dict[str, Any]:
    n_users, n_items = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    users = [f"u{k}" for k in range(n_users)]
    items = [f"i{k}" for k in range(n_items)]
    tags = ["t0", "t1", "t2"]
    pairs = st.tuples(st.sampled_from(users), st.sampled_from(items))
    inter = draw(st.lists(st.tuples(pairs, WEIGHTS, TIMES), min_size=1, max_size=20,
                          unique_by=lambda r: r[0]))
    friends = draw(st.lists(st.tuples(st.sampled_from(users), st.sampled_from(users), WEIGHTS),
                            max_size=8, unique_by=lambda r: tuple(sorted(r[:2])))
                   .map(lambda rows: [r for r in rows if r[0] != r[1]]))
    item_tags = draw(st.lists(st.tuples(st.sampled_from(items), st.sampled_from(tags), WEIGHTS),
                              max_size=8, unique_by=lambda r: r[:2]))
    taggings = draw(st.lists(st.tuples(st.sampled_from(users), st.sampled_from(items),
                                       st.sampled_from([*tags, "no-such-tag"])),
                             max_size=6, unique=True))
    return {
        "users": users, "items": items, "tags": tags,
        "user_props": draw(columns(n_users)), "item_props": draw(columns(n_items)),
        "interactions": [(u, i, w, t) for (u, i), w, t in inter],
        "friends": friends, "item_tags": item_tags, "taggings": taggings,
        # nodes with no properties at all (no id either), each with one interaction
        "keyless_users": draw(st.integers(0, 2)), "keyless_items": draw(st.integers(0, 2)),
    }


# -- loading (the product's own writers where they exist) ----------------------------
FRIENDS = """
UNWIND $rows AS row
MATCH (a:User {id: row.a}), (b:User {id: row.b})
CREATE (a)-[r:FRIEND]->(b) SET r.weight = row.weight
"""
KEYLESS = """
MATCH (u:User {id: $user}), (i:Item {id: $item})
CALL (i) { UNWIND range(1, $users) AS k CREATE (:User)-[:INTERACTED {weight: 1.0, ts: 0}]->(i) }
CALL (u) { UNWIND range(1, $items) AS k CREATE (u)-[:INTERACTED {weight: 1.0, ts: 0}]->(:Item) }
"""


def _load(client: GraphClient, g: dict[str, Any]) -> None:
    clear_database(client)  # the schema stays (graph_client created it)
    for ids, props, merge in ((g["users"], g["user_props"], load.merge_users),
                              (g["items"], g["item_props"], load.merge_items)):
        merge(client, [{"id": node, "props": {k: v[n] for k, v in props.items()}}
                       for n, node in enumerate(ids)])
    load.merge_tags(client, [{"name": t} for t in g["tags"]])
    load.merge_interactions(client, [{"user": u, "item": i, "weight": w, "ts": t}
                                     for u, i, w, t in g["interactions"]])
    client.write(FRIENDS, {"rows": [{"a": a, "b": b, "weight": w} for a, b, w in g["friends"]]})
    load.merge_item_tags(client, [{"item": i, "tag": t, "weight": w}
                                  for i, t, w in g["item_tags"]])
    load.merge_taggings(client, [{"user": u, "item": i, "tag": t} for u, i, t in g["taggings"]])
    client.write(KEYLESS, {"user": g["users"][0], "item": g["items"][0],
                           "users": g["keyless_users"], "items": g["keyless_items"]})


# -- the reference, in pandas ---------------------------------------------------------
def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "list"
    if isinstance(v, dt.datetime):
        return "datetime"
    if isinstance(v, dt.date):
        return "date"
    return "other"


def _seconds(v: Any) -> float:
    if isinstance(v, dt.datetime):
        aware = v if v.tzinfo is not None else v.replace(tzinfo=UTC)
        return (aware - dt.datetime(1970, 1, 1, tzinfo=UTC)) / dt.timedelta(seconds=1)
    return float((v - dt.date(1970, 1, 1)).days * 86_400)


def reference_features(props: dict[str, list[Any]], ids: list[str]
                       ) -> tuple[dict[str, dict[str, float]], set[str]]:
    """feature name -> {node id: value}, and the properties that must be skipped."""
    frame = pd.DataFrame(props, index=ids, dtype=object)
    feats: dict[str, dict[str, float]] = {}
    skipped: set[str] = set()
    for col in frame.columns:
        values = frame[col][[v is not None for v in frame[col]]]  # NaN is a stored value
        if values.empty:
            continue  # never stored: not a property of the graph at all
        kinds = set(values.map(_kind))
        if len(kinds) > 1 or kinds & {"list", "other"}:
            skipped.add(col)
            continue
        kind = kinds.pop()
        if kind == "string":
            levels = values.nunique()
            if not 2 <= levels <= min(32, len(frame) // 2):
                skipped.add(col)
                continue
            dummies = pd.get_dummies(values, dtype=float).reindex(frame.index, fill_value=0.0)
            for level in dummies.columns:
                feats[f"{col}={level}"] = dummies[level].to_dict()
            continue
        to_number = _seconds if kind in ("date", "datetime") else float
        numbers = frame[col].map(lambda v, f=to_number: np.nan if v is None else f(v))
        numbers = numbers.astype(float).replace([np.inf, -np.inf], np.nan)
        if numbers.isna().all():
            skipped.add(col)
            continue
        std = numbers.std(ddof=0) if numbers.nunique() > 1 else 1.0
        feats[col] = ((numbers - numbers.mean()) / std).fillna(0.0).to_dict()
    return feats, skipped


def ref_weight(w: Any) -> float:
    ok = (isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w)
          and abs(w) <= FLOAT32_MAX)
    return float(w) if ok else 1.0


def ref_time(t: Any) -> int:
    if isinstance(t, bool) or t is None or isinstance(t, str | list):
        return 0
    if isinstance(t, int):
        return t
    if isinstance(t, float):
        return int(t) if abs(t) < 9.0e18 else 0  # NaN fails the test too
    return int(_seconds(t) // 1)


def expected_defaults(values: list[Any], extra: int, prop: str) -> dict[str, int]:
    """{"missing": n listed or 0, "unusable": n} over one relationship type's values
    (``extra`` more relationships have a usable value)."""
    missing = sum(v is None for v in values)
    if prop == "weight":
        usable = sum(v is not None and isinstance(v, int | float) and not isinstance(v, bool)
                     and math.isfinite(v) and abs(v) <= FLOAT32_MAX for v in values)
    else:
        usable = sum(v is not None and not isinstance(v, bool | str | list)
                     and not (isinstance(v, float) and not abs(v) < 9.0e18) for v in values)
    total = len(values) + extra
    return {"missing": missing if 0 < missing < total else 0,
            "unusable": len(values) - missing - usable}


def _reported(summary: dict[str, Any], rel: str, prop: str) -> dict[str, int]:
    rows = [r for r in summary["defaulted_properties"]
            if r["relationship"] == rel and r["property"] == prop]
    for r in rows:
        assert r["value"] == (1.0 if prop == "weight" else 0)
    return {"missing": sum(r["count"] for r in rows if r["reason"] == "missing"),
            "unusable": sum(r["count"] for r in rows if r["reason"] != "missing")}


# -- the test -------------------------------------------------------------------------
@settings(max_examples=30, deadline=None, database=None,
          # graph_client is function-scoped: one emptied server for the test, and each
          # example empties it again in _load, so nothing leaks between examples.
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(g=graphs(), page_size=st.integers(1, 50))
def test_export_round_trip_of_any_property_pattern(graph_client: GraphClient,
                                                   g: dict[str, Any], page_size: int) -> None:
    _load(graph_client, g)
    data, summary = export_hetero(graph_client, page_size=page_size, progress=False)

    # ids: every node with an id, and the id-less ones named in the summary
    assert sorted(data["user"].ext_id) == sorted(g["users"])
    assert sorted(data["item"].ext_id) == sorted(g["items"])
    assert sorted(data["tag"].ext_id) == sorted(g["tags"])
    keyless = {"User": g["keyless_users"], "Item": g["keyless_items"]}
    assert {r["label"]: r["count"] for r in summary["skipped_nodes"]} == {
        k: n for k, n in keyless.items() if n}
    uid, iid, tid = data["user"].ext_id, data["item"].ext_id, data["tag"].ext_id

    # interactions, weights and times
    expected = {(u, i): (ref_weight(w), ref_time(t)) for u, i, w, t in g["interactions"]}
    store = data["user", "interacts", "item"]
    got = {(uid[u], iid[i]): (w, t) for (u, i), w, t in zip(
        store.edge_index.t().tolist(), store.weight.tolist(), store.time.tolist(), strict=True)}
    assert got.keys() == expected.keys()
    for pair, (w, t) in expected.items():
        assert got[pair][0] == pytest.approx(w, rel=1e-6) and got[pair][1] == t, pair
    assert summary["interactions"] == len(g["interactions"])
    skipped_rels = {r["relationship"]: r["count"] for r in summary["skipped_relationships"]}
    extra = g["keyless_users"] + g["keyless_items"]
    assert skipped_rels.get("INTERACTED", 0) == extra
    for prop, col in (("weight", 2), ("ts", 3)):  # lists, not pandas: None must stay None
        assert _reported(summary, "INTERACTED", prop) == expected_defaults(
            [r[col] for r in g["interactions"]], extra, prop), prop

    # friendships (both directions, one weight) and item tags
    friends = data["user", "friend", "user"]
    got_f = {(uid[a], uid[b]): w for (a, b), w in zip(friends.edge_index.t().tolist(),
                                                      friends.weight.tolist(), strict=True)}
    exp_f = {(a, b): ref_weight(w) for a, b, w in g["friends"]}
    exp_f |= {(b, a): w for (a, b), w in exp_f.items()}
    assert got_f.keys() == exp_f.keys()
    assert all(got_f[k] == pytest.approx(w, rel=1e-6) for k, w in exp_f.items())
    tagged = data["item", "has_tag", "tag"]
    got_t = {(iid[i], tid[t]): w for (i, t), w in zip(tagged.edge_index.t().tolist(),
                                                      tagged.weight.tolist(), strict=True)}
    exp_t = {(i, t): ref_weight(w) for i, t, w in g["item_tags"]}
    assert got_t.keys() == exp_t.keys()
    assert all(got_t[k] == pytest.approx(w, rel=1e-6) for k, w in exp_t.items())
    for rel, rows in (("FRIEND", g["friends"]), ("HAS_TAG", g["item_tags"])):
        assert _reported(summary, rel, "weight") == expected_defaults(
            [r[2] for r in rows], 0, "weight"), rel

    # taggings: those naming an existing tag; the others are skipped and counted
    events = {(u, i, t) for u, i, t in g["taggings"] if t in g["tags"]}
    got_e = (set() if "tag_events" not in data else
             {(uid[u], iid[i], tid[t]) for u, i, t in data.tag_events.t().tolist()})
    assert got_e == events
    assert skipped_rels.get("TAGGED", 0) == len(g["taggings"]) - len(events)

    # features and skipped properties
    skipped = {(r["label"], r["property"]) for r in summary["skipped_properties"]}
    for nt, label, ids in (("user", "User", g["users"]), ("item", "Item", g["items"])):
        feats, skip = reference_features(g[f"{nt}_props"], ids)
        assert {p for lab, p in skipped if lab == label} == skip, label
        names = list(data[nt].feature_names) if "x" in data[nt] else []
        assert sorted(names) == sorted(feats), label
        for k, name in enumerate(names):
            column = dict(zip(data[nt].ext_id, data[nt].x[:, k].tolist(), strict=True))
            for node, value in feats[name].items():
                assert column[node] == pytest.approx(value, abs=1e-4), (label, name, node)
