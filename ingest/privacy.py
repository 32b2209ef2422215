"""Pseudonymisation of user ids with a keyed HMAC-SHA256.

``pseudonym(id) = "u_" + hex(HMAC-SHA256(key, utf8(id)))[:32]`` (128 bits): stable for
one key, not reversible without it, and collision-free in practice. The key is 32
random bytes in a 0600 file *outside* the database (default
``<gnnrec_home()>/pseudonym.key``), created on first use; keep it to map a person
to their pseudonym later (``gnnrec forget USER --pseudonymize``), delete it to make
the pseudonyms unlinkable for good.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from gnnrec.graph.settings import gnnrec_home
from gnnrec.ingest.errors import IngestError

PREFIX = "u_"
HEX_CHARS = 32
KEY_BYTES = 32


def default_key_file() -> Path:
    """``<gnnrec_home()>/pseudonym.key``."""
    return gnnrec_home() / "pseudonym.key"


def load_key(path: Path | None = None, create: bool = True) -> bytes:
    """Read the key file, creating it (0600, 32 random bytes) when absent and ``create``.

    Raises :class:`IngestError` when the file is missing and ``create`` is false, or
    when it is empty. Warns on stderr when group or others may read it.
    """
    path = Path(path or default_key_file())
    if not path.exists():
        if not create:
            raise IngestError(f"{path}: pseudonymisation key not found (nothing was ever "
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
        raise IngestError(f"{path}: the pseudonymisation key file is empty")
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return text  # a key written by hand: use its raw bytes


def pseudonym(user_id: str, key: bytes) -> str:
    """The pseudonym of one user id."""
    digest = hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return PREFIX + digest[:HEX_CHARS]


def pseudonymize_ids(ids: pd.Series, key: bytes) -> pd.Series:
    """Pseudonyms for a column of ids, hashing each distinct id once.

    Missing and blank ids are left as they are (validation rejects them).
    """
    values = ids.astype(object)
    present = values.notna().to_numpy() & (values.astype(str).str.strip() != "").to_numpy()
    if not present.any():
        return values
    codes, uniques = pd.factorize(values[present].astype(str))
    mapped = np.array([pseudonym(u, key) for u in uniques], dtype=object)
    out = values.to_numpy(dtype=object).copy()
    out[present] = mapped[codes]
    return pd.Series(out, index=ids.index, name=ids.name)
