"""The approximate item index of serving: recall against exact scoring, the filters, updates.

Small catalogues (a few thousand clustered items) with the index forced on
(``AnnOptions(threshold=1)``) next to the same state scoring exactly; no Ray, no Neo4j.
The index's ``nprobe`` is calibrated on some users; recall is measured on the others.
The 1M-item figures are in ``experiments/serve_bench.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from gnnrec.gnn.adjacency import CSR
from gnnrec.serve.ann import AnnOptions, ItemIndex
from gnnrec.serve.schemas import IndexStatus
from gnnrec.serve.state import ServingState
from tests.test_serve_state import make_state

DIM, CLUSTERS = 16, 30


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray) -> np.ndarray:
    """Points around ``centres`` with log-normal norms (as trained embeddings are)."""
    picked = centres[rng.integers(0, len(centres), n)]
    points = picked + 0.4 * rng.standard_normal((n, centres.shape[1]))
    return (points * rng.lognormal(0.0, 0.3, (n, 1))).astype(np.float32)


def recall(found: list[str], truth: list[str]) -> float:
    return len(set(found) & set(truth)) / max(len(truth), 1)


@pytest.mark.parametrize("head_share", [0.0, 0.01])
def test_index_finds_the_exact_neighbours(head_share: float) -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLUSTERS, DIM))
    items, queries = clustered(rng, 5_000, centres), clustered(rng, 100, centres)
    index = ItemIndex.build(items, AnnOptions(threshold=1, head_share=head_share))
    assert len(index) == 5_000 and index.num_lists == 5_000 // 40
    assert index.head_items == round(head_share * 5_000)
    got = [recall(list(index.search(q, 20)), list(np.argsort(-(items @ q))[:20]))
           for q in queries]
    assert np.mean(got) >= 0.95
    everything = index.search(queries[0], 10_000)  # more than it holds: every item once
    assert sorted(everything.tolist()) == list(range(5_000))
    index.add(np.array([5_000]), 10 * queries[0][None])  # the largest norm: into the head
    assert index.head_items == round(head_share * 5_000) + (head_share > 0)
    assert index.search(queries[0], 1).tolist() == [5_000]
    index.add(np.array([5_001]), 1e-3 * queries[0][None])  # tiny: into the lists
    assert index.head_items == round(head_share * 5_000) + (head_share > 0)
    assert 5_001 in index.search(queries[0], 5_002).tolist()


def test_the_exact_head_is_capped() -> None:
    """``head_max`` bounds the exact head whatever the share; the capped index still finds
    the largest inner products."""
    rng = np.random.default_rng(1)
    items = rng.standard_normal((3_000, DIM)).astype(np.float32)
    index = ItemIndex.build(items, AnnOptions(threshold=1, head_share=0.1, head_max=25))
    assert index.head_items == 25 and len(index) == 3_000
    q = items[7] * 3
    assert list(index.search(q, 1)) == [int(np.argmax(items @ q))]


def pair_of_states(n_users: int = 300, **ann: object) -> tuple[ServingState, ServingState]:
    """The same 3,000-item state twice: exact scoring, and through the index."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((CLUSTERS, DIM))
    n_items = 3_000
    users, items = clustered(rng, n_users, centres), clustered(rng, n_items, centres)
    seen_u = np.repeat(np.arange(n_users), 15)
    seen_i = rng.integers(0, n_items, len(seen_u))
    tag_items = np.arange(n_items)
    tag_of = np.where(tag_items % 3 == 0, 0, 1 + tag_items % 7)  # tag 0: a third of items
    args = dict(seen=CSR.from_edges(seen_u, seen_i, n_users),
                item_tags=CSR.from_edges(tag_items, tag_of, n_items),
                tag_names=[f"t{t}" for t in range(8)])
    user_ids = [f"u{u}" for u in range(n_users)]
    item_ids = [f"i{i}" for i in range(n_items)]
    exact = ServingState(user_ids, item_ids, users, items, ann=AnnOptions(threshold=0),
                         **args)  # type: ignore[arg-type]
    approx = ServingState(user_ids, item_ids, users, items,
                          ann=AnnOptions(threshold=1, **ann), **args)  # type: ignore[arg-type]
    assert exact.index is None and approx.index is not None
    return exact, approx


@pytest.mark.parametrize("query", [
    {}, {"exclude": "top3"}, {"tag": "t0"}, {"tag": "t3"}, {"diversity": 0.3}])
def test_indexed_recommendations_follow_the_filters_and_match_exact(query: dict) -> None:
    # t0 through the index, t3 exactly; calibrated (unfiltered) to 0.97 so that the filtered
    # requests, which calibration does not see, keep 0.95
    exact, approx = pair_of_states(exact_below=100, target_recall=0.97)
    recalls = []
    calibration = set(approx.calibration_users())
    assert len(calibration) == 200
    for user in [u for u in exact.user_ids() if u not in calibration]:
        kwargs = dict(query)
        if kwargs.get("exclude") == "top3":
            kwargs["exclude"] = [s.id for s in exact.recommend(user, 3).items]
        want = exact.recommend(user, 20, **kwargs).items
        got = approx.recommend(user, 20, **kwargs).items
        assert len(got) == 20
        seen = set(approx.user_items(user))
        for s in got:
            assert s.id not in seen and s.id not in kwargs.get("exclude", [])
            assert s.score == pytest.approx(approx.score(user, s.id), rel=1e-5)
        if "tag" in kwargs:
            tagged = {s.id for s in exact.recommend(user, 10_000, **kwargs).items}
            assert {s.id for s in got} <= tagged
        if "diversity" not in kwargs:
            assert [s.score for s in got] == sorted((s.score for s in got), reverse=True)
        recalls.append(recall([s.id for s in got], [s.id for s in want]))
    assert np.mean(recalls) >= 0.95, np.mean(recalls)


def test_items_added_by_feedback_are_found_and_forgotten_ones_are_not() -> None:
    exact, approx = pair_of_states()
    # u1 gets u0's taste; u0 then plays a new item, whose embedding comes from u0's
    for state in (exact, approx):
        state._user_emb.view[1] = state._user_emb.view[0]
        state.add_interactions([("u0", "brand-new")])
    assert len(approx.index) == 3_001  # type: ignore[arg-type]
    assert "brand-new" in [s.id for s in exact.recommend("u1", 100).items]
    assert "brand-new" in [s.id for s in approx.recommend("u1", 100).items]
    approx.forget_user("u0")  # the item's only user: it loses its embedding
    assert "brand-new" not in [s.id for s in approx.recommend("u1", 100).items]


def test_small_catalogues_score_exactly() -> None:
    state = make_state()
    assert state.index is None and state.info()["scoring"] == "exact"
    forced = make_state(ann=AnnOptions(threshold=1))
    assert forced.info()["scoring"] == "approximate"
    for user in ("ua", "ub", "uc"):
        for kwargs in ({}, {"tag": "rock"}, {"exclude": ["a1"]}, {"diversity": 0.5}):
            assert forced.recommend(user, 4, **kwargs) == state.recommend(user, 4, **kwargs)


def held_out_recall(exact: ServingState, approx: ServingState, k: int = 20) -> float:
    """Mean recall@k of ``approx`` against ``exact`` over the users that did not calibrate."""
    calibration = set(approx.calibration_users())
    users = [u for u in exact.user_ids() if u not in calibration]
    return float(np.mean([recall([s.id for s in approx.recommend(u, k).items],
                                 [s.id for s in exact.recommend(u, k).items]) for u in users]))


@pytest.mark.parametrize("target", [0.8, 0.95, 0.99])
def test_calibration_reaches_its_target_on_other_users(target: float) -> None:
    exact, approx = pair_of_states(n_users=800, target_recall=target)
    index = approx.index
    assert index is not None and index.calibration is not None
    cal = index.calibration
    assert cal["recall_lower_bound"] >= target and cal["k"] == 20
    tried = {step[0]: step[2] for step in cal["steps"]}
    assert tried[index.nprobe] >= target
    below = [p for p, bound in tried.items() if p < index.nprobe]
    assert all(tried[p] < target for p in below)  # nothing smaller that was tried passed
    assert held_out_recall(exact, approx) >= target
    info = approx.info()["index"]
    assert info["nprobe"] == index.nprobe and info["calibrated_recall"] >= target
    assert info["build_seconds"] > 0
    status = IndexStatus(**info)  # what /health answers
    assert status.nprobe == index.nprobe and status.head_items == index.head_items == 30


def test_calibration_scans_fewer_lists_for_a_lower_target() -> None:
    low = pair_of_states(target_recall=0.6)[1].index
    high = pair_of_states(target_recall=0.99)[1].index
    assert low is not None and high is not None
    assert low.nprobe < high.nprobe <= high.num_lists


def test_a_fixed_nprobe_is_not_calibrated() -> None:
    _, approx = pair_of_states(nprobe=3)
    assert approx.index is not None and approx.index.nprobe == 3
    assert approx.index.calibration is None and approx.calibration_users() == []
    assert approx.info()["index"]["calibrated_recall"] is None
