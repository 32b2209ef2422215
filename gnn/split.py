"""Per-user train / valid / test split of the ``('user','interacts','item')`` edges.

Two kinds, both vectorised (one sort over the edges, no loop over users):

- ``random`` (default 80/10/10, seeded): each user's interactions are shuffled with a
  seeded generator; the first ``max(1, round(f_test * n))`` go to test, the next
  ``max(1, round(f_valid * n))`` to valid, the rest (always at least one) to train.
- ``temporal`` (leave-last-out): the user's latest interaction (by ``time``) goes to test,
  the one before to valid, the rest to train. Ties in time are broken by edge order;
  unknown times (0) sort as the oldest.

Users with fewer than ``min_interactions`` interactions (default 3, the smallest count that
leaves one edge for each of train, valid and test) stay in train only; they are still
trained on but never evaluated. The split is ``data['user','interacts','item'].split``
(Long[E], 0 = train, 1 = valid, 2 = test; copied onto ``rev_interacts``) plus
``data.split_info``, a plain dict (kind, seed, fractions, min_interactions, counts).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from gnnrec.errors import GnnrecError
from gnnrec.gnn.data import IU, TEST, TRAIN, UI, VALID, has_split

SplitKind = Literal["random", "temporal"]
DEFAULT_MIN_INTERACTIONS = 3


class SplitError(GnnrecError):
    """A split that cannot be made (bad fractions, no times for a temporal split)."""


def _ranks(user: np.ndarray, order: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank of each edge within its user under ``order`` (sorted by user first) + user counts."""
    counts = np.bincount(user, minlength=num_users)
    starts = np.cumsum(counts) - counts
    rank = np.empty(user.size, dtype=np.int64)
    rank[order] = np.arange(user.size) - starts[user[order]]
    return rank, counts


def random_split(
    user: np.ndarray,
    num_users: int,
    *,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    min_interactions: int = DEFAULT_MIN_INTERACTIONS,
) -> np.ndarray:
    """Seeded per-user random split.

    Args:
        user: Long[E] user index of each interaction.
    Returns:
        Int64[E] with 0 = train, 1 = valid, 2 = test.
    """
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise SplitError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    if min_interactions < 3:
        raise SplitError("min_interactions must be at least 3 (one train, valid, test edge)")
    user = np.asarray(user, dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(user.size), user))
    rank, counts = _ranks(user, order, num_users)
    n = counts[user]
    n_test = np.maximum(1, np.floor(fractions[2] * n + 0.5)).astype(np.int64)
    n_valid = np.maximum(1, np.floor(fractions[1] * n + 0.5)).astype(np.int64)
    n_test = np.minimum(n_test, n - 2)
    n_valid = np.minimum(n_valid, n - 1 - n_test)
    split = np.where(rank < n_test, TEST, np.where(rank < n_test + n_valid, VALID, TRAIN))
    return np.where(n >= min_interactions, split, TRAIN).astype(np.int64)


def temporal_split(
    user: np.ndarray,
    time: np.ndarray,
    num_users: int,
    *,
    min_interactions: int = DEFAULT_MIN_INTERACTIONS,
) -> np.ndarray:
    """Leave-last-out by time: latest -> test, second latest -> valid. Returns Int64[E]."""
    if min_interactions < 3:
        raise SplitError("min_interactions must be at least 3 (one train, valid, test edge)")
    user = np.asarray(user, dtype=np.int64)
    time = np.asarray(time, dtype=np.int64)
    if user.size and not (time != 0).any():
        raise SplitError("the graph has no interaction times (all 0 = unknown): "
                         "use --kind random")
    order = np.lexsort((np.arange(user.size), time, user))
    rank, counts = _ranks(user, order, num_users)
    from_end = counts[user] - 1 - rank
    split = np.where(from_end == 0, TEST, np.where(from_end == 1, VALID, TRAIN))
    return np.where(counts[user] >= min_interactions, split, TRAIN).astype(np.int64)


def apply_split(
    data: HeteroData,
    kind: SplitKind = "random",
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    min_interactions: int = DEFAULT_MIN_INTERACTIONS,
) -> HeteroData:
    """Return a shallow copy of ``data`` with ``split`` and ``split_info`` set (input untouched)."""
    ei = data[UI].edge_index
    user = ei[0].numpy()
    num_users = int(data["user"].num_nodes)
    if kind == "random":
        split = random_split(user, num_users, fractions=fractions, seed=seed,
                             min_interactions=min_interactions)
    elif kind == "temporal":
        split = temporal_split(user, data[UI].time.numpy(), num_users,
                               min_interactions=min_interactions)
    else:
        raise SplitError(f"unknown split kind {kind!r} (random or temporal)")
    out = _with_split(data, torch.from_numpy(split))
    counts = np.bincount(split, minlength=3)
    evaluated = int((np.bincount(user[split != TRAIN], minlength=num_users) > 0).sum())
    with_edges = int((np.bincount(user, minlength=num_users) > 0).sum())
    out.split_info = {
        "kind": kind,
        "seed": int(seed) if kind == "random" else None,
        "fractions": [float(f) for f in fractions] if kind == "random" else None,
        "min_interactions": int(min_interactions),
        "counts": {"train": int(counts[0]), "valid": int(counts[1]), "test": int(counts[2])},
        "users": {"evaluated": int(evaluated), "train_only": int(with_edges - evaluated)},
    }
    if kind == "temporal":
        out.split_info["unknown_times"] = int((data[UI].time == 0).sum())
    return out


def merge_valid(data: HeteroData) -> HeteroData:
    """A shallow copy of the split ``data`` with its valid interactions moved to train (the
    test ones untouched): the graph of a final fit on train + valid, once valid has chosen
    the model and its epoch count. ``split_info`` records it (``valid_merged``)."""
    if not has_split(data):
        raise SplitError("graph has no split: nothing to merge (run `gnnrec split` first)")
    split = data[UI].split.clone()
    split[split == VALID] = TRAIN
    out = _with_split(data, split)
    info = dict(getattr(data, "split_info", None) or {})
    counts = np.bincount(split.numpy(), minlength=3)
    out.split_info = {**info, "valid_merged": True,
                      "counts": {"train": int(counts[0]), "valid": 0, "test": int(counts[2])}}
    return out


def _with_split(data: HeteroData, split: torch.Tensor) -> HeteroData:
    """A shallow copy of ``data`` whose interactions (both directions) carry ``split``."""
    out = copy.copy(data)
    out[UI].split = split
    if IU in out.edge_types:
        out[IU].split = split
    return out


def ensure_split(data: HeteroData, *, seed: int = 0) -> tuple[HeteroData, bool]:
    """``data`` unchanged if it has a split, else with the default random split (seed 0).

    Returns ``(data, applied)`` so callers can tell the user a split was made.
    """
    if has_split(data):
        return data, False
    return apply_split(data, "random", seed=seed), True


def write_recbole(data: HeteroData, directory: str | os.PathLike[str], name: str) -> list[Path]:
    """Write ``NAME.train.inter``, ``NAME.valid.inter``, ``NAME.test.inter`` (RecBole atomic files).

    Columns ``user_id:token  item_id:token  rating:float  timestamp:float`` with external ids,
    so RecBole runs on exactly this split (``benchmark_filename: [train, valid, test]``).
    """
    if not has_split(data):
        raise SplitError("graph has no split to write")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    users = np.asarray(data["user"].ext_id, dtype=object)
    items = np.asarray(data["item"].ext_id, dtype=object)
    for nt, ids in (("user", users), ("item", items)):
        bad = [e for e in ids if any(ch in e for ch in "\t\n\r")]
        if bad:
            raise SplitError(f"{nt} id {bad[0]!r} contains a tab or newline; "
                             "RecBole token fields cannot hold it")
    ei, split = data[UI].edge_index.numpy(), data[UI].split.numpy()
    frame = pd.DataFrame({
        "user_id:token": users[ei[0]],
        "item_id:token": items[ei[1]],
        "rating:float": data[UI].weight.numpy(),
        "timestamp:float": data[UI].time.numpy().astype(np.float64),
    })
    paths = []
    for code, part in ((TRAIN, "train"), (VALID, "valid"), (TEST, "test")):
        path = directory / f"{name}.{part}.inter"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            frame[split == code].to_csv(tmp, sep="\t", index=False)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        paths.append(path)
    return paths
