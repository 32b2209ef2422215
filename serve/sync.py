"""Bringing a serving state in line with Neo4j: forgotten users and online feedback.

A run is a snapshot of Neo4j at its export (``exported_at``, Neo4j's clock). Since then
two things may have happened that a state loaded from the run must learn, on every load
(the first one, a reload, a restart, a new replica):

* users were forgotten: their tombstones (:mod:`gnnrec.graph.forgotten`) name them, and
  the state drops them; a running replica also polls for new tombstones, so a ``gnnrec
  forget`` without ``--server`` reaches it within ``forget_poll_s``;
* online feedback was received (``POST /interactions``, ``POST /users``; Neo4j stamps it
  with ``received``, :mod:`gnnrec.graph.serving`): the state replays what was received
  after the export, oldest first, one request at a time (the writes of one transaction
  share their stamp), through the same fold-in as live feedback
  (:meth:`ServingState.add_user`, :meth:`ServingState.add_interactions`), so a reload keeps
  the users made and the embeddings folded in online. Replaying what the state already
  holds changes nothing, so the replay starts a margin before the export.

Reading is blocking (a worker thread, one read transaction without the driver's retry
loop); applying is quick and runs where the state is safe to change (the event loop of a
served state, or the loading thread of one not served yet). When Neo4j does not answer at
load, the state is served as it is and the service's poller completes the pass later.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gnnrec.graph.forgotten import POLL_OVERLAP_MS, Tombstone, match, tombstones
from gnnrec.graph.serving import Feedback, feedback_since
from gnnrec.privacy import key_id, pseudonyms
from gnnrec.serve.state import ServingState

log = logging.getLogger(__name__)
# Feedback is replayed from this long before the newest stamp already read (or the run's
# export): a write's stamp is its transaction's start, and it may commit after a later one
# was read. Replaying what the state holds changes nothing.
REPLAY_MARGIN_US = 60_000_000


@dataclass(frozen=True)
class SyncPlan:
    """What one read found: users of the state to drop, the new tombstones, the feedback
    to replay (``None``: no replay this time)."""

    forgotten: list[str]
    tombstones: list[Tombstone]
    feedback: Feedback | None


class Neo4jSync:
    """Reads tombstones and feedback for one replica (``graph``: a GraphClient)."""

    def __init__(self, graph: Any, key: bytes, replica: str = "local") -> None:
        self.graph, self.key, self.replica = graph, key, replica
        self._key_id = key_id(key)

    def keys_of(self, users: Iterable[str]) -> dict[str, str]:
        """``{tombstone key: user}``: what a write checks in its transaction."""
        return pseudonyms(dict.fromkeys(users), self.key)

    def read(self, state: ServingState, user_ids: list[str], replay: bool) -> SyncPlan:
        """New tombstones naming ``user_ids`` (the state's users) and, with ``replay``, the
        feedback received since the state's ``feedback_since``; blocking."""
        sync = state.neo4j_sync
        found = [t for t in tombstones(self.graph, sync.tombstones_since, fail_fast=True)
                 if t.key not in sync.tombstones]
        other = [t for t in found if t.key_id != self._key_id]
        if other:
            log.error("replica %s: %d forget tombstone(s) were made with another key (key id "
                      "%s; this replica's: %s) and cannot be matched: deploy with the key file "
                      "that `gnnrec forget` uses", self.replica, len(other),
                      sorted({str(t.key_id) for t in other})[:3], self._key_id)
        mine = [t for t in found if t.key_id == self._key_id]
        feedback = None
        if replay and sync.feedback_since is not None:
            feedback = feedback_since(self.graph, sync.feedback_since)
        return SyncPlan(list(match(user_ids, mine, self.key)), found, feedback)

    def apply(self, state: ServingState, plan: SyncPlan) -> None:
        """Drop the forgotten users, then replay the feedback (tombstoned users have no
        feedback left in Neo4j: forgetting deleted it)."""
        sync = state.neo4j_sync
        for user in plan.forgotten:
            state.forget_user(user)
        sync.tombstones.update(t.key for t in plan.tombstones)
        if plan.tombstones:
            newest = max(t.at for t in plan.tombstones) - POLL_OVERLAP_MS
            sync.tombstones_since = max(newest, sync.tombstones_since or newest)
        if plan.forgotten:
            log.info("replica %s: dropped %d forgotten user(s)", self.replica,
                     len(plan.forgotten))
        if plan.feedback is not None:
            replay(state, plan.feedback)
            stamps = [at for at, _, _ in plan.feedback.interactions]
            stamps += [at for at, _, _ in plan.feedback.new_users]
            if stamps:
                sync.feedback_since = max(max(stamps) - REPLAY_MARGIN_US,
                                          sync.feedback_since or 0)
        sync.loaded = True

    def drop_if_forgotten(self, state: ServingState, users: list[str]) -> None:
        """Drop those of ``users`` (just created from the feedback log) that a tombstone
        this state already applied names: a log event written before a ``gnnrec forget``."""
        known = state.neo4j_sync.tombstones
        if known:
            for k, user in self.keys_of(users).items():
                if k in known:
                    state.forget_user(user)


def replay(state: ServingState, feedback: Feedback) -> None:
    """Fold ``feedback`` into ``state`` as the live requests did, one stamp at a time: the
    users ``POST /users`` made (from their items and friends the state knows), then the
    interactions (new users and items are created; pairs the state holds change nothing)."""
    pairs: dict[int, list[tuple[str, str]]] = {}
    for at, user, item in feedback.interactions:
        pairs.setdefault(at, []).append((user, item))
    made: dict[int, list[tuple[str, list[str]]]] = {}
    for at, user, friends in feedback.new_users:
        made.setdefault(at, []).append((user, friends))
    done = state.neo4j_sync.replayed
    done["interactions"] += len(feedback.interactions)
    for at in sorted(set(pairs) | set(made)):
        group = pairs.get(at, [])
        for user, friends in made.get(at, []):
            if state.has_user(user):
                continue
            items = [i for u, i in group if u == user and state.has_item(i)]
            state.add_user(user, items, [f for f in friends
                                         if f != user and state.has_user(f)])
            done["users_created"] += 1
        if group:
            done["users_created"] += len(state.add_interactions(group).users_created)
