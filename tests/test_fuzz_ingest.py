"""Property tests of the readers and validation (issue 21: the fuzz part of the suite).

Random interaction tables with hostile cells (blank, over-long, boolean, binary, float,
lone surrogate, quotes and separators, ragged rows) written as CSV or Parquet or given as
DataFrames. Invariants: ``read == loaded + rejected``; every accepted id follows the id
rule; a reference implementation of the rule agrees cell by cell; and, against the real
Neo4j, the database holds exactly the accepted rows' pairs after an ingest.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gnnrec.ingest.pipeline import IngestOptions, ingest, prepare
from gnnrec.ingest.readers import Source, read_source
from gnnrec.ingest.validate import MAX_ID_LENGTH, aggregate_interactions

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
HOSTILE_TEXT = st.one_of(
    TEXT,
    st.sampled_from(["", " ", "\t", "007", "1.0", "NA", "null", "true", 'a"b', "a,b", "x\ny",
                     "x\ry",
                     "MATCH (n) DETACH DELETE n", "u" * (MAX_ID_LENGTH + 1),
                     "é" * MAX_ID_LENGTH]),
)
CELL = st.one_of(
    HOSTILE_TEXT,
    st.integers(min_value=-(2**62), max_value=2**62),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.binary(max_size=6),
    st.none(),
)


def expected_id(cell: Any) -> str | None:
    """The id rule, written out plainly (the reference the vectorised code must match)."""
    if cell is None or isinstance(cell, bool):
        return None
    if isinstance(cell, bytes):
        try:
            cell = cell.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(cell, float):
        if math.isnan(cell) or math.isinf(cell) or cell != int(cell):
            return None
        cell = int(cell)
    text = str(cell)
    if not text.strip() or len(text) > MAX_ID_LENGTH:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


def _counts_reconcile(checked: Any) -> None:
    assert checked.read == checked.loaded + checked.rejected
    assert set(checked.clean["row"]).isdisjoint(set(checked.rejects["row"]))
    assert sorted([*checked.clean["row"], *checked.rejects["row"]]) == list(
        range(1, checked.read + 1))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(CELL, CELL), max_size=25))
def test_dataframe_cells_follow_the_id_rule(rows: list[tuple[Any, Any]]) -> None:
    frame = pd.DataFrame({"user": pd.Series([u for u, _ in rows], dtype=object),
                          "item": pd.Series([i for _, i in rows], dtype=object)})
    (checked,) = prepare(None, [Source.from_frame("interactions", frame)], IngestOptions())
    _counts_reconcile(checked)
    wanted = [(expected_id(u), expected_id(i)) for u, i in rows]
    good = [(n + 1, u, i) for n, (u, i) in enumerate(wanted) if u is not None and i is not None]
    got = list(zip(checked.clean["row"], checked.clean["user"], checked.clean["item"],
                   strict=True))
    assert got == good


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(HOSTILE_TEXT, HOSTILE_TEXT, st.sampled_from(["1", "2.5", "-1", "x",
                                                                        "", "inf"])),
                max_size=25),
       st.lists(st.integers(min_value=0, max_value=24), max_size=3),
       st.sampled_from(["csv", "parquet"]))
def test_files_read_equals_loaded_plus_rejected(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[str, str, str]],
    ragged: list[int], fmt: str,
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / f"i.{fmt}"
    frame = pd.DataFrame(rows, columns=["user", "item", "weight"], dtype=object)
    if fmt == "parquet":
        frame.to_parquet(path)
        bad: set[int] = set()
    else:
        # One record per row, ended by "\n". Written with a "\r\n" terminator so that pandas
        # quotes a field holding a bare "\r" (with "\n" it leaves it bare, and a CSV reader
        # rightly ends a record there).
        records = [frame.iloc[:0].to_csv(index=False, lineterminator="\r\n")[:-2]]
        records += [frame.iloc[[n]].to_csv(index=False, header=False, lineterminator="\r\n")[:-2]
                    for n in range(len(frame))]
        text = "\n".join(records) + "\n"
        lines = text.split("\n")
        # Only break rows whose CSV record is one line (a quoted newline spans two).
        single = [n for n, r in enumerate(rows) if not any("\n" in c for c in r)]
        bad = {single[k % len(single)] + 1 for k in ragged} if single else set()
        line_of = {}
        line = 1
        for n, r in enumerate(rows):
            line_of[n + 1] = line
            line += 1 + sum(c.count("\n") for c in r)
        for row in bad:
            lines[line_of[row]] += ",extra"
        path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    try:
        source = read_source("interactions", path)
    except Exception as exc:  # only an undecodable file may stop the read, with its name
        assert str(path) in str(exc)
        return
    (checked,) = prepare(None, [source], IngestOptions())
    _counts_reconcile(checked)
    assert checked.read == len(rows)
    rejected = set(checked.rejects["row"])
    assert bad <= rejected
    for n, (user, item, weight) in enumerate(rows, start=1):
        ok = (n not in bad and expected_id(user) is not None and expected_id(item) is not None
              and weight in ("1", "2.5"))
        assert ok == (n not in rejected), (n, user, item, weight, checked.reasons())


@pytest.mark.integration
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.one_of(st.sampled_from(["a", "b", "c", "", "007", "u" * 2_001]),
                                    st.integers(0, 3), st.booleans()),
                          st.one_of(st.sampled_from(["1", "2", "x'y", " "]), st.integers(0, 3),
                                    st.floats(0, 3)),
                          st.floats(-1, 5)),
                min_size=1, max_size=30))
def test_the_database_holds_exactly_the_accepted_rows(
    graph_client: Any, tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[Any, Any, float]],
) -> None:
    from gnnrec.graph.schema import clear_database

    clear_database(graph_client)
    frame = pd.DataFrame({"user": pd.Series([r[0] for r in rows], dtype=object),
                          "item": pd.Series([r[1] for r in rows], dtype=object),
                          "weight": [r[2] for r in rows]})
    out = tmp_path_factory.mktemp("rejects") / "r.csv"
    summary = ingest(graph_client, [Source.from_frame("interactions", frame)],
                     IngestOptions(batch_size=7, reject_file=out))
    assert summary["read"] == summary["loaded"] + summary["rejected"] == len(rows)
    good = [(expected_id(u), expected_id(i), w) for u, i, w in rows]
    good = [(u, i, w) for u, i, w in good if u is not None and i is not None and w >= 0]
    assert summary["loaded"] == len(good)
    want = aggregate_interactions(pd.DataFrame(good, columns=["user", "item", "weight"])
                                  .assign(ts=pd.NA)) if good else None
    stored = graph_client.read("MATCH (u:User)-[r:INTERACTED]->(i:Item) "
                               "RETURN u.id AS user, i.id AS item, r.weight AS weight")
    expected = ({} if want is None else
                {(u, i): pytest.approx(w) for u, i, w in want[["user", "item", "weight"]]
                 .itertuples(index=False)})
    assert {(r["user"], r["item"]): r["weight"] for r in stored} == expected
    users = {r["id"] for r in graph_client.read("MATCH (u:User) RETURN u.id AS id")}
    assert users == {u for u, _, _ in good}
    assert Path(out).exists() == (summary["rejected"] > 0)
