"""Pseudonymisation of user ids (``gnnrec ingest --pseudonymize``).

The keyed rule and its key file live in :mod:`gnnrec.privacy` (forget tombstones use the
same rule); this module applies it to the id columns of a source.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gnnrec.privacy import (
    HEX_CHARS,
    KEY_BYTES,
    PREFIX,
    default_key_file,
    load_key,
    pseudonym,
)

__all__ = ["HEX_CHARS", "KEY_BYTES", "PREFIX", "default_key_file", "load_key", "pseudonym",
           "pseudonymize_ids"]


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
