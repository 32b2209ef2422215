"""Every command that talks to Neo4j answers an unreachable server, wrong credentials and a
missing database with one clear line on stderr and exit code 2 (issue 21, item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gnnrec.cli import main
from gnnrec.graph.server import free_port
from gnnrec.graph.settings import Neo4jSettings

pytestmark = pytest.mark.integration


def _commands(tmp_path: Path) -> list[list[str]]:
    csv = tmp_path / "i.csv"
    csv.write_text("user,item\na,1\n", encoding="utf-8")
    return [
        ["cypher", "RETURN 1 AS one"],
        ["cypher", "CREATE (:Nothing)", "--write"],
        ["export", "--out", str(tmp_path / "g.pt")],
        ["stats"],
        ["ingest", "--interactions", str(csv), "--no-progress"],
        ["forget", "somebody"],
        ["neo4j", "reset", "--yes"],
        ["neo4j", "status"],
    ]


CASES = {
    "unreachable": (lambda s: {"NEO4J_URI": f"bolt://127.0.0.1:{free_port()}"},
                    "not reachable"),
    # A user that does not exist: wrong credentials all the same, without locking out the
    # suite's own user (Neo4j locks a user for a few seconds after failed logins).
    "wrong password": (lambda s: {"NEO4J_URI": s.uri, "NEO4J_USER": "gnnrec-nobody",
                                  "NEO4J_PASSWORD": "wrong-password"},
                       "refused the credentials"),
    "missing database": (lambda s: {"NEO4J_URI": s.uri, "NEO4J_USER": s.user,
                                    "NEO4J_PASSWORD": s.password,
                                    "NEO4J_DATABASE": "nosuchdb"},
                         "no database 'nosuchdb'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_and_exit_code_2(case: str, neo4j_settings: Neo4jSettings, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    env, expected = CASES[case]
    for key in ("NEO4J_USER", "NEO4J_PASSWORD", "NEO4J_DATABASE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env(neo4j_settings).items():
        monkeypatch.setenv(key, value)
    for argv in _commands(tmp_path):
        code = main(argv)
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert code == 2, (argv, captured)
        assert len(err) == 1 and err[0].startswith("error: "), (argv, err)
        assert expected in err[0], (argv, err)
        assert "Traceback" not in captured.err + captured.out
