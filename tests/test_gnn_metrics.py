"""Metrics against hand-computed values; evaluation protocol (what is excluded)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gnn_fixtures import hand_graph  # noqa: E402

from gnnrec.gnn.evaluate import EvaluationError, Evaluator, evaluate  # noqa: E402
from gnnrec.gnn.metrics import MetricAccumulator, user_metrics  # noqa: E402

L3 = 1 / math.log2(3)


def test_user_metrics_by_hand() -> None:
    hits = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    n_rel = torch.tensor([3, 1])
    m4 = user_metrics(hits, n_rel, 4)
    assert m4["recall"].tolist() == pytest.approx([2 / 3, 1.0])
    assert m4["precision"].tolist() == pytest.approx([0.5, 0.25])
    assert m4["hit"].tolist() == [1.0, 1.0]
    assert m4["mrr"].tolist() == pytest.approx([1.0, 0.25])
    assert m4["ndcg"].tolist() == pytest.approx([(1 + 0.5) / (1 + L3 + 0.5), 1 / math.log2(5)])
    m2 = user_metrics(hits, n_rel, 2)
    assert m2["recall"].tolist() == pytest.approx([1 / 3, 0.0])
    assert m2["ndcg"].tolist() == pytest.approx([1 / (1 + L3), 0.0])
    assert m2["mrr"].tolist() == [1.0, 0.0] and m2["hit"].tolist() == [1.0, 0.0]


def test_accumulator_catalogue_metrics_by_hand() -> None:
    acc = MetricAccumulator(5, torch.tensor([4, 2, 1, 0, 1]), num_users=4, ks=(1, 2))
    topk = torch.tensor([[0, 1], [0, 3], [2, 4]])
    hits = torch.tensor([[True, False], [False, True], [False, False]])
    valid = torch.tensor([[True, True], [True, True], [True, False]])  # item 4 is padding
    acc.update(topk[:2], hits[:2], torch.tensor([1, 2]), valid[:2])
    acc.update(topk[2:], hits[2:], torch.tensor([1]), valid[2:])
    out = acc.compute()
    assert out["users"] == 3
    assert out["hit@1"] == pytest.approx(1 / 3) and out["hit@2"] == pytest.approx(2 / 3)
    assert out["recall@2"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert out["coverage@1"] == pytest.approx(2 / 5)  # items 0, 2
    assert out["coverage@2"] == pytest.approx(4 / 5)  # items 0, 1, 2, 3 (4 was padding)
    info = {0: -math.log2(4 / 4), 1: -math.log2(2 / 4), 2: -math.log2(1 / 4), 3: -math.log2(1 / 4)}
    assert out["novelty@1"] == pytest.approx((info[0] + info[0] + info[2]) / 3)
    assert out["novelty@2"] == pytest.approx(
        (info[0] + info[1] + info[0] + info[3] + info[2]) / 5)


def _scores(pref: dict[int, list[int]]):
    """Score function ranking each user's listed items first, in that order."""
    def score(users: torch.Tensor) -> torch.Tensor:
        s = -torch.arange(6, dtype=torch.float32).repeat(users.numel(), 1)  # item 0 best
        for row, u in enumerate(users.tolist()):
            for rank, item in enumerate(pref.get(u, [])):
                s[row, item] = 100.0 - rank
        return s
    return score


def test_valid_excludes_train_items() -> None:
    g = hand_graph()
    # prefers its own train items: they must never be ranked
    score = _scores({0: [0, 1, 2, 5, 3], 1: [5, 0, 1, 4, 2]})
    out = evaluate(score, g, "valid", ks=(1, 2))
    # user 0: candidates 5,3,4 -> top1 5 (miss), top2 5,3 (hit at rank 2)
    # user 1: candidates 4,2,3 -> top1 4 (miss), top2 4,2 (hit at rank 2)
    assert out["users"] == 2
    assert out["hit@1"] == 0 and out["recall@2"] == 1.0
    assert out["mrr@2"] == pytest.approx(0.5) and out["ndcg@2"] == pytest.approx(L3)
    assert out["coverage@1"] == pytest.approx(2 / 6) and out["coverage@2"] == pytest.approx(4 / 6)
    ev = Evaluator(g, "valid", ks=(1, 2))
    assert ev.users.tolist() == [0, 1]


def test_per_user_values_are_the_users_own_and_average_to_the_means() -> None:
    g = hand_graph()
    score = _scores({0: [0, 1, 2, 5, 3], 1: [5, 0, 1, 4, 2]})
    ev = Evaluator(g, "valid", ks=(1, 2))
    means, users, values = ev.per_user(score)
    assert means == ev(score)
    assert users.tolist() == [0, 1]
    # user 0: top2 5, 3 with 3 relevant (rank 2); user 1: top2 4, 2 with 2 relevant
    assert values["hit@1"].tolist() == [0.0, 0.0] and values["mrr@2"].tolist() == [0.5, 0.5]
    for key, v in values.items():
        assert v.shape == (2,) and float(v.mean()) == pytest.approx(means[key]), key
    with pytest.raises(ValueError, match="keep_per_user"):
        MetricAccumulator(6, torch.ones(6), 4).per_user()


def test_test_excludes_train_and_valid_items() -> None:
    g = hand_graph()
    score = _scores({0: [3, 4], 1: [2, 3]})  # valid item first, then the test item
    out = evaluate(score, g, "test", ks=(1, 2))
    assert out["hit@1"] == 1.0 and out["ndcg@1"] == 1.0
    # item counts in train: i0 2, i1 2, i2 3, i3 0, i4 1, i5 1; 4 users
    assert out["novelty@1"] == pytest.approx((-math.log2(1 / 4) + -math.log2(1 / 4)) / 2)


def test_catalogue_smaller_than_k_and_batches() -> None:
    g = hand_graph()
    score = _scores({})
    a = evaluate(score, g, "valid")  # K = 10, 20 > 6 items: padded, still correct
    b = evaluate(score, g, "valid", batch_size=1)
    assert a == b
    assert a["recall@20"] == 1.0 and a["precision@10"] == pytest.approx(0.1)
    assert a["coverage@20"] == pytest.approx(4 / 6)  # user 0: 3,4,5; user 1: 2,3,4


def test_bad_scores_are_reported() -> None:
    g = hand_graph()
    with pytest.raises(EvaluationError, match="shape"):
        evaluate(lambda u: torch.zeros(u.numel(), 5), g)
    with pytest.raises(EvaluationError, match="NaN"):
        evaluate(lambda u: torch.full((u.numel(), 6), float("nan")), g)
