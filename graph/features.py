"""Node properties -> feature columns, and the properties that cannot be used, with why.

One property is one column over the nodes of a label (``None`` where a node does not
have it). What a column becomes depends on the type of its values:

* numbers (integer or float): z-scored over the finite values; a node without the
  property, or with NaN or infinity, gets 0;
* booleans: 0 / 1, then z-scored like numbers;
* dates and datetimes (``neo4j.time`` or ``datetime``): unix seconds (a datetime without
  a time zone is read as UTC), then z-scored like numbers;
* text: one-hot when it has 2..32 distinct values and each value repeats on average
  (values <= nodes / 2), so categories such as a genre or a gender are features and
  titles or names are not.

Everything else is skipped with a reason: a property holding values of different types
on different nodes (an integer on some, text on others), lists, other temporal or
spatial types (durations, times of day, points), numbers none of which is finite, and
text that is not a category. Text is not parsed for numbers: ``gnnrec ingest`` already
stores a numeric column as numbers.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

MAX_CATEGORIES = 32
_EPOCH_DATE = dt.date(1970, 1, 1)

# Which value types turn into a number, and under which kind they may be mixed.
_NUMERIC_KINDS = {"integer": "number", "float": "number", "boolean": "boolean",
                  "date": "date", "datetime": "datetime"}


def value_type(value: Any) -> str:
    """The name used in reasons: integer, float, boolean, string, list, date, datetime, ..."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    name = type(value).__name__.lower()  # neo4j.time.DateTime -> datetime, Date -> date
    if isinstance(value, dt.datetime) or name == "datetime":
        return "datetime"
    if isinstance(value, dt.date) or name == "date":
        return "date"
    return name  # duration, time, point, bytes, ...


def _seconds(value: Any, kind: str) -> float:
    """Unix seconds of a date (midnight UTC) or datetime (UTC when it has no zone)."""
    native = value.to_native() if hasattr(value, "to_native") else value
    if kind == "date":
        return float((native - _EPOCH_DATE).days * 86_400)
    if native.tzinfo is None:
        native = native.replace(tzinfo=dt.UTC)
    return float(native.timestamp())


def _as_number(value: Any, kind: str) -> float:
    if kind in ("date", "datetime"):
        return _seconds(value, kind)
    return float(value)


def column_features(
    values: Sequence[Any], num_nodes: int | None = None,
) -> tuple[list[tuple[str, np.ndarray]], str | None]:
    """Feature columns of one property (``[(suffix, Float64[N])]``), or ``([], reason)``.

    ``values`` holds the property of every node in node order (``None`` = not set);
    ``num_nodes`` defaults to ``len(values)``. A numeric column's suffix is ``""``, a
    one-hot column's is ``"=value"``.
    """
    num_nodes = len(values) if num_nodes is None else num_nodes
    present = [v for v in values if v is not None]
    if not present:
        return [], "no node has a value"
    types = Counter(value_type(v) for v in present)
    kinds = {_NUMERIC_KINDS.get(t, t) for t in types}
    if len(kinds) > 1:
        listed = ", ".join(f"{t} on {n} node{'s' if n > 1 else ''}"
                           for t, n in sorted(types.items(), key=lambda kv: (-kv[1], kv[0])))
        return [], f"mixed types: {listed}"
    (kind,) = kinds
    if kind in ("number", "boolean", "date", "datetime"):
        arr = np.array([np.nan if v is None else _as_number(v, value_type(v)) for v in values],
                       dtype=np.float64)
        finite = np.isfinite(arr)
        if not finite.any():
            return [], "no finite number (only NaN or infinity)"
        arr[~finite] = np.nan
        # a constant column is all zeros (its std may come out as rounding noise, not 0)
        mean, std = np.nanmean(arr), np.nanstd(arr)
        if not (np.nanmax(arr) > np.nanmin(arr) and std > 0):
            std = 1.0
        return [("", np.nan_to_num((arr - mean) / std))], None
    if kind == "string":
        levels = sorted(set(present))
        if 1 < len(levels) <= min(MAX_CATEGORIES, num_nodes // 2):
            return [(f"={level}", np.array([v == level for v in values], dtype=np.float64))
                    for level in levels], None
        return [], (f"text with {len(levels)} distinct value{'s' if len(levels) > 1 else ''} "
                    f"on {num_nodes} nodes (a category needs 2 to {MAX_CATEGORIES} values, "
                    "each on 2 nodes on average)")
    if kind == "list":
        return [], "lists are not used as features"
    return [], f"values of type {kind} are not used as features"


def node_features(
    columns: dict[str, Sequence[Any]], num_nodes: int | None = None,
) -> tuple[tuple[torch.Tensor, list[str]] | None, list[tuple[str, str]]]:
    """``((x [N, F], feature_names) | None, [(property, reason skipped)])``.

    ``columns`` maps a property name to its values in node order; properties are taken
    in the order given.
    """
    features: list[np.ndarray] = []
    names: list[str] = []
    skipped: list[tuple[str, str]] = []
    for name, values in columns.items():
        parts, reason = column_features(values, num_nodes)
        if reason is not None:
            skipped.append((name, reason))
        for suffix, column in parts:
            features.append(column)
            names.append(f"{name}{suffix}")
    if not features:
        return None, skipped
    return (torch.tensor(np.stack(features, axis=1), dtype=torch.float32), names), skipped


def attributes_to_features(
    columns: dict[str, list[Any]],
) -> tuple[torch.Tensor, list[str]] | None:
    """Numeric properties (z-scored, missing -> 0) and categorical text (one-hot).

    ``columns`` maps a property name to its values in node order (None = missing).
    Returns ``(x [N, F], feature_names)`` or ``None`` when no usable attribute exists;
    :func:`node_features` also says what was skipped and why.
    """
    return node_features(columns)[0]
