"""CSR adjacency and the normalised sparse adjacency."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gnn_fixtures import hand_graph  # noqa: E402

from gnnrec.gnn.adjacency import build_csr, interaction_csr  # noqa: E402
from gnnrec.gnn.models.lightgcn import normalized_adjacency  # noqa: E402


def test_csr_rows_sorted_and_gather() -> None:
    src = torch.tensor([2, 0, 2, 1, 0])
    dst = torch.tensor([5, 3, 1, 4, 0])
    csr = build_csr(src, dst, 4)
    assert csr.indptr.tolist() == [0, 2, 3, 5, 5]
    assert csr.indices.tolist() == [0, 3, 4, 1, 5]
    assert torch.equal(dst[csr.perm], csr.indices) and torch.equal(src[csr.perm].sort().values,
                                                                    src[csr.perm])
    assert csr.degree().tolist() == [2, 1, 2, 0]
    pos, col = csr.gather(torch.tensor([2, 3, 0]))
    assert pos.tolist() == [0, 0, 2, 2] and col.tolist() == [1, 5, 0, 3]
    assert csr.keys(10).tolist() == [0, 3, 14, 21, 25]


def test_interaction_csr_filters_by_split() -> None:
    g = hand_graph()
    ui, iu = interaction_csr(g, (0,))
    assert ui.neighbours(0).tolist() == [0, 1, 2] and ui.neighbours(1).tolist() == [0, 1, 5]
    assert iu.neighbours(2).tolist() == [0, 2, 3]
    ui01, _ = interaction_csr(g, (0, 1))
    assert ui01.neighbours(1).tolist() == [0, 1, 2, 5]


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
