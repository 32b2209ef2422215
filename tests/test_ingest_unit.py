"""Unit tests of the ingest package: readers, validation, pseudonyms, synthetic data.

No Neo4j server: the pipeline is exercised up to (not including) the writes, with a
stub client where the strict mode needs a database lookup.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gnnrec.errors import GnnrecError
from gnnrec.ingest.errors import MissingColumnError, SourceFileError
from gnnrec.ingest.pipeline import IngestOptions, default_reject_path, prepare, write_rejects
from gnnrec.ingest.privacy import load_key, pseudonym, pseudonymize_ids
from gnnrec.ingest.readers import Source, read_source, read_table, sources_from_files
from gnnrec.ingest.synthetic import generate
from gnnrec.ingest.validate import (
    UNKNOWN_USER,
    ColumnNames,
    aggregate_interactions,
    canonical_pairs,
    check_source,
    typed_attributes,
)

WEIRD_IDS = ["007", "NA", "null", "1e5", "a'b\"c", "{x}", "`tick`", "MATCH (n) DETACH DELETE n",
             "ünï 字", " padded "]


def _csv(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _interactions(frame: pd.DataFrame) -> Source:
    return Source.from_frame("interactions", frame)


# -- readers -------------------------------------------------------------------------------
def test_csv_ids_are_read_verbatim_as_strings(tmp_path: Path) -> None:
    frame = pd.DataFrame({"user": WEIRD_IDS, "item": WEIRD_IDS[::-1]})
    path = tmp_path / "i.csv"
    frame.to_csv(path, index=False)
    checked = check_source(read_source("interactions", path))
    assert checked.clean["user"].tolist() == WEIRD_IDS
    assert checked.clean["item"].tolist() == WEIRD_IDS[::-1]
    assert checked.rejected == 0


def test_parquet_integer_ids_become_strings(tmp_path: Path) -> None:
    path = tmp_path / "i.parquet"
    pd.DataFrame({"user": [1, 2], "item": [10.0, 20.0], "weight": [1, 2]}).to_parquet(path)
    checked = check_source(read_source("interactions", path))
    assert checked.clean["user"].tolist() == ["1", "2"]
    assert checked.clean["item"].tolist() == ["10", "20"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", None, "file not found"),
        ("data.json", "{}", "unknown file type"),
        ("empty.csv", "", "empty"),
        ("latin.csv", b"user,item\n\xe9,1\n", "not UTF-8"),
        ("bad.parquet", b"not parquet", "cannot read parquet"),
    ],
)
def test_unreadable_files_raise_naming_the_file(
    tmp_path: Path, name: str, content: str | bytes | None, message: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(SourceFileError) as err:
        read_table(path)
    assert str(path) in str(err.value) and message in str(err.value)
    assert isinstance(err.value, GnnrecError)


def test_sources_from_files_reads_every_file_first(tmp_path: Path) -> None:
    good = _csv(tmp_path, "i.csv", "user,item\n1,2\n")
    with pytest.raises(SourceFileError, match="nope.csv"):
        sources_from_files(interactions=good, social=tmp_path / "nope.csv")


# -- validation ----------------------------------------------------------------------------
def test_bad_rows_get_reasons_and_counts_reconcile(tmp_path: Path) -> None:
    path = _csv(tmp_path, "i.csv", (
        "user,item,weight,timestamp\n"
        "u1,i1,1.5,1700000000\n"       # 1 ok
        ",i1,1,\n"                     # 2 empty user
        "u1,  ,1,\n"                   # 3 empty item
        "u2,i2,abc,\n"                 # 4 weight not a number
        "u2,i3,NaN,\n"                 # 5 NaN weight
        "u2,i4,-2,\n"                  # 6 negative weight
        "u2,i5,inf,\n"                 # 7 not finite
        "u2,i6,,\n"                    # 8 missing weight
        "u3,i1,2,yesterday\n"          # 9 bad timestamp
        "u3,i2,2,2021-03-04T05:06:07Z\n"  # 10 ok
        "u3,i3,2,1700000000000\n"      # 11 milliseconds
        "u3,i4,0,\n"                   # 12 ok, zero weight, no time
    ))
    checked = check_source(read_source("interactions", path))
    reasons = dict(zip(checked.rejects["row"], checked.rejects["reason"], strict=True))
    assert reasons == {
        2: "empty user id", 3: "empty item id", 4: "weight is not a number",
        5: "weight is not a number", 6: "negative weight", 7: "weight is not finite",
        8: "missing weight", 9: "unparseable timestamp", 11: "timestamp out of range",
    }
    assert checked.read == 12 and checked.loaded == 3 and checked.rejected == 9
    assert checked.clean["row"].tolist() == [1, 10, 12]
    assert checked.clean["ts"].tolist()[:2] == [1700000000, 1614834367]
    assert checked.clean["ts"].isna().tolist() == [False, False, True]
    frame = checked.reject_frame()
    assert list(frame.columns) == ["row", "user", "item", "weight", "timestamp", "reason"]
    assert frame.loc[frame["row"] == 4, "weight"].item() == "abc"


def test_timestamps_from_numbers_iso_strings_and_datetimes() -> None:
    frame = pd.DataFrame({
        "user": ["a", "b", "c", "d"], "item": ["x"] * 4,
        "timestamp": ["881250949", "881250949.9", "2020-01-01", "2020-01-01T01:00:00+01:00"],
    })
    ts = check_source(_interactions(frame)).clean["ts"].tolist()
    assert ts == [881250949, 881250949, 1577836800, 1577836800]
    frame["timestamp"] = pd.to_datetime(["2020-01-01"] * 4)
    assert check_source(_interactions(frame)).clean["ts"].tolist() == [1577836800] * 4
    frame["timestamp"] = [1.5, np.nan, 3.0, 4.0]
    assert check_source(_interactions(frame)).clean["ts"].tolist()[0] == 1
    assert check_source(_interactions(frame)).clean["ts"].isna().sum() == 1


def test_missing_and_renamed_columns() -> None:
    frame = pd.DataFrame({"uid": ["1"], "iid": ["2"], "score": ["3"], "when": ["4"]})
    with pytest.raises(MissingColumnError, match=r"<interactions DataFrame>.*'user'.*'item'"):
        check_source(_interactions(frame))
    cols = ColumnNames(user="uid", item="iid", weight="score", time="when")
    clean = check_source(_interactions(frame), cols).clean
    assert clean[["user", "item", "weight", "ts"]].iloc[0].tolist() == ["1", "2", 3.0, 4]
    with pytest.raises(MissingColumnError, match="'rating'"):
        check_source(_interactions(frame), ColumnNames(user="uid", item="iid", weight="rating"))
    no_weight = check_source(_interactions(frame[["uid", "iid"]]), ColumnNames("uid", "iid"))
    assert no_weight.clean["weight"].tolist() == [1.0]


def test_social_rejects_self_friendship_and_collapses_directions() -> None:
    frame = pd.DataFrame({"user": ["a", "b", "c", "c", "", "b"],
                          "friend": ["b", "a", "c", "a", "a", "c"]})
    checked = check_source(Source.from_frame("social", frame))
    assert checked.rejects["reason"].tolist() == ["self-friendship", "empty user id"]
    assert checked.loaded == 4
    pairs = canonical_pairs(checked.clean)
    assert sorted(map(tuple, pairs.to_numpy().tolist())) == [("a", "b"), ("a", "c"), ("b", "c")]


def test_duplicate_pairs_in_one_file_sum_weights_and_keep_latest_ts() -> None:
    frame = pd.DataFrame({"user": ["u", "u", "v"], "item": ["i", "i", "i"],
                          "weight": ["1", "2", "5"], "timestamp": ["10", "30", ""]})
    checked = check_source(_interactions(frame))
    assert checked.loaded == 3
    agg = aggregate_interactions(checked.clean).set_index("user")
    assert agg.loc["u", "weight"] == 3.0 and agg.loc["u", "ts"] == 30
    assert agg.loc["v", "weight"] == 5.0 and pd.isna(agg.loc["v", "ts"])


def test_items_tags_attributes_and_duplicates() -> None:
    frame = pd.DataFrame({
        "item": ["a", "b", "a", ""],
        "year": ["1995", "", "2000", "1"],
        "zip": ["01002", "3", "4", "5"],
        "price": ["1.5", "2", "3", "4"],
        "tags": ["rock|pop|rock", " | jazz ", "x", "y"],
    })
    checked = check_source(Source.from_frame("items", frame))
    assert checked.rejects["reason"].tolist() == ["duplicate item id", "empty item id"]
    clean = checked.clean.set_index("id")
    assert clean.loc["a", "year"] == 1995 and pd.isna(clean.loc["b", "year"])
    assert clean.loc["a", "zip"] == "01002"  # leading zero keeps the column textual
    assert clean.loc["b", "price"] == 2.0
    assert "tags" not in clean.columns
    tags = {(r.item, r.tag): r.weight for r in checked.tags.itertuples()}
    assert tags == {("a", "rock"): 2.0, ("a", "pop"): 1.0, ("b", "jazz"): 1.0}


def test_list_tags_and_id_column_clash() -> None:
    frame = pd.DataFrame({"item": ["a"], "tags": [["x", "x", "y"]]})
    tags = check_source(Source.from_frame("items", frame)).tags
    assert sorted(zip(tags["tag"], tags["weight"], strict=True)) == [("x", 2.0), ("y", 1.0)]
    with pytest.raises(GnnrecError, match="column 'id'"):
        check_source(Source.from_frame("users", pd.DataFrame({"user": ["1"], "id": ["2"]})))


def test_typed_attributes_keeps_mixed_text() -> None:
    out = typed_attributes(pd.DataFrame({"a": ["1", "x"], "b": ["1", "2"], "c": ["", ""]}))
    assert out["a"].tolist() == ["1", "x"]
    assert out["b"].tolist() == [1, 2]
    assert out["c"].isna().all()


# -- pipeline preparation (no writes) -------------------------------------------------------
class _StubClient:
    """Answers the strict-mode lookup (and holds no forget tombstone); fails the test on
    any write."""

    def __init__(self, existing: set[str]) -> None:
        self.existing = existing

    def read(self, cypher: str, params: dict) -> list[dict]:
        if "ids" not in params:  # the tombstone lookup
            return []
        return [{"id": i} for i in params["ids"] if i in self.existing]

    def write_batches(self, *args: object, **kwargs: object) -> int:
        raise AssertionError("prepare must not write")


def test_strict_rejects_unknown_users() -> None:
    sources = [
        Source.from_frame("users", pd.DataFrame({"user": ["a"]})),
        Source.from_frame("interactions", pd.DataFrame({"user": ["a", "b", "z"],
                                                        "item": ["i"] * 3})),
        Source.from_frame("social", pd.DataFrame({"user": ["a", "a"], "friend": ["b", "z"]})),
    ]
    checked = prepare(_StubClient({"b"}), sources, IngestOptions(strict=True))  # type: ignore[arg-type]
    by_kind = {c.source.kind: c for c in checked}
    assert by_kind["interactions"].clean["user"].tolist() == ["a", "b"]
    assert by_kind["interactions"].rejects.to_dict("records") == [
        {"row": 3, "reason": UNKNOWN_USER}]
    assert by_kind["social"].rejects["row"].tolist() == [2]
    assert all(c.read == c.loaded + c.rejected for c in checked)
    loose = prepare(_StubClient(set()), sources, IngestOptions())  # type: ignore[arg-type]
    assert sum(c.rejected for c in loose) == 0


def test_prepare_raises_on_missing_column_in_any_source() -> None:
    sources = [
        Source.from_frame("interactions", pd.DataFrame({"user": ["a"], "item": ["i"]})),
        Source.from_frame("social", pd.DataFrame({"user": ["a"], "buddy": ["b"]})),
    ]
    with pytest.raises(MissingColumnError, match="'friend'"):
        prepare(_StubClient(set()), sources, IngestOptions())  # type: ignore[arg-type]


def test_reject_file_layout(tmp_path: Path) -> None:
    sources = [
        Source.from_frame("interactions", pd.DataFrame({"user": ["", "a"], "item": ["i", "j"]})),
        Source.from_frame("social", pd.DataFrame({"user": ["a"], "friend": ["a"]})),
    ]
    checked = prepare(None, sources, IngestOptions())
    path = write_rejects(checked, tmp_path / "r" / "rejects.csv")
    assert path is not None
    out = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(out.columns) == ["source", "row", "user", "item", "friend", "reason"]
    assert out.to_dict("records") == [
        {"source": "interactions", "row": "1", "user": "", "item": "i", "friend": "",
         "reason": "empty user id"},
        {"source": "social", "row": "1", "user": "a", "item": "", "friend": "a",
         "reason": "self-friendship"},
    ]
    clean = [Source.from_frame("interactions", pd.DataFrame({"user": ["a"], "item": ["i"]}))]
    assert write_rejects(prepare(None, clean, IngestOptions()), tmp_path / "none.csv") is None
    assert not (tmp_path / "none.csv").exists()


def test_default_reject_path_is_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GNNREC_HOME", str(tmp_path))
    path = default_reject_path("ratings")
    assert path.parent == tmp_path / "rejects" and path.name.startswith("ratings-")


def test_cli_argument_errors_need_no_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gnnrec.cli import main

    good = _csv(tmp_path, "i.csv", "user,item\n1,2\n")
    assert main(["ingest", "--dataset", "lastfm", "--interactions", str(good)]) == 2
    assert "either --dataset or source files" in capsys.readouterr().err
    assert main(["ingest"]) == 2
    assert "nothing to ingest" in capsys.readouterr().err
    assert main(["ingest", "--interactions", str(tmp_path / "gone.csv")]) == 2
    assert "gone.csv: file not found" in capsys.readouterr().err


# -- pseudonymisation ----------------------------------------------------------------------
def test_key_file_is_private_and_stable(tmp_path: Path) -> None:
    key_file = tmp_path / "sub" / "pseudonym.key"
    key = load_key(key_file)
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert load_key(key_file) == key and len(key) == 32
    p = pseudonym("alice", key)
    assert p.startswith("u_") and len(p) == 34 and p == pseudonym("alice", load_key(key_file))
    assert pseudonym("alice", load_key(tmp_path / "other.key")) != p
    with pytest.raises(GnnrecError, match="not found"):
        load_key(tmp_path / "absent.key", create=False)


def test_pseudonymize_ids_maps_each_id_and_keeps_blanks() -> None:
    key = b"k" * 32
    ids = pd.Series(["a", "b", "a", "", None])
    out = pseudonymize_ids(ids, key).tolist()
    assert out[0] == out[2] == pseudonym("a", key) and out[1] == pseudonym("b", key)
    assert out[3] == "" and pd.isna(out[4])


def test_pseudonymized_sources_keep_self_friendship_detection(tmp_path: Path) -> None:
    sources = [Source.from_frame("social", pd.DataFrame({"user": ["a", "a"],
                                                         "friend": ["a", "b"]}))]
    options = IngestOptions(pseudonymize=True, key_file=tmp_path / "k")
    (checked,) = prepare(None, sources, options)
    assert checked.rejects["reason"].tolist() == ["self-friendship"]
    assert checked.clean["user"].iloc[0].startswith("u_")
    assert checked.reject_frame()["user"].iloc[0].startswith("u_")  # raw ids never written


# -- synthetic -----------------------------------------------------------------------------
def test_synthetic_is_seeded_and_well_formed() -> None:
    a = generate(300, 200, seed=7, friend_density=0.05)
    b = generate(300, 200, seed=7, friend_density=0.05)
    c = generate(300, 200, seed=8, friend_density=0.05)
    for name in ("users", "items", "interactions", "social"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert not a.interactions.equals(c.interactions)
    assert len(a.users) == 300 and len(a.items) == 200
    assert not a.interactions.duplicated(["user", "item"]).any()
    assert a.interactions["weight"].between(1, 5).all()
    assert (a.social["user"] < a.social["friend"]).all()
    assert not a.social.duplicated().any()
    assert a.interactions["user"].isin(a.users["user"]).all()
    assert a.interactions["item"].isin(a.items["item"]).all()
    assert all(len(t) >= 1 for t in a.items["tags"])
    checked = prepare(None, a.sources(), IngestOptions())
    assert sum(ch.rejected for ch in checked) == 0


def test_synthetic_friends_and_interactions_follow_communities() -> None:
    data = generate(2_000, 1_000, seed=0, friend_density=0.005)
    comm = data.users.set_index("user")["community"]
    same = (comm[data.social["user"]].to_numpy() == comm[data.social["friend"]].to_numpy())
    k = comm.nunique()
    assert same.mean() > 0.6 > 1.0 / k  # homophily far above chance
    item_comm = data.items.set_index("item")["community"]
    inter = data.interactions
    local = comm[inter["user"]].to_numpy() == item_comm[inter["item"]].to_numpy()
    assert local.mean() > 0.6
    expected_pairs = 0.005 * 2_000 * 1_999 / 2
    assert 0.8 * expected_pairs < len(data.social) < 1.1 * expected_pairs
