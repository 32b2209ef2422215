"""CSR adjacency and the normalised sparse adjacency."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gnn_fixtures import hand_graph  # noqa: E402

from gnnrec.gnn.adjacency import CSR  # noqa: E402
from gnnrec.gnn.data import UI  # noqa: E402
from gnnrec.gnn.models.lightgcn import normalized_adjacency  # noqa: E402
from gnnrec.gnn.views import SplitInteractions, TrainView  # noqa: E402


def test_csr_rows_sorted_and_gather() -> None:
    src = torch.tensor([2, 0, 2, 1, 0])
    dst = torch.tensor([5, 3, 1, 4, 0])
    csr = CSR.from_edges(src, dst, 4, sort=True)
    assert csr.indptr.tolist() == [0, 2, 3, 5, 5]
    assert csr.indices.tolist() == [0, 3, 4, 1, 5]
    perm = torch.from_numpy(csr.eid.astype(np.int64))  # each entry's position in the edges
    assert torch.equal(dst[perm], torch.from_numpy(csr.indices.astype(np.int64))) and \
        torch.equal(src[perm].sort().values, src[perm])
    assert csr.degree().tolist() == [2, 1, 2, 0]
    pos, col = csr.gather(torch.tensor([2, 3, 0]))
    assert pos.tolist() == [0, 0, 2, 2] and col.tolist() == [1, 5, 0, 3]
    assert csr.keys(10).tolist() == [0, 3, 14, 21, 25]


def test_csr_keeps_edge_order_selects_and_checks_rows() -> None:
    csr = CSR.from_edges([2, 0, 2], [5, 3, 1], 3, weight=[0.5, 1.0, 2.0])
    assert csr.row(2).tolist() == [5, 1] and csr.weight.tolist() == [1.0, 0.5, 2.0]
    kept = csr.select(np.array([True, False, True]))
    assert kept.indptr.tolist() == [0, 1, 1, 2] and kept.eid.tolist() == [1, 2]
    with pytest.raises(ValueError, match="outside"):
        CSR.from_edges([3], [0], 3)


def test_interaction_csr_filters_by_split() -> None:
    g = hand_graph()
    inter = SplitInteractions.from_graph(g)
    ui, iu = inter.part((0,)), TrainView.from_graph(g).csr[UI]  # users' items, items' users
    assert sorted(ui.row(0).tolist()) == [0, 1, 2] and sorted(ui.row(1).tolist()) == [0, 1, 5]
    assert iu.row(2).tolist() == [0, 2, 3]
    ui01 = inter.part((0, 1))
    assert sorted(ui01.row(1).tolist()) == [0, 1, 2, 5]


def _dense_reference(nu: int, ni: int, ui: torch.Tensor, social: torch.Tensor | None,
                     w: float) -> torch.Tensor:
    n = nu + ni
    a = torch.zeros(n, n)
    a[ui[0], ui[1] + nu] = 1.0
    a[ui[1] + nu, ui[0]] = 1.0
    if social is not None:
        a[social[0], social[1]] = w
        a[social[1], social[0]] = w
    d = a.sum(1)
    inv = torch.where(d > 0, d.pow(-0.5), torch.zeros_like(d))
    return inv[:, None] * a * inv[None, :]


def test_normalized_adjacency_matches_dense() -> None:
    ui = torch.tensor([[0, 0, 1, 2], [0, 1, 1, 2]])
    ref = _dense_reference(4, 3, ui, None, 0.0)
    adj = normalized_adjacency(4, 3, ui)
    assert torch.allclose(adj.to_dense(), ref)
    assert adj.to_dense()[3].abs().sum() == 0  # isolated user 3: zero row, no NaN
    social = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 3]])  # (0,1) twice, a self-link
    adj = normalized_adjacency(4, 3, ui, social, social_weight=0.5)
    ref = _dense_reference(4, 3, ui, torch.tensor([[0, 2], [1, 3]]), 0.5)
    assert torch.allclose(adj.to_dense(), ref)
    assert adj.layout == torch.sparse_csr


def test_sparse_mm_backpropagates() -> None:
    adj = normalized_adjacency(3, 2, torch.tensor([[0, 1, 2], [0, 1, 1]]))
    x = torch.randn(5, 4, requires_grad=True)
    torch.sparse.mm(adj, x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
