"""The recommender service: request logic between HTTP (``app.py``) and the state.

No Ray here (the feedback log is any object whose ``append`` / ``since`` methods return
awaitables, e.g. a Serve deployment handle), so the logic runs and is tested in-process.

Writes follow one rule: validate, then commit to Neo4j, then fold into memory. If the
Neo4j write fails nothing is folded in and the caller gets :class:`Neo4jUnavailableError`
(HTTP 503). Reads never need Neo4j, except explanations, which prefer it and fall back to
the in-memory graph (saying so). Updates run under one asyncio lock; reads take a
reference to the current state, so a reload (build the new state in a thread, then swap
the reference) never disturbs requests in flight.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from gnnrec.serve.errors import (
    AuthError,
    GoneError,
    InvalidInputError,
    Neo4jUnavailableError,
    NotFoundError,
    ServingError,
    WritesDisabledError,
)
from gnnrec.serve.explain import build_explanation
from gnnrec.serve.options import ServeOptions
from gnnrec.serve.schemas import (
    Explanation,
    Filters,
    ForgetResult,
    Health,
    InteractionIn,
    InteractionsResult,
    Neo4jStatus,
    Neo4jSyncStatus,
    NewUserIn,
    NewUserResult,
    Recommendations,
    ReloadResult,
    ScoredItem,
    SimilarItems,
)
from gnnrec.serve.state import ExplainCounts, ServingState

log = logging.getLogger(__name__)
ACK_TIMEOUT_S = 10.0  # how long a write waits for the other replicas to apply it


# -- events: what a write does to a state (also what the feedback log carries) ---------
@dataclass(frozen=True)
class InteractionsEvent:
    pairs: list[tuple[str, str]]


@dataclass(frozen=True)
class NewUserEvent:
    user: str
    items: list[str] = field(default_factory=list)
    friends: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ForgetEvent:
    user: str


@dataclass(frozen=True)
class ReloadEvent:
    run: str


Event = InteractionsEvent | NewUserEvent | ForgetEvent | ReloadEvent


def load_state(run: str, options: ServeOptions) -> ServingState:
    return ServingState.from_run(run, fold_in_mix=options.fold_in_mix, ann=options.ann)


def validate_interactions(rows: Sequence[InteractionIn], now: int) -> list[dict[str, Any]]:
    """Check rows with the ingest rules; one record per (user, item) pair, else 422."""
    from gnnrec.ingest.readers import Source
    from gnnrec.ingest.validate import ColumnNames, aggregate_interactions, check_interactions

    if not rows:
        raise InvalidInputError("no interactions given: send a non-empty JSON list")
    frame = pd.DataFrame({
        "user": [str(r.user) for r in rows],
        "item": [str(r.item) for r in rows],
        "weight": [1.0 if r.weight is None else r.weight for r in rows],
        "timestamp": pd.Series([now if r.timestamp is None else r.timestamp for r in rows],
                               dtype=object),
    })
    checked = check_interactions(Source.from_frame("interactions", frame, "POST /interactions"),
                                 ColumnNames())
    if checked.rejected:
        reasons = [f"row {int(r.row)}: {r.reason}" for r in checked.rejects.itertuples()]
        raise InvalidInputError(f"{checked.rejected} of {checked.read} interactions rejected "
                                f"(rows numbered from 1): " + "; ".join(reasons[:20]))
    clean = aggregate_interactions(checked.clean)
    return [{"user": str(u), "item": str(i), "weight": float(w),
             "ts": None if pd.isna(ts) else int(ts)}
            for u, i, w, ts in clean[["user", "item", "weight", "ts"]].itertuples(index=False)]


def apply_event(state: ServingState, event: Event) -> Any:
    """Fold ``event`` into ``state`` (reload events are handled by the service)."""
    if isinstance(event, InteractionsEvent):
        return state.add_interactions(event.pairs)
    if isinstance(event, NewUserEvent):
        if state.has_user(event.user):  # replayed from Neo4j already (a reload, a new replica)
            if state.user_embedding(event.user) is None:
                return "popularity"
            return "+".join(k for k, v in (("items", event.items), ("friends", event.friends))
                            if v) or "items"
        return state.add_user(event.user, event.items, event.friends)
    if isinstance(event, ForgetEvent):
        return state.forget_user(event.user)
    raise TypeError(f"not a state event: {event!r}")


class RecommenderService:
    """One replica's service. ``state`` skips loading ``options.run`` (tests, benchmarks)."""

    def __init__(self, options: ServeOptions, state: ServingState | None = None, *,
                 feedback_log: Any | None = None, replicas: int = 1, replica: str = "local",
                 state_loader: Callable[[str, ServeOptions], ServingState] = load_state,
                 ) -> None:
        self.options = options
        self.replica = replica
        self._loader = state_loader
        self._state = state if state is not None else state_loader(options.run, options)
        self._log = feedback_log
        self._replicas = replicas
        self._applied = 0
        self._lock: asyncio.Lock | None = None
        self._follower: asyncio.Task[None] | None = None
        self._prebuilt: tuple[ReloadEvent, ServingState] | None = None
        self._graph: Any | None = None
        self._graph_error: str | None = None
        self._neo4j_uri: str | None = None
        self._sync: Any | None = None  # gnnrec.serve.sync.Neo4jSync
        self._poller: asyncio.Task[None] | None = None
        self._poll_failing = False
        if options.neo4j.enabled:
            try:
                from gnnrec.graph.client import GraphClient

                settings = options.neo4j.settings()
                self._neo4j_uri = settings.uri
                key = options.key()
                self._graph = GraphClient(settings)
                from gnnrec.serve.sync import Neo4jSync

                self._sync = Neo4jSync(self._graph, key, replica)
            except Exception as exc:  # noqa: BLE001 - no settings: serve reads, refuse writes
                self._graph_error = f"cannot configure Neo4j: {exc}"
        self._prepare(self._state)

    @property
    def state(self) -> ServingState:
        return self._state

    def close(self) -> None:
        """Stop following the log and close the Neo4j driver (best effort, idempotent)."""
        follower, self._follower = self._follower, None
        poller, self._poller = self._poller, None
        graph, self._graph = self._graph, None
        try:
            for task in (follower, poller):
                if task is not None:
                    task.get_loop().call_soon_threadsafe(task.cancel)
            if graph is not None:
                graph.close()
        except Exception:  # noqa: BLE001 - the loop may be closed already at shutdown
            pass

    # -- reads ----------------------------------------------------------------------
    def recommend(self, user: str, k: int, tag: str | None = None,
                  exclude: Sequence[str] = (), diversity: float = 0.0) -> Recommendations:
        self._check_k(k)
        state = self._state
        ranking = state.recommend(user, k, tag=tag, exclude=exclude, diversity=diversity,
                                  mmr_pool=self.options.mmr_pool)
        return Recommendations(
            user=user, k=k, items=[ScoredItem(item=s.id, score=s.score) for s in ranking.items],
            cold_start="popularity" if ranking.cold_start else None,
            filters=Filters(tag=tag, exclude=list(exclude), diversity=diversity), run=state.run)

    def similar(self, item: str, k: int) -> SimilarItems:
        self._check_k(k)
        state = self._state
        items = [ScoredItem(item=s.id, score=s.score) for s in state.similar(item, k)]
        return SimilarItems(item=item, k=k, items=items, run=state.run)

    async def explain(self, user: str, item: str) -> Explanation:
        """From Neo4j when it answers and knows both ids, else from memory (``source``)."""
        state, limit = self._state, self.options.explain_limit
        note = None
        if self._graph is not None:
            from gnnrec.graph.serving import explain_paths

            try:
                rows = await asyncio.to_thread(explain_paths, self._graph, user, item, limit)
            except Exception as exc:  # noqa: BLE001 - any Neo4j failure: use memory
                note = f"Neo4j unavailable ({type(exc).__name__}); explained from memory"
            else:
                if rows.user_found and rows.item_found:
                    counts = ExplainCounts(rows.user_items, rows.friends, rows.co_users, rows.tags)
                    score = (state.score(user, item)
                             if state.has_user(user) and state.has_item(item) else None)
                    return build_explanation(user, item, counts, source="neo4j", score=score,
                                             limit=limit)
                missing = "user" if not rows.user_found else "item"
                note = f"{missing} not in Neo4j; explained from memory"
        else:
            note = self._graph_error or "Neo4j disabled; explained from memory"
        counts = state.explain_counts(user, item)
        return build_explanation(user, item, counts, source="memory",
                                 score=state.score(user, item), limit=limit, note=note)

    async def health(self) -> Health:
        state = self._state
        sync = state.neo4j_sync
        reachable = False
        if self._graph is not None:
            reachable = await asyncio.to_thread(self._graph.ping)
        info = state.info()
        return Health(
            run=info["run"], model=info["model"], metrics=info["metrics"], users=info["users"],
            items=info["items"], tags=info["tags"], dim=info["dim"], scoring=info["scoring"],
            index=info.get("index"), replica=self.replica,
            neo4j=Neo4jStatus(configured=self._graph is not None, reachable=reachable,
                              uri=self._neo4j_uri, error=self._graph_error),
            feedback="log" if self._log is not None else "local",
            writes_enabled=self.options.token is not None,
            neo4j_sync=Neo4jSyncStatus(
                done=sync.loaded, forgotten=len(sync.tombstones), exported_at=state.exported_at,
                replayed_interactions=sync.replayed["interactions"],
                replayed_users_created=sync.replayed["users_created"], note=sync.note)
            if self._sync is not None else None)

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= self.options.max_k:
            raise InvalidInputError(f"k must be between 1 and {self.options.max_k}, got {k}")

    # -- auth -----------------------------------------------------------------------
    def authorize(self, authorization: str | None) -> None:
        """Accept ``Bearer <token>`` equal to the configured token (403 when none is)."""
        if self.options.token is None:
            raise WritesDisabledError(
                "writes are disabled: the service was started without an API token "
                "(--token or GNNREC_API_TOKEN)")
        expected = self.options.token.get_secret_value()
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 expected.encode()):
            raise AuthError("missing or wrong token: send 'Authorization: Bearer <token>'")

    # -- writes ---------------------------------------------------------------------
    @property
    def persisted(self) -> str:
        return "neo4j" if self.options.neo4j.enabled else "memory-only"

    async def record_interactions(self, rows: Sequence[InteractionIn]) -> InteractionsResult:
        records = validate_interactions(rows, int(time.time()))
        event = InteractionsEvent([(r["user"], r["item"]) for r in records])

        guard = self._tombstone_keys(r["user"] for r in records)

        def persist(client: Any) -> int:
            from gnnrec.graph.serving import write_interactions

            return write_interactions(client, records, guard)

        fold = await self._write(event, persist)
        return InteractionsResult(
            received=len(rows), written=len(records), users_updated=fold.users_updated,
            users_created=fold.users_created, items_created=fold.items_created,
            items_without_embedding=fold.items_without_embedding, persisted=self.persisted)

    async def create_user(self, body: NewUserIn) -> NewUserResult:
        user = str(body.user)
        items = list(dict.fromkeys(str(i) for i in body.items))
        friends = list(dict.fromkeys(str(f) for f in body.friends))
        if not user.strip():
            raise InvalidInputError("empty user id")
        event = NewUserEvent(user, items, friends)

        guard = self._tombstone_keys([user, *friends])

        def persist(client: Any) -> None:
            from gnnrec.graph.serving import create_user

            create_user(client, user, items, friends, ts=int(time.time()), forgotten=guard)

        cold = await self._write(event, persist,
                                 check=lambda s: s.check_new_user(user, items, friends))
        return NewUserResult(user=user, items=len(items), friends=len(friends), cold_start=cold,
                             persisted=self.persisted)

    async def forget_user(self, user: str) -> ForgetResult:
        deleted: dict[str, dict[str, int] | None] = {"neo4j": None}

        def persist(client: Any) -> None:
            from gnnrec.graph.serving import forget_user

            deleted["neo4j"] = forget_user(client, user,
                                           self._sync.key if self._sync else None)

        in_memory = await self._write(ForgetEvent(user), persist)
        if not in_memory and deleted["neo4j"] is None:
            raise NotFoundError(f"unknown user {user!r}: nothing to forget")
        return ForgetResult(user=user, neo4j=deleted["neo4j"], memory=bool(in_memory),
                            persisted=self.persisted)

    async def reload(self, run: str) -> ReloadResult:
        started = time.perf_counter()
        previous = self._state.run
        if not os.path.isdir(run):
            raise NotFoundError(f"run directory {run!r} does not exist on the server")
        state = await self._write(ReloadEvent(run))
        return ReloadResult(run=state.run, model=state.model, previous_run=previous,
                            users=state.num_users, items=state.num_items,
                            replayed_interactions=state.neo4j_sync.replayed["interactions"],
                            seconds=round(time.perf_counter() - started, 3))

    async def _write(self, event: Event, persist: Callable[[Any], Any] | None = None,
                     check: Callable[[ServingState], None] | None = None) -> Any:
        """Check, commit to Neo4j, then fold in (locally or through the feedback log).

        A reload builds the new state first (writes wait; reads go on with the old one),
        so a run that fails to load changes nothing and never reaches the log.
        """
        async with self._get_lock():
            if self._log is not None:
                await self._catch_up(0.0)
            if check is not None:
                check(self._state)
            if isinstance(event, ReloadEvent):
                self._prebuilt = (event, await self._load(event))
            if persist is not None and self.options.neo4j.enabled:
                if self._graph is None:
                    raise Neo4jUnavailableError(f"{self._graph_error}: nothing was written")
                from gnnrec.graph.forgotten import ForgottenUserError

                try:
                    await asyncio.to_thread(persist, self._graph)
                except ForgottenUserError as exc:
                    raise GoneError(str(exc)) from exc
                except Exception as exc:  # noqa: BLE001 - any failure: nothing is applied
                    raise Neo4jUnavailableError(
                        f"Neo4j at {self._neo4j_uri} did not take the write "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                        "nothing was written or folded in, retry later") from exc
            if self._log is None:
                return await self._apply(event)
            seq = await self._log.append.remote(event)
            results = await self._catch_up(0.0)
        # outside the lock: other replicas may be waiting for ours to apply their writes
        if not await self._log.wait_applied.remote(seq, self._replicas, ACK_TIMEOUT_S):
            log.warning("replica %s: write %d not acknowledged by all %d replicas within "
                        "%.0f s", self.replica, seq, self._replicas, ACK_TIMEOUT_S)
        return results[seq]

    async def _load(self, event: ReloadEvent) -> ServingState:
        from gnnrec.errors import GnnrecError

        def load() -> ServingState:
            state = self._loader(event.run, self.options)
            self._prepare(state)
            return state

        try:
            return await asyncio.to_thread(load)
        except ServingError:
            raise
        except (GnnrecError, OSError, ValueError) as exc:
            raise InvalidInputError(f"cannot load run {event.run!r}: {exc}") from exc

    async def _apply(self, event: Event) -> Any:
        if isinstance(event, ReloadEvent):
            prebuilt, self._prebuilt = self._prebuilt, None
            if prebuilt is not None and prebuilt[0] == event:
                state = prebuilt[1]
                try:  # forgets and feedback committed since it was built (their log events
                    await self._poll_forgotten(state, published=False)  # may precede ours)
                except Exception:  # noqa: BLE001 - Neo4j down: the poller applies them later
                    log.warning("replica %s: tombstone poll before the swap failed",
                                self.replica, exc_info=True)
            else:
                state = await self._load(event)
            self._state = state  # the swap: requests in flight keep the old reference
            return state
        result = apply_event(self._state, event)
        created = ([event.user] if isinstance(event, NewUserEvent)
                   else result.users_created if isinstance(event, InteractionsEvent) else [])
        if created and self._sync is not None:
            # a log event written before a `gnnrec forget` that this replica already applied
            # (a replica replaying the log from the beginning): the tombstone wins
            self._sync.drop_if_forgotten(self._state, created)
        return result

    # -- forgetting and feedback replay: Neo4j -> state (gnnrec.serve.sync) ------------------
    def _tombstone_keys(self, users: Any) -> dict[str, str] | None:
        """``{tombstone key: user}`` a write checks in its transaction (``None``: no Neo4j)."""
        return self._sync.keys_of(users) if self._sync is not None else None

    def _prepare(self, state: ServingState) -> None:
        """Bring a state that is not served yet in line with Neo4j: drop the users a
        tombstone names, replay the feedback received after the run's export (blocking:
        the constructor, or a worker thread for a reload). When Neo4j does not answer, the
        state is served as it is and the poller completes the pass later."""
        if state.exported_at is None:
            state.neo4j_sync.note = ("the run's graph has no export time (not made by "
                                     "`gnnrec export`, or by an older gnnrec): no online "
                                     "feedback is replayed")
        else:
            from gnnrec.serve.sync import REPLAY_MARGIN_US

            state.neo4j_sync.feedback_since = state.exported_at - REPLAY_MARGIN_US
        if self._sync is None:
            return
        try:
            plan = self._sync.read(state, state.user_ids(), replay=True)
        except Exception as exc:  # noqa: BLE001 - Neo4j down: serve, retry from the poller
            log.warning("replica %s: could not read tombstones and feedback from Neo4j at "
                        "load (%s: %s); retrying every %.0f s", self.replica,
                        type(exc).__name__, exc, self.options.forget_poll_s)
            return
        self._sync.apply(state, plan)
        if state.neo4j_sync.note:
            log.warning("replica %s: %s", self.replica, state.neo4j_sync.note)

    async def _poll_forgotten(self, state: ServingState | None = None, *,
                              published: bool = True) -> None:
        """Apply what Neo4j got since the last poll to ``state`` (default: the served
        one): new tombstones, and the whole load-time pass when it failed (or, for a
        state built before a log-ordered swap, the feedback received since)."""
        if self._sync is None:
            return
        state = state or self._state
        replay = not published or not state.neo4j_sync.loaded
        plan = await asyncio.to_thread(self._sync.read, state, state.user_ids(), replay)
        if published:
            async with self._get_lock():
                if state is self._state:
                    self._sync.apply(state, plan)
        else:
            self._sync.apply(state, plan)

    async def poll_forgotten(self) -> None:
        """One poll of Neo4j's tombstones (what the background poller does)."""
        await self._poll_forgotten()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.options.forget_poll_s)
            try:
                await self._poll_forgotten()
                if self._poll_failing:
                    log.info("replica %s: Neo4j answers tombstone polls again", self.replica)
                self._poll_failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Neo4j down: keep serving, try again
                if not self._poll_failing:
                    log.warning("replica %s: tombstone poll failed (%s: %s); retrying",
                                self.replica, type(exc).__name__, exc)
                self._poll_failing = True

    # -- following the feedback log (several replicas) ------------------------------------
    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def start_following(self) -> None:
        """Start the background tasks (needs a running loop): applying other replicas'
        writes from the log, and polling Neo4j for forgotten users."""
        loop = asyncio.get_running_loop()
        if self._log is not None and self._follower is None:
            self._follower = loop.create_task(self._follow())
        if self._sync is not None and self._poller is None:
            self._poller = loop.create_task(self._poll())

    async def _catch_up(self, timeout_s: float) -> dict[int, Any]:
        """Apply the log's events after the last applied one (caller holds the lock)."""
        assert self._log is not None
        events = await self._log.since.remote(self._applied, timeout_s)
        results = {}
        for seq, event in events:
            if seq <= self._applied:
                continue
            try:
                results[seq] = await self._apply(event)
            except Exception:  # noqa: BLE001 - keep following; the state stays consistent
                log.exception("replica %s could not apply feedback event %d", self.replica, seq)
                results[seq] = None
            self._applied = seq
        if results:
            await self._log.ack.remote(self.replica, self._applied)
        return results

    async def _follow(self) -> None:
        assert self._log is not None
        while True:
            try:
                events = await self._log.since.remote(self._applied, 1.0)
                if events and events[-1][0] > self._applied:
                    async with self._get_lock():
                        await self._catch_up(0.0)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - log briefly unreachable: retry
                log.exception("replica %s: feedback log poll failed", self.replica)
                await asyncio.sleep(0.5)
