"""The local Neo4j server: start/stop/status, auth, port clash, clean restart, CLI."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

import pytest

from gnnrec.cli import main
from gnnrec.graph.client import GraphClient
from gnnrec.graph.server import LocalNeo4j, Neo4jServerError, free_port
from gnnrec.graph.settings import Neo4jSettings

pytestmark = pytest.mark.integration


def _skip_if_external(server: LocalNeo4j | None) -> LocalNeo4j:
    if server is None:
        pytest.skip("NEO4J_URI points at an external server")
    return server


def test_password_file_is_private(local_neo4j: LocalNeo4j | None) -> None:
    server = _skip_if_external(local_neo4j)
    mode = stat.S_IMODE((server.dir / "password").stat().st_mode)
    assert mode == 0o600


def test_auth_is_on(local_neo4j: LocalNeo4j | None) -> None:
    from neo4j.exceptions import AuthError

    server = _skip_if_external(local_neo4j)
    wrong = Neo4jSettings(uri=server.bolt_uri, user="neo4j", password="not-the-password")
    with GraphClient(wrong) as client, pytest.raises(AuthError):
        client.read("RETURN 1 AS one")


def test_start_when_running_says_so(local_neo4j: LocalNeo4j | None) -> None:
    server = _skip_if_external(local_neo4j)
    status, started = LocalNeo4j(home=server.home).start()
    assert not started and status.running and status.pid == server.pid()


def test_status_json(local_neo4j: LocalNeo4j | None, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> None:
    server = _skip_if_external(local_neo4j)
    monkeypatch.delenv("NEO4J_URI", raising=False)
    monkeypatch.setenv("GNNREC_HOME", str(server.home))
    assert main(["neo4j", "status", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["running"] is True
    assert info["uri"] == server.bolt_uri
    assert info["version"].startswith("5.26")


def test_port_in_use_names_the_port(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        server = LocalNeo4j(home=tmp_path, bolt_port=port, http_port=free_port())
        with pytest.raises(Neo4jServerError, match=f"port {port}"):
            server.start()
    assert server.pid() is None


def test_stop_then_start_keeps_data(tmp_path: Path, local_neo4j: LocalNeo4j | None) -> None:
    _skip_if_external(local_neo4j)
    server = LocalNeo4j(home=tmp_path, bolt_port=free_port(), http_port=free_port())
    server.start()
    try:
        settings = Neo4jSettings(server.bolt_uri, "neo4j", server.password())
        with GraphClient(settings) as client:
            client.write("CREATE (:Probe {id: $id})", {"id": "kept"})
        assert server.stop() is True
        assert server.status().running is False
        server.start()
        with GraphClient(settings) as client:
            rows = client.read("MATCH (p:Probe) RETURN p.id AS id")
        assert rows == [{"id": "kept"}]
        # A clean shutdown leaves no recovery to do: the log says nothing about recovery.
        log = (server.dir / "logs" / "debug.log").read_text(errors="replace")
        assert "Recovery completed" not in log
    finally:
        server.stop()
    assert server.stop() is False
