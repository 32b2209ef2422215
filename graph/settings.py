"""Where the Neo4j server is and how to log in.

Precedence: ``NEO4J_URI`` / ``NEO4J_USER`` / ``NEO4J_PASSWORD`` (an external server:
a cluster, Aura, a container) win; otherwise the project-local server started by
``gnnrec neo4j start`` is used, its password read from a 0600 file under the home
directory (default ``.gnnrec/neo4j``, or ``GNNREC_HOME``/neo4j).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BOLT_PORT = 7687
DEFAULT_HTTP_PORT = 7474


def gnnrec_home() -> Path:
    """Project-local state directory (``GNNREC_HOME`` or ``./.gnnrec``)."""
    return Path(os.environ.get("GNNREC_HOME", ".gnnrec")).resolve()


@dataclass(frozen=True)
class Neo4jSettings:
    """Connection settings for one Neo4j server."""

    uri: str
    user: str
    password: str
    database: str = "neo4j"
    external: bool = False

    @classmethod
    def resolve(cls, home: Path | None = None) -> Neo4jSettings:
        """Settings from the environment, else those of the local server under ``home``."""
        database = os.environ.get("NEO4J_DATABASE", "neo4j")
        uri = os.environ.get("NEO4J_URI")
        if uri:
            return cls(
                uri=uri,
                user=os.environ.get("NEO4J_USER", "neo4j"),
                password=os.environ.get("NEO4J_PASSWORD", ""),
                database=database,
                external=True,
            )
        from gnnrec.graph.server import LocalNeo4j  # local import: avoids a cycle

        server = LocalNeo4j(home)
        return cls(
            uri=server.bolt_uri,
            user="neo4j",
            password=server.password(create=False),
            database=database,
        )
