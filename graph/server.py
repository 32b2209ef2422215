"""The project-local Neo4j Community server: install, start, stop, status.

The jars come from Maven Central through ``neo4j_server/pom.xml`` (resolved into a
project-local cache by ``mvn dependency:copy-dependencies``); the server is the stock
``org.neo4j.server.CommunityEntryPoint`` run as a detached child process with Bolt
and HTTP (and the Neo4j Browser) on localhost. Data, logs, configuration and the
generated password (mode 0600) live under ``<home>/neo4j``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from gnnrec.errors import GnnrecError
from gnnrec.graph.settings import DEFAULT_BOLT_PORT, DEFAULT_HTTP_PORT, gnnrec_home

POM = Path(__file__).parent / "neo4j_server" / "pom.xml"
NEO4J_VERSION = "5.26.30"  # keep in step with neo4j_server/pom.xml
_JVM_FLAGS = [
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-modules=jdk.incubator.vector",
    "-XX:+UseG1GC",
    "-XX:-OmitStackTraceInFastThrow",
    "-Dfile.encoding=UTF-8",
]


class Neo4jServerError(GnnrecError):
    """The local server could not be installed, started or stopped."""


@dataclass(frozen=True)
class ServerStatus:
    running: bool
    uri: str
    version: str
    pid: int | None
    home: str
    browser_url: str | None
    external: bool = False

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on localhost that is free right now (for tests and side-by-side servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited child not yet reaped) is not alive.
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().split(")")[-1].split()[0] == "Z":
                return False
    return True


class LocalNeo4j:
    """One local Neo4j server rooted at ``<home>/neo4j``.

    ``home`` defaults to ``GNNREC_HOME`` or ``./.gnnrec``; the jar cache is
    ``<home>/neo4j-lib`` unless ``GNNREC_NEO4J_LIB`` names another directory.
    """

    def __init__(
        self,
        home: Path | None = None,
        bolt_port: int | None = None,
        http_port: int | None = None,
        allow_csv_urls: bool | None = None,
        extra_settings: dict[str, str] | None = None,
    ) -> None:
        self.home = Path(home or gnnrec_home()).resolve()
        self.dir = self.home / "neo4j"
        self.lib = Path(os.environ.get("GNNREC_NEO4J_LIB", self.home / "neo4j-lib")).resolve()
        saved = self._saved_ports()
        self.bolt_port = bolt_port or saved.get("bolt_port") or DEFAULT_BOLT_PORT
        self.http_port = http_port or saved.get("http_port") or DEFAULT_HTTP_PORT
        if allow_csv_urls is None:
            allow_csv_urls = os.environ.get("GNNREC_NEO4J_ALLOW_CSV_URLS", "") not in ("", "0")
        self.allow_csv_urls = allow_csv_urls
        self.extra_settings = dict(extra_settings or {})  # neo4j.conf lines (tests, tuning)

    # -- paths and files ---------------------------------------------------------
    @property
    def bolt_uri(self) -> str:
        return f"bolt://127.0.0.1:{self.bolt_port}"

    @property
    def browser_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/browser/"

    @property
    def _pid_file(self) -> Path:
        return self.dir / "run" / "neo4j.pid"

    @property
    def _password_file(self) -> Path:
        return self.dir / "password"

    def _saved_ports(self) -> dict[str, int]:
        path = self.dir / "server.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def password(self, create: bool = True) -> str:
        """The generated password (a 0600 file), created on first use when ``create``."""
        if self._password_file.exists():
            return self._password_file.read_text().strip()
        if not create:
            raise Neo4jServerError(
                f"no local Neo4j password at {self._password_file}: run `gnnrec neo4j start`, "
                "or set NEO4J_URI / NEO4J_USER / NEO4J_PASSWORD for an external server"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            # a leading '-' would make neo4j-admin read the password as an option
            fh.write("p" + secrets.token_urlsafe(24))
        return self._password_file.read_text().strip()

    def pid(self) -> int | None:
        if not self._pid_file.exists():
            return None
        pid = int(self._pid_file.read_text().strip() or 0)
        return pid if pid and _pid_alive(pid) else None

    # -- install -----------------------------------------------------------------
    def install(self) -> Path:
        """Resolve the server jars from Maven Central into the cache (idempotent)."""
        digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:16]
        marker = self.lib / f".installed-{digest}"
        if marker.exists():
            return self.lib
        mvn = shutil.which("mvn")
        if mvn is None:
            raise Neo4jServerError("Maven (`mvn`) is needed to fetch the Neo4j jars; install it")
        if self.lib.exists():
            shutil.rmtree(self.lib)
        self.lib.mkdir(parents=True)
        cmd = [
            mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
            f"-DoutputDirectory={self.lib}", "-DincludeScope=runtime",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            output = proc.stdout[-3000:] + proc.stderr[-3000:]
            raise Neo4jServerError(f"mvn failed to fetch the Neo4j jars:\n{output}")
        marker.touch()
        return self.lib

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
        if not java or not Path(java).exists():
            raise Neo4jServerError("Java 17 or 21 is needed to run Neo4j 5.26; none found")
        return java

    def _write_config(self) -> Path:
        conf_dir = self.dir / "conf"
        conf_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            "server.directories.data": self.dir / "data",
            "server.directories.logs": self.dir / "logs",
            "server.directories.run": self.dir / "run",
            "server.directories.import": self.dir / "import",
            "server.default_listen_address": "127.0.0.1",
            "server.bolt.listen_address": f"127.0.0.1:{self.bolt_port}",
            "server.http.listen_address": f"127.0.0.1:{self.http_port}",
            "server.http.enabled": "true",
            "server.https.enabled": "false",
            "dbms.security.auth_enabled": "true",
            "dbms.routing.enabled": "false",
            "dbms.usage_report.enabled": "false",
            "server.memory.heap.initial_size": os.environ.get("GNNREC_NEO4J_HEAP", "1g"),
            "server.memory.heap.max_size": os.environ.get("GNNREC_NEO4J_HEAP", "1g"),
            "server.memory.pagecache.size": os.environ.get("GNNREC_NEO4J_PAGECACHE", "512m"),
            "db.tx_log.rotation.retention_policy": "1 files",
        }
        if not self.allow_csv_urls:  # LOAD CSV may read the import folder, never the network
            settings["internal.dbms.cypher_ip_blocklist"] = "0.0.0.0/0,::/0"
        settings.update(self.extra_settings)
        text = "".join(f"{k}={v}\n" for k, v in settings.items())
        (conf_dir / "neo4j.conf").write_text(text)
        (self.dir / "server.json").write_text(
            json.dumps({"bolt_port": self.bolt_port, "http_port": self.http_port})
        )
        return conf_dir

    def _java_cmd(self, main: str, *args: str) -> list[str]:
        return [self._java(), *_JVM_FLAGS, "-cp", f"{self.lib}/*", main, *args]

    def admin(self, *args: str, heap: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``neo4j-admin ARGS`` (``org.neo4j.cli.AdminTool``) on this server's home.

        It reads the same ``neo4j.conf`` as the server, so it sees the same data folder.
        ``heap`` sets the JVM's ``-Xmx``; the output is captured.
        """
        self.install()
        conf_dir = self._write_config()
        env = {**os.environ, "NEO4J_HOME": str(self.dir), "NEO4J_CONF": str(conf_dir)}
        cmd = self._java_cmd("org.neo4j.cli.AdminTool", *args)
        if heap:
            cmd.insert(1, f"-Xmx{heap}")
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=self.dir)

    def database_dirs(self, database: str = "neo4j") -> list[Path]:
        """The store and transaction-log folders of ``database``."""
        data = self.dir / "data"
        return [data / "databases" / database, data / "transactions" / database]

    def _set_initial_password(self) -> None:
        if (self.dir / "data" / "dbms" / "auth.ini").exists():
            return
        proc = self.admin("dbms", "set-initial-password", self.password())
        if proc.returncode != 0:
            raise Neo4jServerError(f"setting the initial password failed:\n{proc.stderr[-3000:]}")

    # -- lifecycle ---------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> tuple[ServerStatus, bool]:
        """Start the server and wait until Bolt answers. Returns (status, started_now)."""
        if self.pid() is not None:
            return self.status(), False
        for port in (self.bolt_port, self.http_port):
            if not _port_free(port):
                raise Neo4jServerError(
                    f"port {port} on 127.0.0.1 is already in use by another process; "
                    f"choose another with --bolt-port/--http-port"
                )
        self.install()
        conf_dir = self._write_config()
        self._set_initial_password()
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.dir / "run").mkdir(parents=True, exist_ok=True)
        console = self.dir / "logs" / "console.log"
        heap = os.environ.get("GNNREC_NEO4J_HEAP", "1g")
        cmd = self._java_cmd(
            "org.neo4j.server.CommunityEntryPoint",
            f"--home-dir={self.dir}",
            f"--config-dir={conf_dir}",
        )
        cmd.insert(1, f"-Xmx{heap}")
        with open(console, "ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.dir, start_new_session=True,
            )
        self._pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._pid_file.unlink(missing_ok=True)
                tail = console.read_text(errors="replace")[-3000:]
                raise Neo4jServerError(f"Neo4j exited during start-up (see {console}):\n{tail}")
            if self._bolt_answers():
                return self.status(), True
            time.sleep(0.5)
        self.stop()
        raise Neo4jServerError(f"Neo4j did not answer on {self.bolt_uri} within {timeout:.0f}s")

    def _bolt_answers(self) -> bool:
        from neo4j import GraphDatabase
        from neo4j.exceptions import Neo4jError, ServiceUnavailable

        try:
            with GraphDatabase.driver(self.bolt_uri, auth=("neo4j", self.password())) as drv:
                drv.verify_connectivity()
            return True
        except (ServiceUnavailable, Neo4jError, OSError):
            return False

    def stop(self, timeout: float = 90.0) -> bool:
        """Shut down cleanly with SIGTERM (a checkpoint is written). False if not running."""
        pid = self.pid()
        if pid is None:
            self._pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            raise Neo4jServerError(f"Neo4j (pid {pid}) ignored SIGTERM for {timeout:.0f}s; killed")
        self._pid_file.unlink(missing_ok=True)
        return True

    def status(self) -> ServerStatus:
        pid = self.pid()
        version = NEO4J_VERSION
        running = pid is not None and self._bolt_answers()
        if running:
            from gnnrec.graph.client import GraphClient
            from gnnrec.graph.settings import Neo4jSettings

            settings = Neo4jSettings(self.bolt_uri, "neo4j", self.password())
            with GraphClient(settings) as client:
                version = client.server_version()
        return ServerStatus(
            running=running,
            uri=self.bolt_uri,
            version=version,
            pid=pid,
            home=str(self.dir),
            browser_url=self.browser_url if running else None,
        )
