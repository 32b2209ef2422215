"""Negative sampling never returns a train positive."""

from __future__ import annotations

import pytest
import torch

from gnnrec.gnn.negative import NegativeSampler, NegativeSamplingError


def _dense(num_users: int, num_items: int, density: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(num_users, num_items, generator=g) < density
    mask[:, 0] = False  # every user keeps at least one negative
    u, i = mask.nonzero(as_tuple=True)
    return u, i, mask


@pytest.mark.parametrize("popularity", [False, True])
def test_never_a_positive_on_a_dense_graph(popularity: bool) -> None:
    u, i, mask = _dense(50, 30, 0.9)
    sampler = NegativeSampler(u, i, 50, 30, popularity=popularity, seed=1)
    users = torch.arange(50).repeat(40)
    neg = sampler.sample(users, 3)
    assert neg.shape == (2000, 3)
    assert not mask[users[:, None].expand(-1, 3), neg].any()
    assert bool(sampler.is_positive(u, i).all())


def test_exact_fallback_is_uniform_over_the_complement() -> None:
    u, i, mask = _dense(5, 40, 0.95, seed=3)
    sampler = NegativeSampler(u, i, 5, 40, seed=0, max_rounds=0)  # complement draws only
    users = torch.arange(5).repeat_interleave(4000)
    neg = sampler.sample(users).flatten()
    assert not mask[users, neg].any()
    for user in range(5):
        free = (~mask[user]).nonzero().flatten()
        counts = torch.bincount(neg[users == user], minlength=40)[free].float()
        assert counts.min() > 0.5 * counts.mean()  # every free item is drawn, about evenly


def test_seeded_and_resumable() -> None:
    u, i, _ = _dense(20, 50, 0.3)
    a, b = NegativeSampler(u, i, 20, 50, seed=4), NegativeSampler(u, i, 20, 50, seed=4)
    users = torch.arange(20)
    assert torch.equal(a.sample(users, 2), b.sample(users, 2))
    state = a.state_dict()
    first = a.sample(users)
    a.load_state_dict(state)
    assert torch.equal(a.sample(users), first)


def test_user_with_every_item_is_refused() -> None:
    with pytest.raises(NegativeSamplingError, match="every one of the 3 items"):
        NegativeSampler(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 2, 0]), 2, 3)


def test_row_member_answers_as_the_sorted_keys_do() -> None:
    """The binary search within each user's Int32 items gives the same membership as a
    searchsorted over Int64 ``user * num_items + item`` keys."""
    from gnnrec.gnn.adjacency import CSR, member, row_member

    g = torch.Generator().manual_seed(3)
    mask = torch.rand(40, 25, generator=g) < torch.rand(40, 1, generator=g)  # 0..25 per row
    u, i = mask.nonzero(as_tuple=True)
    csr = CSR.from_edges(u, i, 40, num_cols=25, sort=True, keep_eid=False)
    users = torch.randint(0, 40, (5000,), generator=g)
    items = torch.randint(0, 25, (5000,), generator=g)
    got = row_member(torch.from_numpy(csr.indptr), torch.from_numpy(csr.indices.copy()),
                     users, items)
    want = member(torch.from_numpy(csr.keys(25)), users * 25 + items)
    assert torch.equal(got, want)
    assert torch.equal(got, mask[users, items])
