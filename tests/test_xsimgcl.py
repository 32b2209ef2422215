"""XSimGCL: noisy layers, cross-layer InfoNCE, one forward per batch (no server; seconds)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gnn_fixtures import small_graph  # noqa: E402

from gnnrec.gnn.evaluate import evaluate  # noqa: E402
from gnnrec.gnn.models import MODELS, LightGCN, XSimGCL  # noqa: E402
from gnnrec.gnn.models.xsimgcl import info_nce, perturbed_propagation  # noqa: E402
from gnnrec.gnn.train import TrainConfig, seed_everything, train  # noqa: E402
from gnnrec.gnn.views import TrainView  # noqa: E402


@pytest.fixture(scope="module")
def graph():
    return small_graph(users=150, items=70)


def _twins(graph, **kwargs) -> tuple[XSimGCL, LightGCN, object]:
    """An XSimGCL, the LightGCN with its weights, and their (identical) full-graph inputs."""
    view = TrainView.from_graph(graph)
    x = XSimGCL(view.sizes, embedding_dim=8, num_layers=3, **kwargs)
    lg = LightGCN(view.sizes, embedding_dim=8, num_layers=3,
                  layer_weights=x.config()["layer_weights"],
                  social_weight=x.config()["social_weight"], tag_weight=x.config()["tag_weight"])
    lg.load_state_dict(x.state_dict())
    return x, lg, x.inputs(view)


@pytest.mark.parametrize("extra", [{}, {"social_weight": 0.5, "tag_weight": 0.5}])
def test_eval_mode_is_lightgcn_with_the_same_layer_weights(graph, extra) -> None:
    x, lg, inputs = _twins(graph, **extra)
    assert x.config()["layer_weights"] == [0.0, 1 / 3, 1 / 3, 1 / 3]
    x.eval()
    lg.eval()
    users = torch.arange(20)
    assert torch.allclose(x.score(users, inputs), lg.score(users, inputs), atol=1e-6)
    again = MODELS["xsimgcl"](x.sizes, **x.config())
    again.load_state_dict(x.state_dict())
    again.eval()
    assert torch.equal(again.score(users, inputs), x.score(users, inputs))


def test_noise_has_norm_eps_and_keeps_the_sign(graph) -> None:
    x, _, inputs = _twins(graph, eps=0.3)
    ego = torch.cat([x.user_embedding.weight, x.item_embedding.weight]).detach()
    one = torch.tensor([0.0, 1.0])  # one layer: the output is that layer
    clean, _ = perturbed_propagation(inputs.adj, ego, one, 0.0, 1)
    torch.manual_seed(0)
    noisy, view = perturbed_propagation(inputs.adj, ego, one, 0.3, 1)
    delta = noisy - clean
    rows = clean.abs().min(dim=1).values > 0  # rows with no zero entry
    assert torch.allclose(delta[rows].norm(dim=1), torch.full((int(rows.sum()),), 0.3), atol=1e-5)
    assert torch.all(torch.sign(delta[rows]) == torch.sign(clean[rows]))
    assert torch.equal(view, noisy)


def test_info_nce_is_the_cross_entropy_of_cosine_logits() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    sim = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / 0.2
    expected = -(torch.diag(sim) - torch.logsumexp(sim, dim=1)).mean()
    assert torch.allclose(info_nce(a, b, 0.2), expected)


def test_without_noise_and_contrast_the_loss_is_lightgcns(graph) -> None:
    x, lg, inputs = _twins(graph, eps=0.0, cl_weight=0.0)
    users, pos = torch.arange(10), torch.arange(10) % 7
    neg = torch.randint(0, 70, (10, 4), generator=torch.Generator().manual_seed(1))
    a = x.bpr_loss(inputs, users, pos, neg, "softmax", 0.5)
    b = lg.bpr_loss(inputs, users, pos, neg, "softmax", 0.5)
    assert torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])
    x2, _, _ = _twins(graph, eps=0.0, cl_weight=0.5)
    x2.load_state_dict(x.state_dict())
    assert x2.bpr_loss(inputs, users, pos, neg)[0] > x.bpr_loss(inputs, users, pos, neg)[0]


def test_one_propagation_per_batch(graph, monkeypatch) -> None:
    from gnnrec.gnn.models import xsimgcl

    calls = []
    real = xsimgcl.perturbed_propagation
    monkeypatch.setattr(xsimgcl, "perturbed_propagation",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    x, _, inputs = _twins(graph)
    x.train()
    x.bpr_loss(inputs, torch.arange(8), torch.arange(8), torch.arange(8))[0].backward()
    assert len(calls) == 1


def test_xsimgcl_learns(graph) -> None:
    seed_everything(0)
    view = TrainView.from_graph(graph)
    model = XSimGCL(view.sizes, embedding_dim=16, num_layers=2, eps=0.2, cl_weight=0.05)
    result = train(model, graph, TrainConfig(epochs=15, lr=1e-2, l2=1e-4, eval_every=5,
                                             patience=5), progress=False)
    popularity = MODELS["pop"](view.sizes)
    popularity.solve(view, 1)
    pop = evaluate(lambda users: popularity.score(users, None), graph)["recall@20"]
    assert result.best_valid["recall@20"] > pop


def test_bad_settings_are_refused(graph) -> None:
    with pytest.raises(ValueError, match="cl_layer"):
        XSimGCL(TrainView.from_graph(graph).sizes, num_layers=2, cl_layer=3)
    with pytest.raises(ValueError, match="eps"):
        XSimGCL(TrainView.from_graph(graph).sizes, eps=-1.0)
