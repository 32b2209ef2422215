"""Hostile input to the readers and validation (issue 21, items 3, 5 and 9).

Over-long ids, binary and float id columns, booleans, ragged CSV rows and repeated
header names: each becomes a rejected row with a reason, or a clear error naming the
file and the column, never a crash halfway through a load or two spellings of one id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gnnrec.ingest.errors import SourceFileError
from gnnrec.ingest.pipeline import IngestOptions, prepare, write_rejects
from gnnrec.ingest.readers import Source, read_source
from gnnrec.ingest.validate import MAX_ID_LENGTH, check_source


def _reasons(checked) -> dict[int, str]:  # noqa: ANN001 - Checked
    return dict(zip(checked.rejects["row"].tolist(), checked.rejects["reason"].tolist(),
                    strict=True))


# -- item 3: ids beyond Neo4j's index key limit ------------------------------------------
def test_over_long_ids_are_rejected_with_a_reason(tmp_path: Path) -> None:
    longest = "x" * MAX_ID_LENGTH
    path = tmp_path / "i.csv"
    pd.DataFrame({"user": ["a", "u" * 9_000, longest, "b"],
                  "item": ["1", "2", "3", "é" * (MAX_ID_LENGTH + 1)]}).to_csv(path, index=False)
    checked = check_source(read_source("interactions", path))
    assert _reasons(checked) == {
        2: f"user id longer than {MAX_ID_LENGTH:,} characters",
        4: f"item id longer than {MAX_ID_LENGTH:,} characters",
    }
    assert checked.clean["user"].tolist() == ["a", longest]
    assert checked.read == checked.loaded + checked.rejected


@pytest.mark.parametrize("kind,frame,reason", [
    ("social", {"user": ["a"], "friend": ["f" * 9_000]}, "friend id longer"),
    ("users", {"user": ["u" * 9_000]}, "user id longer"),
    ("items", {"item": ["i" * 9_000], "tags": ["t"]}, "item id longer"),
    ("items", {"item": ["i"], "tags": ["ok|" + "t" * 9_000]}, "tag longer"),
    ("taggings", {"user": ["u"], "item": ["i"], "tag": ["t" * 9_000]}, "tag longer"),
])
def test_every_key_column_has_the_length_limit(kind: str, frame: dict, reason: str) -> None:
    checked = check_source(Source.from_frame(kind, pd.DataFrame(frame)))  # type: ignore[arg-type]
    assert checked.rejected == 1 and checked.loaded == 0
    assert checked.rejects["reason"].iloc[0].startswith(reason)


# -- item 5: one canonical id rule for every reader --------------------------------------------
def test_binary_ids_are_decoded_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "i.parquet"
    table = pa.table({"user": pa.array([b"alice", b"bob", b"\xff\xfe"], pa.binary()),
                      "item": pa.array([b"1", b"2", b"3"], pa.binary())})
    pq.write_table(table, path)
    checked = check_source(read_source("interactions", path))
    assert checked.clean["user"].tolist() == ["alice", "bob"]
    assert checked.clean["item"].tolist() == ["1", "2"]
    assert _reasons(checked) == {3: "user id is not UTF-8 text"}


def test_float_ids_are_integers_whatever_the_other_rows(tmp_path: Path) -> None:
    # The same id 1.0 in two files: one with only integral floats, one mixed with 1.5.
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pd.DataFrame({"user": [1.0, 2.0], "item": [3.0, 4.0]}).to_parquet(a)
    pd.DataFrame({"user": [1.0, 1.5, np.inf, np.nan], "item": [3.0, 3.0, 3.0, 3.0]}).to_parquet(b)
    first = check_source(read_source("interactions", a))
    second = check_source(read_source("interactions", b))
    assert first.clean["user"].tolist() == ["1", "2"]
    assert second.clean["user"].tolist() == ["1"]  # never "1.0"
    assert second.clean["item"].tolist() == ["3"]
    assert _reasons(second) == {2: "user id is a non-integral number",
                                3: "user id is a non-integral number",
                                4: "empty user id"}


def test_dataframe_objects_follow_the_same_rule() -> None:
    frame = pd.DataFrame({"user": pd.Series([1.0, 7, "x", b"y", True, 2**60, 2.5], dtype=object),
                          "item": ["i"] * 7})
    checked = check_source(Source.from_frame("interactions", frame))
    assert checked.clean["user"].tolist() == ["1", "7", "x", "y", str(2**60)]
    assert _reasons(checked) == {5: "user id is a boolean",
                                 7: "user id is a non-integral number"}


def test_boolean_id_column_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "u.parquet"
    pd.DataFrame({"user": [True, False], "item": ["1", "2"]}).to_parquet(path)
    checked = check_source(read_source("interactions", path))
    assert checked.loaded == 0
    assert set(_reasons(checked).values()) == {"user id is a boolean"}


# -- item 9: ragged rows and repeated header names ----------------------------------------------
def test_ragged_csv_rows_become_rejected_rows(tmp_path: Path) -> None:
    path = tmp_path / "i.csv"
    path.write_text('user,item,weight\n'
                    'a,1,1\n'
                    'b,2,2,extra\n'       # one field too many
                    'c,3\n'               # one too few
                    '"d,quoted",4,3\n'    # a quoted comma is one field
                    'e,5,4\n', encoding="utf-8")
    source = read_source("interactions", path)
    checked = check_source(source)
    assert checked.clean["user"].tolist() == ["a", "d,quoted", "e"]
    assert _reasons(checked) == {2: "row has 4 fields, the header has 3",
                                 3: "row has 2 fields, the header has 3"}
    assert checked.read == 5 == checked.loaded + checked.rejected
    out = write_rejects([checked], tmp_path / "rejects.csv")
    rejects = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert rejects["row"].tolist() == ["2", "3"]
    assert rejects["user"].tolist() == ["b", "c"]


def test_ragged_rows_keep_their_row_numbers_next_to_a_blank_looking_line(
        tmp_path: Path) -> None:
    # pandas' parser drops a line holding only a space while the csv module keeps it as a
    # one-field record: the frame and the reasons must count rows the same way (the reasons
    # once named row 3 of a 2-row frame: IndexError, or a valid row rejected in its place).
    path = tmp_path / "i.csv"
    path.write_text("user,item,weight\na,1,1\n \nb,2,2,extra\nc,3,3\n", encoding="utf-8")
    checked = check_source(read_source("interactions", path))
    assert _reasons(checked) == {2: "row has 1 fields, the header has 3",
                                 3: "row has 4 fields, the header has 3"}
    assert checked.clean["user"].tolist() == ["a", "c"]
    assert checked.read == 4 == checked.loaded + checked.rejected


def test_duplicate_header_is_an_error_naming_the_column(tmp_path: Path) -> None:
    path = tmp_path / "i.csv"
    path.write_text("user,item,user\na,1,b\n", encoding="utf-8")
    with pytest.raises(SourceFileError, match=r"i\.csv.*column 'user' appears 2 times"):
        read_source("interactions", path)
    frame = pd.DataFrame([["a", "1", "b"]], columns=["user", "item", "user"])
    with pytest.raises(SourceFileError, match="column 'user' appears 2 times"):
        prepare(None, [Source.from_frame("interactions", frame)], IngestOptions())


@pytest.mark.integration
def test_a_9000_byte_id_is_one_rejected_row_of_a_full_ingest(graph_client, tmp_path: Path) -> None:  # noqa: ANN001
    from gnnrec.graph.load import graph_stats
    from gnnrec.ingest.pipeline import ingest

    path = tmp_path / "i.csv"
    users = [f"u{i}" for i in range(30)]
    users[17] = "u" * 9_000
    pd.DataFrame({"user": users, "item": [f"i{i % 7}" for i in range(30)]}).to_csv(path,
                                                                                   index=False)
    summary = ingest(graph_client, [read_source("interactions", path)],
                     IngestOptions(batch_size=4, reject_file=tmp_path / "rejects.csv"))
    assert (summary["read"], summary["loaded"], summary["rejected"]) == (30, 29, 1)
    assert graph_stats(graph_client)["relationships"]["INTERACTED"] == 29
    rejects = pd.read_csv(tmp_path / "rejects.csv", dtype=str)
    assert rejects["row"].tolist() == ["18"]
    assert rejects["reason"].tolist() == [f"user id longer than {MAX_ID_LENGTH:,} characters"]
