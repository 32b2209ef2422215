"""The ingest pipeline: read -> check every source -> reject file -> batched MERGE.

Nothing is written until every source has been read and checked, so a missing file
or a missing column leaves the database (and the rejects folder) untouched.

Counting rules (``read == loaded + rejected`` for every source and in total):

* ``read``: data rows in the source; ``loaded``: rows accepted; ``rejected``: rows
  written to the reject file, each with its 1-based data row number and a reason.
* Interactions: rows naming the same (user, item) pair *within one ingest* are all
  accepted and merged into one ``INTERACTED`` relationship whose ``weight`` is their
  sum and ``ts`` the latest. Across ingests the pair is MERGEd and its weight and ts
  are *replaced* by the new ones, so re-running the same ingest changes nothing.
* Social: ``a->b`` and ``b->a`` rows are both accepted and become one ``FRIEND``.
* Users / items: a repeated id in one file is rejected after its first row.

``merged`` in the summary counts what was sent to MERGE per label and type (nodes
and relationships that already existed are matched, not duplicated).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from neo4j.exceptions import DriverError, Neo4jError

from gnnrec.graph import load
from gnnrec.graph.client import GraphClient, Record, describe_neo4j_error
from gnnrec.graph.schema import ensure_schema
from gnnrec.graph.settings import gnnrec_home
from gnnrec.ingest.errors import IngestError
from gnnrec.ingest.privacy import load_key, pseudonymize_ids
from gnnrec.ingest.readers import SOURCE_KINDS, Source
from gnnrec.ingest.validate import (
    FORGOTTEN_USER,
    UNKNOWN_USER,
    Checked,
    ColumnNames,
    aggregate_interactions,
    canonical_pairs,
    check_source,
)

_CHUNK = 20_000  # rows turned into driver dicts at a time


@dataclass(frozen=True)
class IngestOptions:
    """How to ingest; the sources themselves are passed separately.

    ``label`` names the run in the default reject file
    ``<gnnrec_home()>/rejects/<label>-<timestamp>.csv``.
    """

    batch_size: int = 5_000
    strict: bool = False
    pseudonymize: bool = False
    key_file: Path | None = None
    allow_forgotten: bool = False
    reject_file: Path | None = None
    columns: ColumnNames = field(default_factory=ColumnNames)
    progress: bool = False
    label: str | None = None


def ingest(
    client: GraphClient, sources: Sequence[Source], options: IngestOptions | None = None
) -> dict[str, Any]:
    """Check all ``sources``, write their rejects, then MERGE the rest; return a summary.

    The summary has ``read``, ``loaded``, ``rejected``, ``reject_file`` (``None`` when
    no row was rejected), ``seconds``, ``sources`` (the same per source plus reasons),
    ``merged`` (rows sent per label/type) and ``timings``.
    """
    options = options or IngestOptions()
    started = time.perf_counter()
    checked = prepare(client, sources, options)
    validated = time.perf_counter()
    reject_file = write_rejects(checked, reject_path(options, sources))
    merged, timings = _write(client, checked, options)
    timings = {"read_and_check": validated - started, **timings}
    return summarize(checked, options, reject_file, merged, timings, started)


def summarize(
    checked: Sequence[Checked], options: IngestOptions, reject_file: Path | None,
    merged: dict[str, int], timings: dict[str, float], started: float,
) -> dict[str, Any]:
    """The JSON summary of one ingest (the same for the MERGE path and ``--bulk``)."""
    read = sum(c.read for c in checked)
    loaded = sum(c.loaded for c in checked)
    rejected = sum(c.rejected for c in checked)
    if read != loaded + rejected:  # an invariant, not a user error
        raise AssertionError(f"counts do not reconcile: {read} != {loaded} + {rejected}")
    return {
        "read": read,
        "loaded": loaded,
        "rejected": rejected,
        "reject_file": str(reject_file) if reject_file else None,
        "seconds": round(time.perf_counter() - started, 3),
        "sources": {
            c.source.kind: {
                "name": c.source.name, "read": c.read, "loaded": c.loaded,
                "rejected": c.rejected, "reasons": c.reasons(),
                **({"ignored_columns": c.ignored_columns} if c.ignored_columns else {}),
            }
            for c in checked
        },
        "merged": merged,
        "pseudonymized": options.pseudonymize,
        "strict": options.strict,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


def prepare(
    client: GraphClient | None, sources: Sequence[Source], options: IngestOptions
) -> list[Checked]:
    """Pseudonymise and check every source (reads the database only for ``strict``)."""
    if not sources:
        raise IngestError("nothing to ingest: give at least one source file or a dataset")
    kinds = [s.kind for s in sources]
    if len(set(kinds)) != len(kinds):
        raise IngestError(f"one source of each kind at most, got {kinds}")
    sources = sorted(sources, key=lambda s: SOURCE_KINDS.index(s.kind))
    if options.pseudonymize:
        key = load_key(options.key_file)
        sources = [pseudonymize_source(s, key, options.columns) for s in sources]
    checked = [check_source(s, options.columns) for s in sources]
    if options.strict:
        if client is None:
            raise IngestError("strict mode needs the database to look up known users")
        apply_strict(client, checked)
    if client is not None:
        apply_forgotten(client, checked, options)
    return checked


def pseudonymize_source(source: Source, key: bytes, columns: ColumnNames) -> Source:
    """A copy of ``source`` whose user-id columns hold pseudonyms."""
    user_cols = {
        "interactions": [columns.user], "social": [columns.user, columns.friend],
        "users": [columns.user], "items": [], "taggings": [columns.user],
    }[source.kind]
    frame = source.frame.copy()
    for col in user_cols:
        if col in frame.columns:
            frame[col] = pseudonymize_ids(frame[col], key)
    return replace(source, frame=frame)


def apply_strict(client: GraphClient, checked: list[Checked]) -> None:
    """Reject interactions and friendships naming a user unknown to the users file and db."""
    by_kind = {c.source.kind: c for c in checked}
    known: set[str] = set(by_kind["users"].clean["id"]) if "users" in by_kind else set()
    named: set[str] = set()
    for kind, cols in (("interactions", ["user"]), ("social", ["user", "friend"]),
                       ("taggings", ["user"])):
        if kind in by_kind:
            for col in cols:
                named.update(by_kind[kind].clean[col].unique())
    candidates = sorted(named - known)
    known |= load.existing_user_ids(client, candidates) if candidates else set()
    for kind in ("interactions", "taggings"):
        if kind in by_kind:
            c = by_kind[kind]
            c.reject(~c.clean["user"].isin(known), UNKNOWN_USER)
    if "social" in by_kind:
        c = by_kind["social"]
        c.reject(~(c.clean["user"].isin(known) & c.clean["friend"].isin(known)), UNKNOWN_USER)


_USER_COLUMNS = {"interactions": ("user",), "social": ("user", "friend"), "users": ("id",),
                 "taggings": ("user",)}


def apply_forgotten(client: GraphClient, checked: list[Checked],
                    options: IngestOptions) -> dict[str, str]:
    """Reject the rows naming a user Neo4j holds a forget tombstone for (a re-ingest of an
    old file never brings a forgotten user back); with ``allow_forgotten`` load them and
    delete their tombstones instead. Returns ``{user: tombstone key}`` of those users."""
    from gnnrec.graph.forgotten import delete_tombstones, forgotten_ids

    named: set[str] = set()
    for c in checked:
        for col in _USER_COLUMNS.get(c.source.kind, ()):
            named.update(str(u) for u in c.clean[col].unique())
    gone = forgotten_ids(client, sorted(named), options.key_file) if named else {}
    if not gone:
        return {}
    if options.allow_forgotten:
        delete_tombstones(client, sorted(gone.values()))
        print(f"note: {len(gone)} forgotten user(s) loaded again (--allow-forgotten); their "
              "tombstones were removed", file=sys.stderr)
        return gone
    for c in checked:
        cols = _USER_COLUMNS.get(c.source.kind, ())
        if cols:
            c.reject(c.clean[list(cols)].astype(str).isin(list(gone)).any(axis=1), FORGOTTEN_USER)
    return gone


def reject_path(options: IngestOptions, sources: Sequence[Source]) -> Path:
    """``--reject-file`` when given, else :func:`default_reject_path` for the sources."""
    return options.reject_file or default_reject_path(options.label or _label(sources))


def default_reject_path(label: str) -> Path:
    """``<gnnrec_home()>/rejects/<label>-<YYYYmmdd-HHMMSS>.csv`` (never overwrites)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = gnnrec_home() / "rejects"
    path = folder / f"{label}-{stamp}.csv"
    n = 1
    while path.exists():
        path = folder / f"{label}-{stamp}-{n}.csv"
        n += 1
    return path


def write_rejects(checked: Sequence[Checked], path: Path) -> Path | None:
    """One CSV for all sources: ``source, row, <original columns>, reason``.

    Written only when some row was rejected; returns its path or ``None``.
    """
    frames = [c.reject_frame().assign(source=c.source.kind) for c in checked if c.rejected]
    if not frames:
        return None
    out = pd.concat(frames, ignore_index=True)
    middle = [col for col in out.columns if col not in ("source", "row", "reason")]
    out = out[["source", "row", *middle, "reason"]]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False)
    return path


# -- writing --------------------------------------------------------------------------
def _label(sources: Sequence[Source]) -> str:
    if len(sources) == 1:
        stem = Path(sources[0].name).name.split(".")[0]
        return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem) or "ingest"
    return "ingest"


def _value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_value(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and value != value


def _node_records(clean: pd.DataFrame, extra_ids: Sequence[str]) -> Iterator[Record]:
    """``{id, props}`` per accepted node row, then ``{id, props: {}}`` per extra id."""
    attr_cols = [c for c in clean.columns if c not in ("id", "row")]
    for start in range(0, len(clean), _CHUNK):
        part = clean.iloc[start:start + _CHUNK]
        attrs = part[attr_cols].to_dict("records") if attr_cols else [{}] * len(part)
        for node_id, props in zip(part["id"].tolist(), attrs, strict=True):
            yield {"id": node_id,
                   "props": {k: _value(v) for k, v in props.items() if not _missing(v)}}
    for node_id in extra_ids:
        yield {"id": node_id, "props": {}}


def _records(frame: pd.DataFrame) -> Iterator[Record]:
    """Plain-Python dicts (``None`` for missing values), a chunk at a time."""
    keys = list(frame.columns)
    for start in range(0, len(frame), _CHUNK):
        part = frame.iloc[start:start + _CHUNK]
        cols = [part[k].astype(object).where(part[k].notna(), None).tolist() for k in keys]
        for values in zip(*cols, strict=True):
            yield dict(zip(keys, values, strict=True))


def _extra_ids(named: list[np.ndarray], present: pd.Series | None) -> list[str]:
    ids = pd.unique(np.concatenate(named)) if named else np.array([], dtype=object)
    if present is not None and len(present):
        ids = ids[~pd.Series(ids).isin(present).to_numpy()]
    return [str(i) for i in ids]


@dataclass(frozen=True)
class GraphRows:
    """The accepted rows of one ingest shaped as the graph stores them.

    ``extra_users`` / ``extra_items``: ids named only by an edge (nodes without
    attributes); ``item_tags``: ``item, tag, weight`` from an items file;
    ``interactions``: one row per (user, item) (:func:`aggregate_interactions`);
    ``friendships``: ``a < b`` pairs; ``taggings``: distinct ``user, item, tag`` events,
    grouped by (user, item).
    """

    users: pd.DataFrame
    extra_users: list[str]
    items: pd.DataFrame
    extra_items: list[str]
    tag_names: pd.DataFrame
    item_tags: pd.DataFrame
    interactions: pd.DataFrame | None
    friendships: pd.DataFrame | None
    taggings: pd.DataFrame | None


def graph_rows(checked: Sequence[Checked]) -> GraphRows:
    """Shape checked sources into :class:`GraphRows` (both write paths start here)."""
    by_kind = {c.source.kind: c for c in checked}
    empty = pd.DataFrame({"id": pd.Series([], dtype=object)})
    users = by_kind["users"].clean if "users" in by_kind else empty
    items = by_kind["items"].clean if "items" in by_kind else empty
    tags = by_kind["items"].tags if "items" in by_kind else None
    tags = tags if tags is not None else pd.DataFrame({"item": [], "tag": [], "weight": []})
    inter = (aggregate_interactions(by_kind["interactions"].clean)
             if "interactions" in by_kind else None)
    pairs = canonical_pairs(by_kind["social"].clean) if "social" in by_kind else None
    taggings = (by_kind["taggings"].clean[["user", "item", "tag"]].drop_duplicates()
                .sort_values(["user", "item"], kind="stable")  # a pair's events in one batch
                if "taggings" in by_kind else None)

    named_users = [] if inter is None else [inter["user"].to_numpy(dtype=object)]
    if pairs is not None:
        named_users += [pairs["a"].to_numpy(dtype=object), pairs["b"].to_numpy(dtype=object)]
    named_items = [] if inter is None else [inter["item"].to_numpy(dtype=object)]
    named_tags = [tags["tag"].to_numpy(dtype=object)]
    if taggings is not None:
        named_users.append(taggings["user"].to_numpy(dtype=object))
        named_items.append(taggings["item"].to_numpy(dtype=object))
        named_tags.append(taggings["tag"].to_numpy(dtype=object))
    return GraphRows(
        users=users, extra_users=_extra_ids(named_users, users["id"]),
        items=items, extra_items=_extra_ids(named_items, items["id"]),
        tag_names=pd.DataFrame({"name": pd.unique(np.concatenate(named_tags))}),
        item_tags=tags, interactions=inter, friendships=pairs, taggings=taggings,
    )


def _write(
    client: GraphClient, checked: Sequence[Checked], options: IngestOptions
) -> tuple[dict[str, int], dict[str, float]]:
    g = graph_rows(checked)
    users, items, extra_users, extra_items = g.users, g.items, g.extra_users, g.extra_items
    tag_names, tags, inter, pairs, taggings = (g.tag_names, g.item_tags, g.interactions,
                                               g.friendships, g.taggings)

    plan: list[tuple[str, Any, Iterator[Record], int]] = [
        ("User", load.merge_users, _node_records(users, extra_users),
         len(users) + len(extra_users)),
        ("Item", load.merge_items, _node_records(items, extra_items),
         len(items) + len(extra_items)),
        ("Tag", load.merge_tags, _records(tag_names), len(tag_names)),
    ]
    if inter is not None:
        plan.append(("INTERACTED", load.merge_interactions, _records(inter), len(inter)))
    if pairs is not None:
        plan.append(("FRIEND", load.merge_friendships, _records(pairs), len(pairs)))
    plan.append(("HAS_TAG", load.merge_item_tags, _records(tags[["item", "tag", "weight"]]),
                 len(tags)))
    if taggings is not None:  # then each tagged item's HAS_TAG weights count its events
        tagged_items = pd.DataFrame({"item": pd.unique(taggings["item"])})
        plan.append(("TAGGED", load.merge_taggings, _records(taggings), len(taggings)))
        plan.append(("HAS_TAG from TAGGED", load.count_taggings, _records(tagged_items),
                     len(tagged_items)))

    from tqdm.auto import tqdm  # imported here: only the writing step needs it

    merged: dict[str, int] = {}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        ensure_schema(client)
    except (Neo4jError, DriverError) as exc:
        raise IngestError(f"cannot create the schema constraints: "
                          f"{describe_neo4j_error(exc, client.settings)}; nothing was written"
                          ) from exc
    timings["schema"] = time.perf_counter() - t0
    total = sum(n for *_, n in plan)
    with tqdm(total=total, unit="rows", disable=not options.progress, leave=False,
              dynamic_ncols=True) as bar:
        for name, fn, rows, _ in plan:
            bar.set_description(name)
            t0 = time.perf_counter()
            done = bar.n
            try:
                merged[name] = fn(client, rows, options.batch_size, bar.update)
            except (Neo4jError, DriverError) as exc:
                raise IngestError(
                    f"writing {name} failed after {bar.n - done:,} of its rows: "
                    f"{describe_neo4j_error(exc, client.settings)}. "
                    f"Batches already committed stay; re-running the same ingest is safe "
                    f"(MERGE) and completes it"
                ) from exc
            timings[name] = time.perf_counter() - t0
    return merged, timings
