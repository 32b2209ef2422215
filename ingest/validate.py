"""Vectorised validation: required columns, ids, weights, time stamps, tags, attributes.

Each ``check_*`` function takes a :class:`~gnnrec.ingest.readers.Source` and returns a
:class:`Checked`: the accepted rows in a normalised shape (``row`` keeps the 1-based
data row number) and the rejected row numbers with a reason. A missing required
column raises :class:`~gnnrec.ingest.errors.MissingColumnError` instead, before
anything is written. ``read == loaded + rejected`` holds for every source.

Reasons (one per rejected row, the first that applies):

* ``empty user id`` / ``empty item id`` / ``empty friend id`` / ``empty tag`` (empty or
  only spaces); ``user id longer than 2,000 characters`` (and so on: Neo4j cannot index
  longer keys), ``... is a boolean``, ``... is a non-integral number``, ``... is not UTF-8
  text`` (the id rule of :func:`parse_ids`, the same for every reader)
* ``row has N fields, the header has M`` (a ragged CSV row, found by the reader)
* ``missing weight``, ``weight is not a number``, ``weight is not finite``, ``negative weight``
* ``unparseable timestamp`` (neither a number of unix seconds nor an ISO-8601 date),
  ``timestamp out of range`` (beyond +-1e11 s: milliseconds given as seconds?)
* ``self-friendship``; ``duplicate user id`` / ``duplicate item id`` (first row kept)
* with ``--strict``: ``unknown user (not in the users file nor in the database)``
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from gnnrec.ingest.errors import IngestError, MissingColumnError
from gnnrec.ingest.readers import Source

TAG_SEPARATOR = "|"
MAX_ABS_TIMESTAMP = 100_000_000_000  # seconds; ~ year 5138
_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")
_LEADING_ZERO = r"^\s*[+-]?0\d"
MAX_ID_LENGTH = 2_000  # characters of an id or tag name (Neo4j's index key limit: ~8 KB)

UNKNOWN_USER = "unknown user (not in the users file nor in the database)"
FORGOTTEN_USER = ("forgotten user (gnnrec forget left a tombstone): add --allow-forgotten to "
                  "load them again")


@dataclass(frozen=True)
class ColumnNames:
    """Column names of the sources; ``None`` means the default name.

    A column named explicitly (not ``None``) is required; the default ``weight``
    and ``timestamp`` columns are optional (weight 1.0, no time stamp).
    ``user`` names the user column of interactions, social and users files alike.
    """

    user: str = "user"
    item: str = "item"
    friend: str = "friend"
    weight: str | None = None
    time: str | None = None
    tags: str = "tags"
    tag: str = "tag"

    @property
    def weight_name(self) -> str:
        return self.weight or "weight"

    @property
    def time_name(self) -> str:
        return self.time or "timestamp"


@dataclass
class Checked:
    """Result of checking one source.

    ``clean`` holds accepted rows (with a ``row`` column), ``rejects`` the rejected
    rows' numbers and reasons (``row``, ``reason``), ``tags`` the item-tag pairs
    (items only: ``item``, ``tag``, ``weight``).
    """

    source: Source
    clean: pd.DataFrame
    rejects: pd.DataFrame
    tags: pd.DataFrame | None = None
    ignored_columns: list[str] = field(default_factory=list)

    @property
    def read(self) -> int:
        return len(self.source.frame)

    @property
    def rejected(self) -> int:
        return len(self.rejects)

    @property
    def loaded(self) -> int:
        return len(self.clean)

    def reject(self, mask: pd.Series, reason: str) -> None:
        """Move the clean rows where ``mask`` is true to the rejects (strict mode)."""
        mask = mask.to_numpy(dtype=bool)
        if not mask.any():
            return
        moved = pd.DataFrame({"row": self.clean["row"].to_numpy()[mask], "reason": reason})
        self.rejects = pd.concat([self.rejects, moved], ignore_index=True)
        self.clean = self.clean.loc[~mask].reset_index(drop=True)
        if self.tags is not None and "item" in self.clean:
            self.tags = self.tags[self.tags["item"].isin(self.clean["item"])]

    def reasons(self) -> dict[str, int]:
        """Rejected row counts by reason."""
        return {str(k): int(v) for k, v in self.rejects["reason"].value_counts().items()}

    def reject_frame(self) -> pd.DataFrame:
        """``row``, the original columns of the rejected rows, ``reason`` (sorted by row)."""
        rejects = self.rejects.sort_values("row", kind="stable")
        original = self.source.frame.iloc[rejects["row"].to_numpy() - 1].reset_index(drop=True)
        out = pd.concat([rejects[["row"]].reset_index(drop=True), original], axis=1)
        out["reason"] = rejects["reason"].to_numpy()
        return out


class _Reasons:
    """The first failing reason of each row (vectorised)."""

    def __init__(self, n: int) -> None:
        self.values = np.full(n, "", dtype=object)

    @classmethod
    def of(cls, source: Source) -> _Reasons:
        """Reasons for ``source``'s rows, starting with the reader's (ragged CSV rows)."""
        reasons = cls(len(source.frame))
        for row, reason in source.malformed.items():
            reasons.values[row - 1] = reason
        return reasons

    def add(self, mask: pd.Series | np.ndarray, reason: str) -> None:
        mask = np.asarray(mask, dtype=bool)
        self.values[mask & (self.values == "")] = reason

    @property
    def bad(self) -> np.ndarray:
        return self.values != ""


# -- column helpers ---------------------------------------------------------------
def require_columns(source: Source, required: list[str]) -> None:
    """Raise :class:`MissingColumnError` naming the file and every missing column."""
    missing = [col for col in required if col not in source.frame.columns]
    if missing:
        have = ", ".join(map(str, source.frame.columns)) or "none"
        raise MissingColumnError(
            f"{source.name}: {source.kind} source lacks required column(s) "
            f"{', '.join(repr(c) for c in missing)} (columns found: {have})"
        )


def _canonical_id(value: object, label: str) -> tuple[str | None, str]:
    """One cell by the id rule: ``(id, "")`` or ``(None, reason)``; see :func:`parse_ids`."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None, f"empty {label}"
    if isinstance(value, bool | np.bool_):
        return None, f"{label} is a boolean"
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None, f"{label} is not UTF-8 text"
    elif isinstance(value, float | np.floating):
        if value != value:
            return None, f"empty {label}"
        if not np.isfinite(value) or value != np.floor(value):
            return None, f"{label} is a non-integral number"
        value = int(value)
    elif isinstance(value, np.integer):
        value = int(value)
    text = value if isinstance(value, str) else str(value)
    return check_id_text(text, label)


def check_id_text(text: str, label: str) -> tuple[str | None, str]:
    """``(text, "")`` for a usable id, else ``(None, reason)``: blank, too long, not UTF-8."""
    if not text.strip():
        return None, f"empty {label}"
    if len(text) > MAX_ID_LENGTH:
        return None, f"{label} longer than {MAX_ID_LENGTH:,} characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (e.g. from JSON "\\ud800")
        return None, f"{label} is not UTF-8 text"
    return text, ""


def parse_ids(values: pd.Series, label: str, reasons: _Reasons | None = None) -> pd.Series:
    """Ids by the one rule every reader follows (CSV, Parquet, DataFrames, the HTTP API).

    An id is text, kept verbatim: strings as they are, integers as their decimal digits,
    bytes decoded as UTF-8, floats only when integral (``1.0`` is ``"1"``, always, whatever
    the other rows hold). Rejected, with ``label`` in the reason (``"user id"``, ``"tag"``):
    missing or blank cells (``empty user id``), booleans, non-integral or infinite floats,
    bytes that are not UTF-8 and text longer than :data:`MAX_ID_LENGTH` characters (Neo4j
    cannot index a key above about 8 KB; 2,000 characters are at most 8,000 bytes).
    Rejected cells are NaN in the result; ``reasons`` gets their reasons.
    """
    values = values.reset_index(drop=True)
    n = len(values)
    out = np.empty(n, dtype=object)
    bad = np.full(n, "", dtype=object)
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind in ("string", "empty") or ptypes.is_integer_dtype(values.dtype):
        missing = values.isna().to_numpy()
        text = values.astype(object).where(~missing, "").map(str)
        blank = missing | text.str.strip().eq("").to_numpy()
        long = text.str.len().to_numpy() > MAX_ID_LENGTH
        out[:] = text.to_numpy(dtype=object)
        bad[long] = f"{label} longer than {MAX_ID_LENGTH:,} characters"
        bad[blank] = f"empty {label}"
        if kind == "string" and not long.any():  # lone surrogates are rare: check all at once
            try:
                "".join(out[~blank]).encode("utf-8")
            except UnicodeEncodeError:
                for i in np.flatnonzero(~blank):
                    out[i], bad[i] = check_id_text(out[i], label)
    elif ptypes.is_float_dtype(values.dtype):
        x = values.to_numpy(dtype="float64", na_value=np.nan)
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(x) & (x == np.floor(x)) & (np.abs(x) < 2.0**63)
        out[whole] = x[whole].astype("int64").astype(str).astype(object)
        bad[~whole] = f"{label} is a non-integral number"
        bad[np.isnan(x)] = f"empty {label}"
    else:
        for i, value in enumerate(values.astype(object).tolist()):
            out[i], bad[i] = _canonical_id(value, label)
    rejected = bad != ""
    out[rejected] = np.nan
    if reasons is not None:
        for reason in pd.unique(bad[rejected]):
            reasons.add(bad == reason, str(reason))
    return pd.Series(out, dtype=object)


def _text(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Cells as stripped strings plus the mask of empty/missing cells."""
    missing = values.isna().to_numpy()
    text = values.astype(object).where(~missing, "").astype(str).str.strip()
    return text, missing | text.eq("").to_numpy()


def parse_weights(values: pd.Series, reasons: _Reasons) -> np.ndarray:
    """Weights as float64; bad cells get a reason (and NaN)."""
    if ptypes.is_numeric_dtype(values.dtype) and not ptypes.is_bool_dtype(values.dtype):
        weights = values.astype("float64").to_numpy()
        reasons.add(np.isnan(weights), "missing weight")
    else:
        text, empty = _text(values)
        weights = pd.to_numeric(text.where(~empty), errors="coerce").astype("float64").to_numpy()
        reasons.add(empty, "missing weight")
        reasons.add(np.isnan(weights), "weight is not a number")
    with np.errstate(invalid="ignore"):
        reasons.add(np.isinf(weights), "weight is not finite")
        reasons.add(weights < 0, "negative weight")
    return weights


def _int_series(values: np.ndarray, known: np.ndarray) -> pd.Series:
    """A nullable ``Int64`` Series (missing where ``known`` is false)."""
    return pd.Series(pd.arrays.IntegerArray(values.astype("int64"), ~known))


def parse_timestamps(values: pd.Series, reasons: _Reasons) -> pd.Series:
    """Unix seconds (``Int64``, ``<NA>`` for empty cells) from numbers or ISO-8601 strings."""
    values = values.reset_index(drop=True)
    n = len(values)
    if ptypes.is_datetime64_any_dtype(values.dtype):
        stamps = values if getattr(values.dt, "tz", None) else values.dt.tz_localize("UTC")
        secs = ((stamps - _EPOCH) // pd.Timedelta(seconds=1)).to_numpy(dtype="float64")
        known = ~np.isnan(secs)
        return _int_series(np.where(known, secs, 0), known)
    if ptypes.is_numeric_dtype(values.dtype) and not ptypes.is_bool_dtype(values.dtype):
        numbers = values.astype("float64").to_numpy()
        empty = np.isnan(numbers)
        strings = np.zeros(n, dtype=bool)
    else:
        text, empty = _text(values)
        numbers = pd.to_numeric(text.where(~empty), errors="coerce").to_numpy(dtype="float64")
        strings = ~empty & np.isnan(numbers)
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(numbers)
        in_range = finite & (np.abs(np.where(finite, numbers, 0)) < MAX_ABS_TIMESTAMP)
    secs = np.where(in_range, np.floor(np.where(in_range, numbers, 0)), 0).astype("int64")
    known = in_range.copy()
    reasons.add(~empty & ~strings & ~finite, "unparseable timestamp")
    reasons.add(finite & ~in_range, "timestamp out of range")
    if strings.any():
        parsed = pd.to_datetime(text[strings], utc=True, errors="coerce", format="ISO8601")
        ok = parsed.notna().to_numpy()
        where = np.flatnonzero(strings)
        secs[where[ok]] = ((parsed[ok] - _EPOCH) // pd.Timedelta(seconds=1)).to_numpy("int64")
        known[where[ok]] = True
        bad = np.zeros(n, dtype=bool)
        bad[where[~ok]] = True
        reasons.add(bad, "unparseable timestamp")
    return _int_series(secs, known)


def split_tags(values: pd.Series, items: pd.Series) -> pd.DataFrame:
    """``item, tag, weight`` from a tags column: ``|``-separated strings or lists.

    A tag repeated for one item counts once more in ``weight``; blank tags are dropped.
    """
    def as_list(cell: object) -> list[str]:
        if cell is None or (isinstance(cell, float) and np.isnan(cell)):
            return []
        if isinstance(cell, str):
            return cell.split(TAG_SEPARATOR)
        return [str(tag) for tag in cell]  # type: ignore[attr-defined]

    if ptypes.is_string_dtype(values.dtype) and not ptypes.is_object_dtype(values.dtype):
        lists = values.fillna("").str.split(TAG_SEPARATOR, regex=False)
    else:
        lists = values.map(as_list)
    pairs = pd.DataFrame({"item": items.to_numpy(), "tag": lists.to_numpy()}).explode("tag")
    pairs = pairs[pairs["tag"].notna()]
    pairs["tag"] = pairs["tag"].astype(str).str.strip()
    pairs = pairs[pairs["tag"] != ""]
    counts = pairs.groupby(["item", "tag"], sort=False).size().rename("weight").reset_index()
    counts["weight"] = counts["weight"].astype("float64")
    return counts


def typed_attributes(frame: pd.DataFrame) -> pd.DataFrame:
    """Attribute columns with numbers where a whole text column is numeric.

    A text column becomes numeric only when every non-empty cell parses as a finite
    number and none has a leading zero (so zip codes like ``01002`` stay strings);
    integral columns become integers. Empty cells become missing (not stored).
    """
    out = {}
    for col in frame.columns:
        values = frame[col].reset_index(drop=True)
        if ptypes.is_string_dtype(values.dtype) or ptypes.is_object_dtype(values.dtype):
            text, empty = _text(values)
            all_text = pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty")
            if all_text and (~empty).any():
                numbers = pd.to_numeric(text.where(~empty), errors="coerce")
                parsed = numbers.notna().to_numpy() & np.isfinite(numbers.fillna(0).to_numpy())
                zeros = text.str.contains(_LEADING_ZERO, regex=True).to_numpy()
                if parsed[~empty].all() and not zeros[~empty].any():
                    values = numbers
                else:
                    values = values.astype(object).where(~empty, None)
            else:
                values = values.astype(object).where(~empty, None)
        if ptypes.is_float_dtype(values.dtype):
            known = values.dropna()
            if len(known) and bool((known == np.floor(known)).all()) and known.abs().max() < 2**53:
                values = values.astype("Int64")
        out[str(col)] = values
    return pd.DataFrame(out, index=range(len(frame)))


# -- per-kind checks ----------------------------------------------------------------
def _finish(source: Source, clean: pd.DataFrame, reasons: _Reasons, used: list[str]) -> Checked:
    rows = np.arange(1, len(source.frame) + 1)
    bad = reasons.bad
    rejects = pd.DataFrame({"row": rows[bad], "reason": reasons.values[bad].astype(str)})
    clean = clean.assign(row=rows).loc[~bad].reset_index(drop=True)
    ignored = [str(c) for c in source.frame.columns if c not in used]
    return Checked(source, clean, rejects, ignored_columns=ignored)


def check_interactions(source: Source, columns: ColumnNames) -> Checked:
    """``user, item, weight, ts`` rows (one per accepted input row)."""
    frame = source.frame
    required = [columns.user, columns.item]
    required += [c for c in (columns.weight, columns.time) if c is not None]
    require_columns(source, required)
    reasons = _Reasons.of(source)
    users = parse_ids(frame[columns.user], "user id", reasons)
    items = parse_ids(frame[columns.item], "item id", reasons)
    used = [columns.user, columns.item]
    if columns.weight_name in frame.columns:
        weights = parse_weights(frame[columns.weight_name], reasons)
        used.append(columns.weight_name)
    else:
        weights = np.ones(len(frame))
    if columns.time_name in frame.columns:
        ts = parse_timestamps(frame[columns.time_name], reasons)
        used.append(columns.time_name)
    else:
        ts = _int_series(np.zeros(len(frame)), np.zeros(len(frame), dtype=bool))
    clean = pd.DataFrame(
        {"user": users.to_numpy(), "item": items.to_numpy(), "weight": weights, "ts": ts.array}
    )
    return _finish(source, clean, reasons, used)


def check_social(source: Source, columns: ColumnNames) -> Checked:
    """``user, friend`` rows; self-friendships are rejected."""
    frame = source.frame
    require_columns(source, [columns.user, columns.friend])
    reasons = _Reasons.of(source)
    users = parse_ids(frame[columns.user], "user id", reasons)
    friends = parse_ids(frame[columns.friend], "friend id", reasons)
    reasons.add((users == friends).fillna(False).to_numpy(dtype=bool), "self-friendship")
    clean = pd.DataFrame({"user": users.to_numpy(), "friend": friends.to_numpy()})
    return _finish(source, clean, reasons, [columns.user, columns.friend])


def check_taggings(source: Source, columns: ColumnNames) -> Checked:
    """``user, item, tag`` rows: one tagging event each (who put which tag on which item)."""
    frame = source.frame
    require_columns(source, [columns.user, columns.item, columns.tag])
    reasons = _Reasons.of(source)
    users = parse_ids(frame[columns.user], "user id", reasons)
    items = parse_ids(frame[columns.item], "item id", reasons)
    tags = parse_ids(frame[columns.tag], "tag", reasons)
    tags = tags.where(tags.isna(), tags.astype(str).str.strip())  # as split_tags does
    clean = pd.DataFrame({"user": users.to_numpy(), "item": items.to_numpy(),
                          "tag": tags.to_numpy()})
    return _finish(source, clean, reasons, [columns.user, columns.item, columns.tag])


def _check_nodes(source: Source, id_col: str, what: str, skip: list[str]) -> Checked:
    frame = source.frame
    require_columns(source, [id_col])
    attr_cols = [c for c in frame.columns if c != id_col and c not in skip]
    if "id" in attr_cols:
        raise IngestError(
            f"{source.name}: column 'id' would overwrite the {what} node key "
            f"(the key comes from column {id_col!r}); rename it"
        )
    reasons = _Reasons.of(source)
    ids = parse_ids(frame[id_col], f"{what} id", reasons)
    reasons.add(ids.duplicated(keep="first").to_numpy() & ids.notna().to_numpy(),
                f"duplicate {what} id")
    attrs = typed_attributes(frame[attr_cols])
    clean = pd.concat([pd.DataFrame({"id": ids.to_numpy()}), attrs], axis=1)
    return _finish(source, clean, reasons, [id_col, *attr_cols])


def check_users(source: Source, columns: ColumnNames) -> Checked:
    """``id`` plus typed attribute columns; duplicate ids after the first are rejected."""
    return _check_nodes(source, columns.user, "user", [])


def check_items(source: Source, columns: ColumnNames) -> Checked:
    """Like :func:`check_users`; the optional tags column becomes ``Checked.tags``."""
    tag_col = [columns.tags] if columns.tags in source.frame.columns else []
    checked = _check_nodes(source, columns.item, "item", tag_col)
    if tag_col:
        keep = checked.clean["row"].to_numpy() - 1
        checked.tags = split_tags(
            source.frame[columns.tags].iloc[keep], checked.clean["id"]
        )
        long = checked.tags.loc[checked.tags["tag"].str.len() > MAX_ID_LENGTH, "item"]
        checked.reject(checked.clean["id"].isin(long),
                       f"tag longer than {MAX_ID_LENGTH:,} characters")
        checked.ignored_columns = [c for c in checked.ignored_columns if c != columns.tags]
    else:
        checked.tags = pd.DataFrame({"item": [], "tag": [], "weight": []})
    return checked


CHECKS = {
    "interactions": check_interactions,
    "social": check_social,
    "items": check_items,
    "users": check_users,
    "taggings": check_taggings,
}


def check_source(source: Source, columns: ColumnNames | None = None) -> Checked:
    """Dispatch on ``source.kind``."""
    return CHECKS[source.kind](source, columns or ColumnNames())


# -- shaping accepted rows for the graph ---------------------------------------------
def aggregate_interactions(clean: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, item): weights summed, latest time stamp kept."""
    if not clean.duplicated(["user", "item"]).any():
        return clean[["user", "item", "weight", "ts"]].reset_index(drop=True)
    return (
        clean.groupby(["user", "item"], sort=False)
        .agg(weight=("weight", "sum"), ts=("ts", "max"))
        .reset_index()
    )


def canonical_pairs(clean: pd.DataFrame) -> pd.DataFrame:
    """``a, b`` with ``a < b`` (string order), one row per unordered pair."""
    users = clean["user"].to_numpy(dtype=object)
    friends = clean["friend"].to_numpy(dtype=object)
    first = users < friends
    pairs = pd.DataFrame(
        {"a": np.where(first, users, friends), "b": np.where(first, friends, users)}
    )
    return pairs.drop_duplicates().reset_index(drop=True)
