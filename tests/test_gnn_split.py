"""Per-user random and temporal splits, and the RecBole export."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gnn_fixtures import hand_graph  # noqa: E402

from gnnrec.gnn.data import IU, UI, build_graph, fingerprint  # noqa: E402
from gnnrec.gnn.generators import synthetic_graph  # noqa: E402
from gnnrec.gnn.split import (  # noqa: E402
    TEST,
    TRAIN,
    VALID,
    SplitError,
    apply_split,
    ensure_split,
    merge_valid,
    random_split,
    temporal_split,
    write_recbole,
)


def test_random_split_is_seeded_complete_and_per_user() -> None:
    g = synthetic_graph(400, 150, seed=0)
    a, b = apply_split(g, seed=7), apply_split(g, seed=7)
    c = apply_split(g, seed=8)
    assert torch.equal(a[UI].split, b[UI].split) and not torch.equal(a[UI].split, c[UI].split)
    assert torch.equal(a[UI].split, a[IU].split)
    assert "split" not in g[UI]  # input untouched
    split, user = a[UI].split.numpy(), a[UI].edge_index[0].numpy()
    counts = np.bincount(split, minlength=3)
    assert counts.sum() == user.size  # every edge in exactly one part
    assert a.split_info["counts"] == {"train": counts[0], "valid": counts[1], "test": counts[2]}
    frac = counts / counts.sum()
    assert abs(frac[0] - 0.8) < 0.05 and abs(frac[1] - 0.1) < 0.03
    for u in range(400):  # every evaluated user keeps >= 1 train, valid and test edge
        s = split[user == u]
        if s.size >= 3:
            assert {TRAIN, VALID, TEST} <= set(s.tolist())
        else:
            assert (s == TRAIN).all()


def test_min_interactions_keeps_small_users_in_train() -> None:
    user = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    s = random_split(user, 3, min_interactions=5, seed=0)
    assert (s[user != 2] == TRAIN).all()
    assert sorted(s[user == 2].tolist()) == [TRAIN, TRAIN, TRAIN, VALID, TEST]
    s3 = random_split(user, 3, seed=0)
    assert sorted(s3[user == 0].tolist()) == [TRAIN, VALID, TEST]
    assert (s3[user == 1] == TRAIN).all()
    with pytest.raises(SplitError, match="at least 3"):
        random_split(user, 3, min_interactions=2)
    with pytest.raises(SplitError, match="fractions"):
        random_split(user, 3, fractions=(0.5, 0.5, 0.5))


def test_temporal_split_leaves_last_out() -> None:
    user = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    time = np.array([40, 10, 30, 20, 5, 5, 9, 1, 2])
    s = temporal_split(user, time, 3)
    assert s.tolist() == [TEST, TRAIN, VALID, TRAIN, TRAIN, VALID, TEST, TRAIN, TRAIN]
    with pytest.raises(SplitError, match="no interaction times"):
        temporal_split(user, np.zeros_like(time), 3)


def test_temporal_apply_split_on_graph() -> None:
    g = apply_split(synthetic_graph(100, 80, seed=2), "temporal")
    ei, t, s = g[UI].edge_index, g[UI].time, g[UI].split
    for u in range(100):
        m = ei[0] == u
        if int(m.sum()) >= 3:
            times = t[m]
            assert int(times[s[m] == TEST]) == int(times.max())
            assert int(times[s[m] == VALID]) <= int(times[s[m] == TEST])
            assert int(times[s[m] == TRAIN].max()) <= int(times[s[m] == VALID])
    assert g.split_info["kind"] == "temporal" and g.split_info["unknown_times"] == 0


def test_split_is_vectorised_on_a_large_graph() -> None:
    rng = np.random.default_rng(0)
    user = rng.integers(0, 200_000, size=2_000_000)
    s = random_split(user, 200_000, seed=0)  # no per-user Python loop: well under a second
    assert s.shape == user.shape


def test_ensure_split_applies_default_once() -> None:
    g = synthetic_graph(50, 40, seed=0)
    h, applied = ensure_split(g)
    assert applied and h.split_info["kind"] == "random" and h.split_info["seed"] == 0
    h2, applied2 = ensure_split(h)
    assert not applied2 and h2 is h
    assert fingerprint(ensure_split(g)[0]) == fingerprint(h)


def test_merge_valid_moves_valid_to_train_and_keeps_test() -> None:
    g = apply_split(synthetic_graph(60, 40, seed=3), "random", seed=3)
    before = g[UI].split.clone()
    merged = merge_valid(g)
    after = merged[UI].split
    assert torch.equal(after[before == TEST], before[before == TEST])  # test is untouched
    assert (after[before == VALID] == TRAIN).all() and not (after == VALID).any()
    assert torch.equal(merged[IU].split, after)
    assert torch.equal(g[UI].split, before)  # the input graph is not changed
    counts = g.split_info["counts"]
    assert merged.split_info["counts"] == {"train": counts["train"] + counts["valid"],
                                           "valid": 0, "test": counts["test"]}
    assert merged.split_info["valid_merged"] is True and "valid_merged" not in g.split_info
    assert fingerprint(merged) != fingerprint(g)
    with pytest.raises(SplitError, match="no split"):
        merge_valid(synthetic_graph(20, 10, seed=0))


def test_recbole_files(tmp_path: Path) -> None:
    g = hand_graph()
    paths = write_recbole(g, tmp_path, "demo")
    assert [p.name for p in paths] == ["demo.train.inter", "demo.valid.inter", "demo.test.inter"]
    header = paths[0].read_text().splitlines()[0]
    assert header == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    frames = [pd.read_csv(p, sep="\t", dtype={"user_id:token": str, "item_id:token": str})
              for p in paths]
    assert [len(f) for f in frames] == [9, 2, 2]
    assert set(frames[2]["item_id:token"]) == {"i4", "i3"}
    assert frames[1]["timestamp:float"].tolist() == [400.0, 900.0]
    bad = build_graph(["a\tb"], ["x"], [[0], [0]], split=[0])
    with pytest.raises(SplitError, match="tab"):
        write_recbole(bad, tmp_path, "bad")
