"""Unit tests of gnn/models on a small synthetic HeteroData (no server, a few seconds)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch_geometric.data import HeteroData
from torch_geometric.nn import HeteroConv, SAGEConv
from torch_geometric.nn.models import LightGCN as PygLightGCN

from gnnrec.gnn.models import (
    MF,
    MODELS,
    HeteroGraphSAGE,
    LightGCN,
    Popularity,
    Recommender,
    normalized_adjacency,
)
from gnnrec.gnn.models.base import (
    mean_adjacency,
    radix_order,
    ranking_loss,
    rows_csr,
    spmm,
    to_csr,
    transpose_csr,
    unique_edges,
)
from gnnrec.gnn.views import TrainView

NU, NI, NT, GROUPS = 40, 60, 10, 2
UI = ("user", "interacts", "item")
IU = ("item", "rev_interacts", "user")


def make_graph(seed: int = 0, features: bool = True) -> HeteroData:
    """Two communities: users of group g mostly interact with items of group g,
    items of group g carry tags of group g, friendships stay inside a group.
    About 20% of the interactions are valid (split 1) or test (split 2)."""
    g = torch.Generator().manual_seed(seed)
    user_group = torch.arange(NU) % GROUPS
    item_group = torch.arange(NI) % GROUPS
    users, items = [], []
    for u in range(NU):
        same = (item_group == user_group[u]).nonzero().view(-1)
        other = (item_group != user_group[u]).nonzero().view(-1)
        picks = torch.cat(
            [
                same[torch.randperm(len(same), generator=g)[:10]],
                other[torch.randperm(len(other), generator=g)[:1]],
            ]
        )
        users += [u] * len(picks)
        items += picks.tolist()
    ei = torch.tensor([users, items])
    r = torch.rand(ei.size(1), generator=g)
    split = (r > 0.8).long() + (r > 0.9).long()
    data = HeteroData()
    for node_type, n in (("user", NU), ("item", NI), ("tag", NT)):
        data[node_type].num_nodes = n
        data[node_type].ext_id = [f"{node_type}{k}" for k in range(n)]
    data[UI].edge_index = ei
    data[UI].weight = torch.rand(ei.size(1), generator=g) + 0.5
    data[UI].time = torch.arange(ei.size(1))
    data[UI].split = split
    data["item", "rev_interacts", "user"].edge_index = ei.flip(0)
    a = torch.arange(0, NU - 2)
    friends = torch.stack([a, a + 2])  # same parity = same group
    data["user", "friend", "user"].edge_index = torch.cat([friends, friends.flip(0)], 1)
    tag_item = torch.arange(NI).repeat_interleave(2)
    tag = item_group.repeat_interleave(2) + GROUPS * torch.randint(
        0, NT // GROUPS, (2 * NI,), generator=g
    )
    it = torch.stack([tag_item, tag])
    data["item", "has_tag", "tag"].edge_index = it
    data["item", "has_tag", "tag"].weight = torch.ones(it.size(1))
    data["tag", "rev_has_tag", "item"].edge_index = it.flip(0)
    if features:
        data["item"].x = torch.randn(NI, 5, generator=g)
    return data


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids OpenMP spin-waits when the 2-core
    machine is busy with other work (which made these tests 30x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def graph() -> HeteroData:
    return make_graph()


def build(cls: type[Recommender], graph: HeteroData, **kw: object) -> tuple[Recommender, object]:
    """The model for ``graph``'s train view and its full-graph inputs (a model trained
    without gradients is solved)."""
    view = TrainView.from_graph(graph)
    model = cls(view.sizes, **kw)
    if not model.trainable:
        model.solve(view, 1)
    return model, model.inputs(view)


def train_pairs(graph: HeteroData) -> set[tuple[int, int]]:
    ei = graph[UI].edge_index[:, graph[UI].split == 0]
    return set(map(tuple, ei.t().tolist()))


def heldout_only_pairs(graph: HeteroData) -> set[tuple[int, int]]:
    ei = graph[UI].edge_index[:, graph[UI].split > 0]
    return set(map(tuple, ei.t().tolist())) - train_pairs(graph)


TRAINABLE = [LightGCN, HeteroGraphSAGE, MF]


def test_registry() -> None:
    assert set(MODELS) == {"lightgcn", "xsimgcl", "graphsage", "mf", "pop", "ials", "ease"}
    for name, cls in MODELS.items():
        assert issubclass(cls, Recommender) and cls.name == name


@pytest.mark.parametrize("cls", list(MODELS.values()))
def test_shapes(cls: type[Recommender], graph: HeteroData) -> None:
    torch.manual_seed(0)
    model, inputs = build(cls, graph)
    model.eval()
    user, item = model.embeddings(inputs)
    assert user.shape[0] == NU and item.shape[0] == NI and user.shape[1] == item.shape[1]
    scores = model.score(torch.tensor([0, 3, 5]), inputs)
    assert scores.shape == (3, NI) and torch.isfinite(scores).all()
    json.dumps(model.config())


def test_lightgcn_adjacency_is_normalised_and_train_only(graph: HeteroData) -> None:
    model, inputs = build(LightGCN, graph, embedding_dim=8, num_layers=2)
    a = inputs.adj.to_dense()
    assert torch.allclose(a, a.t())
    binary = (a != 0).float()
    deg = binary.sum(1)
    dinv = torch.where(deg > 0, deg.pow(-0.5), torch.zeros_like(deg))
    assert torch.allclose(a, dinv[:, None] * binary * dinv[None, :], atol=1e-6)
    present = {(r, c) for r, c in binary[:NU, NU:].nonzero().tolist()}
    assert present == train_pairs(graph)
    assert not present & heldout_only_pairs(graph)
    assert binary[:NU, :NU].sum() == 0 and binary[NU:, NU:].sum() == 0  # no social edges
    assert model.state_dict().keys() == {"user_embedding.weight", "item_embedding.weight"}


def test_social_edges_change_adjacency(graph: HeteroData) -> None:
    plain = build(LightGCN, graph, social_weight=0.0)[1].adj.to_dense()
    social = build(LightGCN, graph, social_weight=0.5)[1].adj.to_dense()
    assert not torch.allclose(plain, social)
    assert torch.allclose(social, social.t())
    uu = social[:NU, :NU]
    assert (uu != 0).sum() == 2 * (NU - 2)  # each friendship, both directions
    ones = normalized_adjacency(NU, NI, torch.tensor([[0], [0]]), torch.tensor([[0, 1], [1, 0]]))
    expected = 1.0 / (2.0**0.5)  # user 0 has degree 2 (item 0 + user 1)
    assert ones.to_dense()[0, 1].item() == pytest.approx(expected)


def test_tag_nodes_join_items_to_their_tags(graph: HeteroData) -> None:
    w = 0.5
    model, inputs = build(LightGCN, graph, embedding_dim=8, num_layers=2, tag_weight=w)
    a = inputs.adj.to_dense()
    n = NU + NI + NT
    assert a.shape == (n, n) and torch.allclose(a, a.t())
    # the dense reference: interactions 1, item-tag pairs w (each pair once), D^-1/2 A D^-1/2
    ref = torch.zeros(n, n)
    ui = unique_edges(graph[UI].edge_index[:, graph[UI].split == 0], NI)
    ref[ui[0], ui[1] + NU] = ref[ui[1] + NU, ui[0]] = 1.0
    it = graph["item", "has_tag", "tag"].edge_index
    ref[it[0] + NU, it[1] + NU + NI] = ref[it[1] + NU + NI, it[0] + NU] = w
    d = ref.sum(1)
    dinv = torch.where(d > 0, d.pow(-0.5), torch.zeros_like(d))
    assert torch.allclose(a, dinv[:, None] * ref * dinv[None, :], atol=1e-6)
    assert model.tag_embedding is not None and model.tag_embedding.weight.shape == (NT, 8)
    user, item = model.embeddings(inputs)
    assert user.shape == (NU, 8) and item.shape == (NI, 8)
    # an item with no train interaction still gets its tags' embeddings through propagation
    graph2 = graph.clone()
    keep = graph2[UI].edge_index[1] != 0
    graph2[UI].split = torch.where(keep, graph2[UI].split, torch.ones_like(graph2[UI].split))
    tagged, tagged_in = build(LightGCN, graph2, embedding_dim=8, num_layers=2, tag_weight=w)
    plain, plain_in = build(LightGCN, graph2, embedding_dim=8, num_layers=2)
    for m in (tagged, plain):
        m.item_embedding.weight.data[0] = 0.0  # no ego signal for item 0
    assert tagged.embeddings(tagged_in)[1][0].abs().sum() > 0
    assert plain.embeddings(plain_in)[1][0].abs().sum() == 0
    # the config rebuilds the same structure; tag_weight 0 is plain LightGCN
    again = LightGCN(model.sizes, **model.config())
    again.load_state_dict(model.state_dict())
    assert torch.allclose(again.embeddings(again.inputs(TrainView.from_graph(graph)))[1], item)
    assert "tag_embedding.weight" in model.state_dict()
    assert build(LightGCN, graph, tag_weight=0.0)[1].adj.shape == (NU + NI, NU + NI)
    with pytest.raises(ValueError, match="tag_weight must be >= 0"):
        LightGCN(model.sizes, tag_weight=-1.0)


def test_lightgcn_matches_pyg(graph: HeteroData) -> None:
    torch.manual_seed(0)
    layers = 3
    model, inputs = build(LightGCN, graph, embedding_dim=16, num_layers=layers)
    model.eval()
    ui = unique_edges(graph[UI].edge_index[:, graph[UI].split == 0], NI)
    edge_index = torch.cat([torch.stack([ui[0], ui[1] + NU]), torch.stack([ui[1] + NU, ui[0]])], 1)
    ref = PygLightGCN(NU + NI, 16, layers)
    with torch.no_grad():
        ref.embedding.weight.copy_(
            torch.cat([model.user_embedding.weight, model.item_embedding.weight])
        )
    expected = ref.get_embedding(edge_index)
    user, item = model.embeddings(inputs)
    assert torch.allclose(torch.cat([user, item]), expected, atol=1e-6)


@pytest.mark.filterwarnings("ignore:There exist node types")
def test_sage_matches_edge_index_heteroconv(graph: HeteroData) -> None:
    """The CSR mean aggregation equals PyG's SAGEConv(aggr='mean') on edge_index."""
    torch.manual_seed(0)
    model, inputs = build(HeteroGraphSAGE, graph, embedding_dim=8, num_layers=2)
    model.eval()
    ui = unique_edges(graph[UI].edge_index[:, graph[UI].split == 0], NI)
    ff = unique_edges(graph["user", "friend", "user"].edge_index, NU)
    it = unique_edges(graph["item", "has_tag", "tag"].edge_index, NT)
    edges = {
        ("user", "interacts", "item"): ui,
        ("item", "rev_interacts", "user"): ui.flip(0),
        ("user", "friend", "user"): ff,
        ("item", "has_tag", "tag"): it,
        ("tag", "rev_has_tag", "item"): it.flip(0),
    }
    with torch.no_grad():
        x = model._layer0(inputs)
        for layer, conv in enumerate(model.convs):
            last = layer == len(model.convs) - 1
            types = model._edge_types(last=last)
            ref = HeteroConv({et: SAGEConv((8, 8), 8, aggr="mean") for et in types}, aggr="sum")
            ref.load_state_dict(conv.state_dict())
            out = ref(x, {et: edges[et] for et in types})
            x = out if last else {k: v.relu() for k, v in out.items()}
        user, item = model.embeddings(inputs)
    assert torch.allclose(user, x["user"], atol=1e-5)
    assert torch.allclose(item, x["item"], atol=1e-5)


def test_spmm_gradient_matches_torch() -> None:
    dense = torch.rand(6, 4) * (torch.rand(6, 4) > 0.5)
    adj = dense.to_sparse_csr()
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(6, 3)
    (spmm(adj, x) * w).sum().backward()
    assert torch.allclose(x.grad, dense.t() @ w, atol=1e-6)


def test_rows_csr_counts_sorted_rows_and_sorts_others() -> None:
    g = torch.Generator().manual_seed(3)
    parts = []
    for m in (40, 25, 0, 10):  # rows sorted per part; repeated (row, col) pairs included
        row = torch.randint(0, 9, (m,), generator=g).sort().values
        parts.append((row, torch.randint(0, 5, (m,), generator=g), torch.rand(m, generator=g)))
    dense = torch.zeros(9, 5)
    for r, c, v in parts:
        dense.index_put_((r, c), v, accumulate=True)
    got = rows_csr(parts, 9, 5)
    torch.testing.assert_close(got.to_dense(), dense)
    # a row's entries: the first part's, then the next part's, each in its own order
    crow, col = got.crow_indices(), got.col_indices()
    want = [c for row in range(9) for r, cs, _ in parts for c in cs[r == row].tolist()]
    assert col.tolist() == want and crow[-1] == 75
    shuffled = [(r.flip(0), c.flip(0), v.flip(0)) for r, c, v in parts]  # not sorted: coalesce
    torch.testing.assert_close(rows_csr(shuffled, 9, 5).to_dense(), dense)
    mean = mean_adjacency(parts[0][0], parts[0][1], 9, 5).to_dense()
    unique = torch.unique(parts[0][0] * 5 + parts[0][1])
    distinct = (unique // 5, unique % 5)
    torch.testing.assert_close(mean_adjacency(*distinct, 9, 5, distinct=True).to_dense(), mean)


@pytest.mark.parametrize("num_cols", [7, 70_000, 2**33])
def test_transpose_csr_is_torch_transpose(num_cols: int) -> None:
    g = torch.Generator().manual_seed(num_cols % 1000)
    row = torch.randint(0, 50, (400,), generator=g).sort().values
    col = torch.randint(0, num_cols, (400,), generator=g)
    keys = col.numpy()
    assert (radix_order(keys) == np.argsort(keys, kind="stable")).all()
    if num_cols > 2**20:
        return  # a dense check of 2**33 columns would not fit
    adj = rows_csr([(row, col, torch.rand(400, generator=g))], 50, num_cols)
    got, want = transpose_csr(adj), to_csr(adj.t())
    assert torch.equal(got.crow_indices(), want.crow_indices())
    assert torch.equal(got.col_indices(), want.col_indices())  # a row's entries in order
    assert got.shape == (num_cols, 50)
    assert torch.equal(got.to_dense(), adj.to_dense().t())


def fixed_batch(graph: HeteroData, size: int = 64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    ei = graph[UI].edge_index[:, graph[UI].split == 0]
    idx = torch.randint(0, ei.size(1), (size,), generator=g)
    return ei[0, idx], ei[1, idx], torch.randint(0, NI, (size, 3), generator=g)


@pytest.mark.parametrize("cls", TRAINABLE)
def test_bpr_steps_reduce_loss(cls: type[Recommender], graph: HeteroData) -> None:
    torch.manual_seed(0)
    model, inputs = build(cls, graph, embedding_dim=16)
    users, pos, neg = fixed_batch(graph)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            bpr, l2 = model.bpr_loss(inputs, users, pos, neg)
        return float(bpr + 1e-4 * l2)

    before = loss()
    model.train()
    for _ in range(20):
        bpr, l2 = model.bpr_loss(inputs, users, pos, neg)
        opt.zero_grad()
        (bpr + 1e-4 * l2).backward()
        opt.step()
    assert loss() < before - 0.05


def test_bpr_loss_one_negative_equals_column(graph: HeteroData) -> None:
    model, inputs = build(MF, graph, embedding_dim=8)
    users, pos, neg = fixed_batch(graph)
    bpr_1d, l2_1d = model.bpr_loss(inputs, users, pos, neg[:, 0])
    bpr_2d, l2_2d = model.bpr_loss(inputs, users, pos, neg[:, :1])
    assert torch.allclose(bpr_1d, bpr_2d) and torch.allclose(l2_1d, l2_2d)
    ego = model.user_embedding.weight
    items = model.item_embedding.weight
    expected = (
        0.5
        * (ego[users].pow(2).sum() + items[pos].pow(2).sum() + items[neg[:, 0]].pow(2).sum())
        / len(users)
    )
    assert torch.allclose(l2_1d, expected)
    with pytest.raises(ValueError):
        model.bpr_loss(inputs, users, pos[:3], neg)


def test_sampled_softmax_loss_by_hand() -> None:
    user = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    item = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, -1.0]])
    users, pos, neg = torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([[1, 2], [1, 2]])
    value, _ = ranking_loss(user, item, user, item, users, pos, neg, "softmax", temperature=0.5)
    # user 0 scores (1, 2, 0), user 1 scores (2, 0, -2); positive first; divided by 0.5
    expected = [math.log(sum(math.exp(s / 0.5) for s in row)) - row[0] / 0.5
                for row in ((1.0, 2.0, 0.0), (2.0, 0.0, -2.0))]
    assert value.item() == pytest.approx(sum(expected) / 2, rel=1e-6)
    bpr, _ = ranking_loss(user, item, user, item, users, pos, neg, "bpr")
    pairs = [1.0, -1.0, -2.0, -4.0]  # s_neg - s_pos
    assert bpr.item() == pytest.approx(sum(math.log1p(math.exp(d)) for d in pairs) / 4)
    with pytest.raises(ValueError, match="unknown loss"):
        ranking_loss(user, item, user, item, users, pos, neg, "hinge")


def test_full_softmax_loss_by_hand() -> None:
    """Each positive against EVERY item (not only its negatives), once per distinct user."""
    user = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    item = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, -1.0], [3.0, 1.0]])
    users, pos = torch.tensor([0, 1, 0]), torch.tensor([0, 0, 2])
    neg = torch.tensor([[1], [1], [1]])  # enters only the l2 term
    value, l2 = ranking_loss(user, item, user, item, users, pos, neg, "full", temperature=0.5)
    scores = {0: (1.0, 2.0, 0.0, 3.0), 1: (2.0, 0.0, -2.0, 2.0)}  # user u's score per item
    expected = [math.log(sum(math.exp(s / 0.5) for s in scores[u])) - scores[u][i] / 0.5
                for u, i in ((0, 0), (1, 0), (0, 2))]
    assert value.item() == pytest.approx(sum(expected) / 3, rel=1e-6)
    other = torch.tensor([[2], [3], [0]])
    again, l2_other = ranking_loss(user, item, user, item, users, pos, other, "full", 0.5)
    assert again.item() == value.item() and l2_other.item() != l2.item()
    sampled, _ = ranking_loss(user, item, user, item, users, pos, neg, "softmax", 0.5)
    assert sampled.item() < value.item()  # fewer items in the denominator


@pytest.mark.parametrize("cls", list(MODELS.values()))
def test_state_dict_round_trip(cls: type[Recommender], graph: HeteroData) -> None:
    torch.manual_seed(0)
    kwargs = {"pop": {"weighted": True}, "ials": {"factors": 8},
              "ease": {"regularization": 10.0}}.get(cls.name, {"embedding_dim": 8})
    model, inputs = build(cls, graph, **kwargs)
    model.eval()
    config = json.loads(json.dumps(model.config()))
    torch.manual_seed(123)
    again = cls(model.sizes, **config).eval()  # from the sizes and config alone
    again.load_state_dict(model.state_dict())
    users = torch.arange(NU)
    assert torch.allclose(model.score(users, inputs), again.score(users, inputs))
    for key in model.state_dict():
        assert "adj" not in key and "edge_index" not in key


def test_scores_follow_an_optimiser_step(graph: HeteroData) -> None:
    """Scores are computed from the current weights (no stale cached embeddings), also
    for a step taken in eval mode."""
    torch.manual_seed(0)
    model, inputs = build(LightGCN, graph, embedding_dim=8)
    model.eval()
    users = torch.arange(5)
    first = model.score(users, inputs)
    assert torch.equal(first, model.score(users, inputs))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model.train()
    bpr, _ = model.bpr_loss(inputs, *fixed_batch(graph))
    bpr.backward()
    model.eval()
    first = model.score(users, inputs)
    opt.step()  # in eval mode
    assert not torch.allclose(first, model.score(users, inputs))


def test_lightgcn_options(graph: HeteroData) -> None:
    model, inputs = build(LightGCN, graph, embedding_dim=8, num_layers=2,
                          layer_weights=[1.0, 0.0, 0.0])
    user, item = model.eval().embeddings(inputs)
    assert torch.allclose(user, model.user_embedding.weight)  # only layer 0
    drop, inputs = build(LightGCN, graph, embedding_dim=8, dropout=0.5, init_std=None)
    drop.train()
    assert not torch.allclose(drop.embeddings(inputs)[0], drop.embeddings(inputs)[0])
    drop.eval()
    assert torch.allclose(drop.embeddings(inputs)[0], drop.embeddings(inputs)[0])
    with pytest.raises(ValueError):
        LightGCN(model.sizes, num_layers=2, layer_weights=[0.5, 0.5])


def test_sage_inductive_user_is_near_its_community() -> None:
    graph = make_graph(seed=3)
    torch.manual_seed(0)
    model, inputs = build(HeteroGraphSAGE, graph, embedding_dim=16, id_dropout=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    ei = graph[UI].edge_index[:, graph[UI].split == 0]
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randint(0, ei.size(1), (128,), generator=g)
        bpr, l2 = model.bpr_loss(inputs, ei[0, idx], ei[1, idx],
                                 torch.randint(0, NI, (128,), generator=g))
        opt.zero_grad()
        (bpr + 1e-4 * l2).backward()
        opt.step()
    model.eval()
    group0_items = torch.arange(0, NI, GROUPS)[:8]
    with torch.no_grad():
        new = model.embed_new_user(inputs, group0_items, friend_idx=torch.tensor([0, 2]))
        again = model.embed_new_user(inputs, group0_items, friend_idx=torch.tensor([0, 2]))
        user, item = model.embeddings(inputs)
    assert new.shape == (16,) and torch.isfinite(new).all() and torch.equal(new, again)
    cos = torch.nn.functional.cosine_similarity(user, new.unsqueeze(0))
    same, other = cos[0::GROUPS].mean(), cos[1::GROUPS].mean()
    assert same > other
    # and it prefers its community's items
    scores = item @ new
    assert scores[0::GROUPS].mean() > scores[1::GROUPS].mean()
    with torch.no_grad():
        new_item = model.embed_new_item(inputs, torch.tensor([0, 2]), torch.randn(5),
                                        torch.tensor([0, 2]))
        bare = model.embed_new_item(inputs, torch.tensor([], dtype=torch.long))
    assert new_item.shape == (16,) and torch.isfinite(new_item).all()
    assert torch.isfinite(bare).all()
    with pytest.raises(ValueError):
        model.embed_new_user(inputs, torch.tensor([NI]))


def test_sage_without_tags_friends_or_features() -> None:
    graph = make_graph(features=False)
    del graph["item", "has_tag", "tag"], graph["tag", "rev_has_tag", "item"]
    graph["user", "friend", "user"].edge_index = torch.empty(2, 0, dtype=torch.long)
    model, inputs = build(HeteroGraphSAGE, graph, embedding_dim=8)
    assert model.config()["use_tags"] is False and model.config()["use_friends"] is False
    assert model.score(torch.arange(3), inputs).shape == (3, NI)
    assert torch.isfinite(model.embed_new_user(inputs, torch.tensor([1, 2]))).all()


def test_sage_structure_uses_train_edges_only(graph: HeteroData) -> None:
    model, inputs = build(HeteroGraphSAGE, graph, embedding_dim=8)
    pairs = set(map(tuple, inputs.edges[UI].t().tolist()))
    assert pairs == train_pairs(graph)
    assert inputs.adj[UI]._nnz() == len(pairs) == inputs.adj[IU]._nnz()


def test_popularity_ranks_by_train_counts(graph: HeteroData) -> None:
    model, inputs = build(Popularity, graph)
    model.eval()
    assert list(model.parameters()) == [] and model.trainable is False
    train_items = graph[UI].edge_index[1, graph[UI].split == 0]
    counts = torch.bincount(train_items, minlength=NI).float()
    scores = model.score(torch.tensor([0, 1]), inputs)
    assert torch.equal(scores[0], counts) and torch.equal(scores[1], counts)
    assert torch.equal(
        scores[0].argsort(descending=True, stable=True),
        counts.argsort(descending=True, stable=True),
    )
    weighted, _ = build(Popularity, graph, weighted=True)
    mask = graph[UI].split == 0
    w = torch.zeros(NI).index_add_(0, train_items, graph[UI].weight[mask])
    assert torch.allclose(weighted.item_counts, w)
    assert set(model.state_dict()) == {"item_counts"}
    with pytest.raises(TypeError):
        model.bpr_loss(inputs, torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))


def test_bad_graph_fails_loudly(graph: HeteroData) -> None:
    bad = make_graph()
    bad[UI].split = bad[UI].split[:-1]
    with pytest.raises(ValueError, match="split"):
        build(LightGCN, bad)
    bad = make_graph()
    bad[UI].edge_index = bad[UI].edge_index.clone()
    bad[UI].edge_index[1, 0] = NI
    with pytest.raises(ValueError, match="outside"):
        build(LightGCN, bad)


@pytest.mark.parametrize("cls", list(MODELS.values()))
def test_deepcopy_and_dtype_move(cls: type[Recommender], graph: HeteroData) -> None:
    """Sparse CSR buffers survive copy.deepcopy (torch cannot deepcopy them itself)
    and module-wide conversions such as ``.double()`` / ``.to(device)``."""
    import copy

    model, inputs = build(cls, graph)
    model.eval()
    users = torch.arange(4)
    clone = copy.deepcopy(model)
    assert torch.allclose(clone.score(users, inputs), model.score(users, inputs))
    if model.trainable:
        with torch.no_grad():
            next(clone.parameters()).add_(1.0)
        assert not torch.allclose(clone.score(users, inputs), model.score(users, inputs))
    wide = copy.deepcopy(model).double()
    wide_inputs = inputs.to(dtype=torch.float64) if inputs is not None else None
    assert torch.allclose(wide.score(users, wide_inputs), model.score(users, inputs).double(),
                          atol=1e-5)
