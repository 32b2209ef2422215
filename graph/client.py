"""``GraphClient``: the one object that runs Cypher against Neo4j.

Every Cypher statement of the project lives in ``gnnrec.graph`` and goes through this
class with parameters (never string-formatted user data).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from neo4j import Driver, GraphDatabase, Query, Session

from gnnrec.errors import GnnrecError
from gnnrec.graph.settings import Neo4jSettings

Record = dict[str, Any]
Progress = Callable[[int], None]

# Plan operators a read-only query may not contain, with the reason it is refused.
_NOT_READ_ONLY = {
    "TerminateTransactions": "it terminates other clients' transactions",
    "LoadCSV": "LOAD CSV fetches files or URLs from the server",
    "AdministrationCommand": "it is an administration command",
}


class Neo4jConnectionError(GnnrecError):
    """Neo4j cannot be used: unreachable, credentials refused, or no such database."""


class NotReadOnlyError(GnnrecError):
    """A query given as read-only would write, administer or reach outside the database."""


def describe_neo4j_error(exc: BaseException, settings: Neo4jSettings) -> str:
    """One line for a driver or server error, naming the server and what to do."""
    from neo4j.exceptions import AuthError, ClientError, DriverError, ServiceUnavailable

    where = f"Neo4j at {settings.uri}"
    code = getattr(exc, "code", None) or ""
    if isinstance(exc, ServiceUnavailable | OSError) or (
            isinstance(exc, DriverError) and "connect" in str(exc).lower()):
        hint = ("set NEO4J_URI / NEO4J_USER / NEO4J_PASSWORD" if settings.external
                else "start it with 'gnnrec neo4j start', or set NEO4J_URI")
        return f"{where} is not reachable ({hint})"
    if isinstance(exc, AuthError) or code.startswith("Neo.ClientError.Security"):
        source = ("NEO4J_USER / NEO4J_PASSWORD" if settings.external
                  else "the password file of the local server")
        return f"{where} refused the credentials of user {settings.user!r} (check {source})"
    if code == "Neo.ClientError.Database.DatabaseNotFound" or (
            isinstance(exc, ClientError) and "graph not found" in str(exc).lower()):
        return f"{where} has no database {settings.database!r} (NEO4J_DATABASE)"
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{where}: {str(message).strip().splitlines()[0]}"


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

    @classmethod
    def connect(cls, settings: Neo4jSettings | None = None) -> GraphClient:
        """A client whose server answered :meth:`check` (what every CLI command uses)."""
        client = cls(settings)
        try:
            client.check()
        except BaseException:
            client.close()
            raise
        return client

    def check(self) -> None:
        """Raise :class:`Neo4jConnectionError` (one clear line) unless the database answers."""
        try:
            with self.session() as session:  # auto-commit: no retry loop, fails at once
                session.run("RETURN 1").consume()
        except Exception as exc:  # noqa: BLE001 - every failure gets its one-line reason
            raise Neo4jConnectionError(describe_neo4j_error(exc, self.settings)) from exc

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

    def read_once(self, cypher: str, params: dict[str, Any] | None = None) -> list[Record]:
        """Like ``read`` in one explicit transaction, without the driver's retry loop: a
        down server fails at once (serving's background reads)."""
        with self.session(default_access_mode="READ") as session:
            with session.begin_transaction() as tx:
                return tx.run(cypher, params or {}).data()

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

    def check_read_only(self, cypher: str, params: dict[str, Any] | None = None) -> None:
        """Raise :class:`NotReadOnlyError` unless ``cypher`` only reads the database.

        The query is planned, not run (``EXPLAIN``): it must be a read query (no writes,
        schema or DBMS procedures) with no administration command, no ``TERMINATE
        TRANSACTIONS`` and no ``LOAD CSV``, which would fetch a file or a URL.
        """
        text = cypher.lstrip()
        head = text[:8].upper()
        if head.startswith("EXPLAIN"):
            return  # plans only
        if head.startswith("PROFILE"):
            text = text[len("PROFILE"):]
        with self.session(default_access_mode="READ") as session:
            summary = session.run(Query("EXPLAIN " + text), params or {}).consume()  # type: ignore[arg-type]
        operators: list[str] = []
        stack = [summary.plan] if summary.plan else []
        while stack:
            plan = stack.pop()
            operators.append(str(plan.get("operatorType", "")).split("@")[0])
            stack.extend(plan.get("children", []))
        for operator, why in _NOT_READ_ONLY.items():
            if operator in operators:
                raise NotReadOnlyError(f"refused in read-only mode: {why}; add --write to run it")
        if summary.query_type != "r":
            kind = {"w": "writes", "rw": "writes", "s": "changes the schema or the DBMS"}.get(
                str(summary.query_type), f"is of type {summary.query_type!r}")
            raise NotReadOnlyError(f"refused in read-only mode: the query {kind}; add --write "
                                   f"to run it")

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
