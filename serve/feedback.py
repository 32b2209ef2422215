"""The feedback log that keeps several replicas' states in step.

With ``--replicas 1`` the one replica folds each write into its own state and no log
exists. With more, every write (interactions, new user, forget, reload) is first
committed to Neo4j by the replica that received it, then appended to this log, a
one-replica Serve deployment holding an ordered list of events. Every replica follows
the log with a long poll (:meth:`FeedbackLog.since` returns as soon as there is
something new) and applies events in order, so the next request reaches the write on
any replica within a poll round trip (milliseconds). The writing replica applies
everything up to its own event, then waits (at most ``ack_timeout_s``) until every
replica has acknowledged it, so the answer to a write means "visible everywhere": the
next request sees it whichever replica serves it. A replica that starts later (a
restart, a scale-up) replays the whole log from the beginning, reloads included.

Limits (documented, not hidden): the log lives in memory, in one actor; if that actor
restarts, replicas keep what they applied but a write committed to Neo4j between the
crash and the restart is not folded into the other replicas' memory (it is in Neo4j
and in the next trained run). Events are kept for the life of the application.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0},
                  max_ongoing_requests=1_000)
class FeedbackLog:
    """An append-only, ordered list of events; sequence numbers start at 1."""

    def __init__(self) -> None:
        self._events: list[Any] = []
        self._applied: dict[str, int] = {}
        self._changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def append(self, event: Any) -> int:
        """Store ``event``; return its sequence number and wake the followers."""
        changed = self._condition()
        async with changed:
            self._events.append(event)
            changed.notify_all()
            return len(self._events)

    async def since(self, seq: int, timeout_s: float = 1.0) -> list[tuple[int, Any]]:
        """Events after ``seq`` as ``(seq, event)``, waiting up to ``timeout_s`` for one."""
        changed = self._condition()
        async with changed:
            if len(self._events) <= seq and timeout_s > 0:
                try:
                    await asyncio.wait_for(
                        changed.wait_for(lambda: len(self._events) > seq), timeout_s)
                except TimeoutError:
                    return []
            return [(n, e) for n, e in enumerate(self._events[seq:], start=seq + 1)]

    async def ack(self, replica: str, seq: int) -> None:
        """``replica`` has applied every event up to ``seq``."""
        changed = self._condition()
        async with changed:
            self._applied[replica] = max(seq, self._applied.get(replica, 0))
            changed.notify_all()

    async def wait_applied(self, seq: int, replicas: int, timeout_s: float = 5.0) -> bool:
        """Wait until ``replicas`` replicas have applied ``seq``; False on timeout."""
        changed = self._condition()

        def done() -> bool:
            return sum(1 for s in self._applied.values() if s >= seq) >= replicas

        async with changed:
            try:
                await asyncio.wait_for(changed.wait_for(done), timeout_s)
            except TimeoutError:
                return False
            return True

    def head(self) -> int:
        return len(self._events)
