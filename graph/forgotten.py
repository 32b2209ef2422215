"""Forget tombstones: what keeps a forgotten user forgotten after their node is gone.

Forgetting a user (``gnnrec forget U``, ``DELETE /users/U``) deletes the ``User`` node with
every relationship and, in the same transaction, MERGEs one tombstone::

    (:Forgotten {key: pseudonym(U), key_id, at})

``key`` is the keyed hash of the stored id (:func:`gnnrec.privacy.pseudonym`, the rule of
``--pseudonymize``), so the database never holds the forgotten id itself; ``key_id`` names
the key (:func:`gnnrec.privacy.key_id`), so a process holding another key fails loudly
instead of missing tombstones; ``at`` is Neo4j's clock (epoch milliseconds) at the
forget, which serving replicas poll (:func:`tombstones`).

Who reads them: serving replicas drop tombstoned users from the run they load and from
memory while they run; ``gnnrec export`` leaves tombstoned users out; ``gnnrec ingest``
rejects rows naming them (``--allow-forgotten`` loads them and removes their tombstones).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gnnrec.errors import GnnrecError
from gnnrec.graph.client import GraphClient
from gnnrec.privacy import default_key_file, key_id, load_key, pseudonym, pseudonyms

LABEL = "Forgotten"
# How far back a poll looks before the newest tombstone it saw: ``at`` is the forgetting
# transaction's start, and a transaction may commit after a later one was already read.
POLL_OVERLAP_MS = 60_000

MERGE_TOMBSTONE = """
MERGE (f:Forgotten {key: $key})
SET f.key_id = $key_id, f.at = datetime.transaction().epochMillis
"""

TOMBSTONES = """
MATCH (f:Forgotten) WHERE $since IS NULL OR f.at >= $since
RETURN f.key AS key, f.key_id AS key_id, f.at AS at
"""

DELETE_TOMBSTONES = """
UNWIND $keys AS k
MATCH (f:Forgotten {key: k})
DELETE f
"""

FORGOTTEN_AMONG = """
UNWIND $keys AS k
MATCH (f:Forgotten {key: k})
RETURN f.key AS key
"""


class ForgetKeyError(GnnrecError):
    """Tombstones made with another key than this process's (they cannot be matched)."""


class ForgottenUserError(GnnrecError):
    """A write names users that were forgotten; nothing of it was written."""

    def __init__(self, users: Sequence[str]) -> None:
        self.users = sorted(users)
        shown = ", ".join(repr(u) for u in self.users[:10])
        super().__init__(f"user(s) {shown} were forgotten (gnnrec forget / DELETE /users): "
                         "writes naming them are refused; nothing was written")


@dataclass(frozen=True)
class Tombstone:
    key: str
    key_id: str | None
    at: int


def tombstone_params(user: str, key: bytes) -> dict[str, str]:
    """The parameters of :data:`MERGE_TOMBSTONE` for ``user`` (the stored id)."""
    return {"key": pseudonym(user, key), "key_id": key_id(key)}


def refuse_forgotten(tx: Any, keys: Mapping[str, str]) -> None:
    """Inside a write transaction: raise :class:`ForgottenUserError` when a tombstone names
    one of the users of ``keys`` (``{tombstone key: user}``); the caller's transaction is
    then rolled back, so a forgotten user is never re-created by a write."""
    if keys:
        rows = tx.run(FORGOTTEN_AMONG, {"keys": list(keys)}).data()
        if rows:
            raise ForgottenUserError([keys[r["key"]] for r in rows])


def tombstones(client: GraphClient, since: int | None = None, *,
               fail_fast: bool = False) -> list[Tombstone]:
    """Tombstones with ``at >= since`` (all with ``None``); ``fail_fast``: without the
    driver's retry loop (serving's polls, which must not hang while Neo4j is down)."""
    read = client.read_once if fail_fast else client.read
    rows = read(TOMBSTONES, {"since": since})
    return [Tombstone(str(r["key"]), r["key_id"], int(r["at"] or 0)) for r in rows]


def check_key(found: Iterable[Tombstone], key: bytes, key_file: Path | None = None) -> None:
    """Raise :class:`ForgetKeyError` when a tombstone was made with another key."""
    mine = key_id(key)
    other = sorted({t.key_id or "?" for t in found if t.key_id != mine})
    if other:
        n = sum(1 for t in found if t.key_id != mine)
        raise ForgetKeyError(
            f"{n} forget tombstone(s) in Neo4j were made with another key (key id "
            f"{', '.join(other[:3])}) than {key_file or default_key_file()} (key id {mine}), "
            "so the users they name cannot be recognised: use the key file that "
            "`gnnrec forget` used (--key-file, or GNNREC_KEY_FILE, default "
            "<GNNREC_HOME>/pseudonym.key)")


def match(ids: Iterable[str], found: Sequence[Tombstone], key: bytes) -> dict[str, str]:
    """``{id: tombstone key}`` for the ``ids`` that ``found`` names (hashes every id)."""
    if not found:
        return {}
    keys = {t.key for t in found}
    return {u: k for k, u in pseudonyms(ids, key).items() if k in keys}


def forgotten_ids(client: GraphClient, ids: Sequence[str],
                  key_file: Path | None = None) -> dict[str, str]:
    """``{id: tombstone key}`` for the ``ids`` Neo4j holds a tombstone for.

    The key is read only when there are tombstones; a missing key file or tombstones made
    with another key raise (one clear line) instead of letting a forgotten user through.
    """
    found = tombstones(client)
    if not found:
        return {}
    path = Path(key_file or default_key_file())
    if not path.exists():
        raise ForgetKeyError(
            f"Neo4j holds {len(found)} forget tombstone(s) but the key they were made with "
            f"is not here ({path}): use the key file that `gnnrec forget` used "
            "(--key-file, or GNNREC_KEY_FILE)")
    key = load_key(path, create=False)
    check_key(found, key, path)
    return match(ids, found, key)


def delete_tombstones(client: GraphClient, keys: Sequence[str]) -> None:
    """Remove the tombstones of ``keys`` (``gnnrec ingest --allow-forgotten``)."""
    if keys:
        client.write(DELETE_TOMBSTONES, {"keys": list(keys)})
