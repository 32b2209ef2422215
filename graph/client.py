"""``GraphClient``: the one object that runs Cypher against Neo4j.

Every Cypher statement of the project lives in ``gnnrec.graph`` and goes through this
class with parameters (never string-formatted user data).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from neo4j import Driver, GraphDatabase, Query, Session

from gnnrec.graph.settings import Neo4jSettings

Record = dict[str, Any]
Progress = Callable[[int], None]


class GraphClient:
    """Runs read and write Cypher on one database.

    >>> with GraphClient(Neo4jSettings.resolve()) as client:   # doctest: +SKIP
    ...     client.read("MATCH (u:User) RETURN count(u) AS n")
    [{'n': 1892}]
    """

    def __init__(self, settings: Neo4jSettings | None = None) -> None:
        self.settings = settings or Neo4jSettings.resolve()
        self.driver: Driver = GraphDatabase.driver(
            self.settings.uri,
            auth=(self.settings.user, self.settings.password),
            connection_timeout=10,
            # The export uses id() on purpose (the fastest page key in 5.x) and queries
            # optional properties; those notifications are noise on every call.
            notifications_disabled_classifications=["DEPRECATION", "UNRECOGNIZED"],
        )

    # -- context management --------------------------------------------------
    def __enter__(self) -> GraphClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.driver.close()

    def session(self, **kwargs: Any) -> Session:
        return self.driver.session(database=self.settings.database, **kwargs)

    # -- queries ---------------------------------------------------------------
    def read(self, cypher: str, params: dict[str, Any] | None = None) -> list[Record]:
        """Run ``cypher`` in a read transaction and return its rows as dicts."""
        with self.session() as session:
            return session.execute_read(lambda tx: tx.run(cypher, params or {}).data())

    def read_values(self, cypher: str, params: dict[str, Any] | None = None) -> list[list[Any]]:
        """Like ``read`` but rows are value lists, without ``.data()``'s per-element
        conversion (which dominates the cost of rows holding long lists)."""
        with self.session() as session:
            return session.execute_read(
                lambda tx: [record.values() for record in tx.run(cypher, params or {})]
            )

    def write(self, cypher: str, params: dict[str, Any] | None = None) -> list[Record]:
        """Run ``cypher`` in a write transaction (retried on transient errors)."""
        with self.session() as session:
            return session.execute_write(lambda tx: tx.run(cypher, params or {}).data())

    def run_auto(self, cypher: str, params: dict[str, Any] | None = None) -> list[Record]:
        """Run in an auto-commit transaction (schema commands, ``CALL {} IN TRANSACTIONS``)."""
        with self.session() as session:
            return session.run(Query(cypher), params or {}).data()  # type: ignore[arg-type]

    def stream(
        self, cypher: str, params: dict[str, Any] | None = None, fetch_size: int = 10_000
    ) -> Iterator[Sequence[Any]]:
        """Stream rows as value tuples (no per-record dict), for large exports."""
        with self.session(fetch_size=fetch_size) as session:
            with session.begin_transaction() as tx:
                for record in tx.run(cypher, params or {}):
                    yield record.values()

    def write_batches(
        self,
        cypher: str,
        rows: Iterable[Record],
        batch_size: int = 5_000,
        progress: Progress | None = None,
        **params: Any,
    ) -> int:
        """Run ``cypher`` (which starts with ``UNWIND $rows AS row``) once per batch.

        Each batch is one write transaction, so a failure leaves earlier batches
        committed and the failing one rolled back. Returns the number of rows sent.
        """
        total = 0
        batch: list[Record] = []
        with self.session() as session:
            for row in rows:
                batch.append(row)
                if len(batch) >= batch_size:
                    total += self._send(session, cypher, batch, params, progress)
                    batch = []
            if batch:
                total += self._send(session, cypher, batch, params, progress)
        return total

    @staticmethod
    def _send(
        session: Session,
        cypher: str,
        batch: list[Record],
        params: dict[str, Any],
        progress: Progress | None,
    ) -> int:
        session.execute_write(lambda tx: tx.run(cypher, {**params, "rows": batch}).consume())
        if progress is not None:
            progress(len(batch))
        return len(batch)

    def server_version(self) -> str:
        rows = self.read("CALL dbms.components() YIELD versions RETURN versions[0] AS v")
        return str(rows[0]["v"])

    def ping(self) -> bool:
        """True when the server answers (used by ``/health`` and the CLI)."""
        try:
            self.driver.verify_connectivity()
            return True
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            return False
