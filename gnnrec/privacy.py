"""The one keyed-hash rule for user ids: pseudonyms and forget tombstones.

``pseudonym(id) = "u_" + hex(HMAC-SHA256(key, utf8(id)))[:32]`` (128 bits): stable for
one key, not reversible without it, and collision-free in practice. The key is 32
random bytes in a 0600 file *outside* the database (default
``<gnnrec_home()>/pseudonym.key``), created on first use.

Two uses, one rule:

* ``gnnrec ingest --pseudonymize`` stores ``pseudonym(raw id)`` instead of the raw id
  (keep the key to map a person to their pseudonym later, ``gnnrec forget USER
  --pseudonymize``; delete it to make the pseudonyms unlinkable for good);
* a forgotten user leaves a tombstone ``(:Forgotten {key: pseudonym(stored id)})`` in
  Neo4j (see :mod:`gnnrec.graph.forgotten`), so the database never holds the forgotten id
  itself, yet every part of gnnrec that holds the key (serving replicas, export, ingest)
  recognises the user. :func:`key_id` names the key a tombstone was made with, so a
  process holding another key says so instead of missing the tombstone.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
import sys
from collections.abc import Iterable
from pathlib import Path

from gnnrec.errors import GnnrecError
from gnnrec.graph.settings import gnnrec_home

PREFIX = "u_"
HEX_CHARS = 32
KEY_BYTES = 32
KEY_FILE_ENV = "GNNREC_KEY_FILE"


class KeyFileError(GnnrecError):
    """The key file is missing (and may not be created) or empty."""


def default_key_file() -> Path:
    """``$GNNREC_KEY_FILE``, else ``<gnnrec_home()>/pseudonym.key``."""
    if os.environ.get(KEY_FILE_ENV):
        return Path(os.environ[KEY_FILE_ENV]).resolve()
    return gnnrec_home() / "pseudonym.key"


def load_key(path: Path | None = None, create: bool = True) -> bytes:
    """Read the key file, creating it (0600, 32 random bytes) when absent and ``create``.

    Raises :class:`KeyFileError` when the file is missing and ``create`` is false, or
    when it is empty. Warns on stderr when group or others may read it.
    """
    path = Path(path or default_key_file())
    if not path.exists():
        if not create:
            raise KeyFileError(f"{path}: pseudonymisation key not found (nothing was ever "
                               f"pseudonymised with it); pass --key-file")
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # created by a concurrent run: use theirs
            return load_key(path, create=False)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.hex().encode())
        return key
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        print(f"warning: {path} is readable by others (mode {mode:o}); chmod 600 it",
              file=sys.stderr)
    text = path.read_bytes().strip()
    if not text:
        raise KeyFileError(f"{path}: the pseudonymisation key file is empty")
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return text  # a key written by hand: use its raw bytes


def pseudonym(user_id: str, key: bytes) -> str:
    """The pseudonym of one user id (HMAC-SHA256 under ``key``, shortened)."""
    return PREFIX + hmac.digest(key, user_id.encode("utf-8"), "sha256").hex()[:HEX_CHARS]


def pseudonyms(user_ids: Iterable[str], key: bytes) -> dict[str, str]:
    """``{pseudonym: id}`` for many ids (about a second per million)."""
    return {pseudonym(u, key): u for u in user_ids}


def key_id(key: bytes) -> str:
    """A short public name of ``key`` (8 hex digits of a keyed hash of a fixed text)."""
    return pseudonym("gnnrec key id", key)[len(PREFIX):len(PREFIX) + 8]
