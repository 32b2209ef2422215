"""Typed options of the serving application.

Two objects, kept apart as ``xgboost_ray`` keeps ``RayParams`` apart from the model's
parameters:

* :class:`ServeOptions`: what the service does (which run, limits on requests, fold-in
  and re-ranking parameters, the API token, where Neo4j is);
* :class:`ResourceOptions`: how it runs on Ray (replicas, CPUs, concurrency, HTTP
  host and port).

Both are pydantic models, so they travel to Ray Serve replicas and from
``serve_config.yaml`` ``args`` without ever being plain dicts in the code.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from gnnrec.serve.ann import AnnOptions

TOKEN_ENV = "GNNREC_API_TOKEN"
DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB


class Neo4jOptions(BaseModel):
    """Where the service writes feedback and reads explanations.

    ``uri`` ``None`` means: resolve on each replica with
    :meth:`gnnrec.graph.settings.Neo4jSettings.resolve` (``NEO4J_URI`` / ``NEO4J_USER``
    / ``NEO4J_PASSWORD``, else the project-local server).
    """

    model_config = ConfigDict(frozen=True)

    enabled: bool = True
    uri: str | None = None
    user: str = "neo4j"
    password: SecretStr = SecretStr("")
    database: str = "neo4j"

    def settings(self) -> Any:
        """The :class:`~gnnrec.graph.settings.Neo4jSettings` these options name."""
        from gnnrec.graph.settings import Neo4jSettings

        if self.uri is None:
            return Neo4jSettings.resolve()
        return Neo4jSettings(uri=self.uri, user=self.user,
                             password=self.password.get_secret_value(), database=self.database)


class ServeOptions(BaseModel):
    """Behaviour of the service (no resource settings here).

    Attributes:
        run: run directory (``runs/NAME``) whose model is served: all that is read.
        max_k: largest ``k`` a request may ask for (above it: 422).
        max_body_bytes: largest request body accepted (above it: 413).
        token: bearer token required by write endpoints; ``None``: writes are refused (403).
        fold_in_mix: weight of the recomputed neighbourhood embedding when a user's
            embedding is updated from new interactions (1 = forget the trained one).
        mmr_pool: the MMR re-ranking picks among the ``max(mmr_pool * k, 50)`` best items.
        explain_limit: at most this many friends, co-interacting users and tags per answer.
        neo4j: where feedback is written and explanations are read.
        ann: from how many items ``/recommend`` uses the approximate item index, and
            its settings (:class:`~gnnrec.serve.ann.AnnOptions`).
        forget_poll_s: how often each replica asks Neo4j for users forgotten elsewhere
            (``gnnrec forget`` without ``--server``) and drops them from memory.
        forget_key: the key of the forget tombstones (hex; :mod:`gnnrec.privacy`);
            ``None``: each replica reads its key file. :func:`gnnrec.serve.app.build` fills
            it from the key file of the process that deploys, so every replica matches
            tombstones with the key ``gnnrec forget`` used.
    """

    model_config = ConfigDict(frozen=True)

    run: str
    max_k: int = Field(100, ge=1, le=10_000)
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024)
    token: SecretStr | None = None
    fold_in_mix: float = Field(0.5, gt=0.0, le=1.0)
    mmr_pool: int = Field(5, ge=1)
    explain_limit: int = Field(10, ge=1, le=1000)
    neo4j: Neo4jOptions = Field(default_factory=Neo4jOptions)
    ann: AnnOptions = Field(default_factory=AnnOptions)
    forget_poll_s: float = Field(2.0, gt=0.0, le=3600.0)
    forget_key: SecretStr | None = None

    def with_forget_key(self) -> ServeOptions:
        """These options with ``forget_key`` read from the key file when unset (and Neo4j
        is used): what travels to replicas on other hosts."""
        if self.forget_key is not None or not self.neo4j.enabled:
            return self
        from gnnrec.privacy import load_key

        return self.model_copy(update={"forget_key": SecretStr(load_key().hex())})

    def key(self) -> bytes:
        """The forget-tombstone key: ``forget_key``, else the key file (made on first use)."""
        if self.forget_key is not None:
            return bytes.fromhex(self.forget_key.get_secret_value())
        from gnnrec.privacy import load_key

        return load_key()

    @classmethod
    def with_env_token(cls, **fields: Any) -> ServeOptions:
        """Options whose ``token`` defaults to ``$GNNREC_API_TOKEN`` (when set and non-empty)."""
        if fields.get("token") is None and os.environ.get(TOKEN_ENV):
            fields["token"] = SecretStr(os.environ[TOKEN_ENV])
        return cls(**fields)


class ResourceOptions(BaseModel):
    """How the service runs on Ray Serve.

    Attributes:
        replicas: number of replicas; each holds its own copy of the serving state.
            With more than one, writes go through a feedback-log deployment that every
            replica follows (see ``gnnrec.serve.feedback``).
        num_cpus: CPUs reserved per replica (fractions allowed).
        max_ongoing_requests: concurrent requests one replica accepts.
        max_replicas_per_node: at most this many replicas on one Ray node (``1``: every
            replica on its own node, so losing a node loses one replica; default: no limit).
        host, port: where Ray Serve's HTTP proxy listens.
        proxy_location: which nodes run an HTTP proxy on ``host:port``: ``EveryNode``
            (Serve's default; put a load balancer in front), ``HeadOnly`` (one address; also
            what several Ray nodes on one host need, as they cannot share the port).
        app_name, route_prefix: name and URL prefix of the Serve application.
        access_log: log every request in the replica logs (costs latency; off by default).
        user_code_in_main_loop: run the handlers on the replica's main event loop
            (``RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0``) instead of Serve's default
            separate thread: measured about 1.8x the requests/s at 8 clients on 2 cores.
            Safe here because handlers never block: Neo4j calls and run loading go to
            worker threads, scoring takes well under a millisecond.
    """

    model_config = ConfigDict(frozen=True)

    replicas: int = Field(1, ge=1, le=64)
    num_cpus: float = Field(0.5, ge=0.0)
    max_replicas_per_node: int | None = Field(None, ge=1)
    max_ongoing_requests: int = Field(64, ge=1)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    proxy_location: Literal["EveryNode", "HeadOnly"] = "EveryNode"
    app_name: str = "gnnrec"
    route_prefix: str = "/"
    access_log: bool = False
    user_code_in_main_loop: bool = True
