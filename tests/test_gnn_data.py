"""Graph file format: build, validate, save / load, fingerprint, synthetic generator."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gnn_fixtures import hand_graph  # noqa: E402

from gnnrec.errors import GnnrecError  # noqa: E402
from gnnrec.gnn.data import (  # noqa: E402
    FORMAT,
    IT,
    IU,
    TI,
    UI,
    UU,
    GraphFormatError,
    build_graph,
    fingerprint,
    graph_from_frames,
    id_map,
)
from gnnrec.gnn.generators import synthetic_graph  # noqa: E402
from gnnrec.gnn.graph_file import load_graph, save_graph  # noqa: E402
from gnnrec.gnn.views import TrainView  # noqa: E402


def test_round_trip_keeps_everything(tmp_path: Path) -> None:
    g = synthetic_graph(50, 30, num_tags=5, seed=3)
    g.split_info = {"kind": "random", "seed": 0, "fractions": [0.8, 0.1, 0.1],
                    "counts": {"train": 1}}
    path = save_graph(g, tmp_path / "sub" / "g.pt")
    raw = torch.load(path, weights_only=True)  # plain containers only
    assert raw["format"] == FORMAT and raw["fingerprint"] == fingerprint(g)
    h = load_graph(path)
    assert h["user"].ext_id == g["user"].ext_id and h["item"].ext_id == g["item"].ext_id
    assert h["tag"].ext_id == g["tag"].ext_id
    assert h.split_info == g.split_info
    assert h["item"].feature_names == ["genre_signal", "length"]
    assert torch.equal(h["item"].x, g["item"].x)
    for et in (UI, IU, UU, IT, TI):
        for key, value in g[et].items():
            assert torch.equal(h[et][key], value), (et, key)
    assert fingerprint(h) == fingerprint(g)
    assert id_map(h, "user").index("u7") == 7
    assert not list(tmp_path.glob("sub/.*tmp*"))


def test_graph_from_frames_maps_ids_and_features() -> None:
    inter = pd.DataFrame({"user": ["a", "b", "a", "c"], "item": ["x", "y", "y", "x"],
                          "weight": [1, 2, 3, 4], "time": [10, 20, 30, 40]})
    friends = pd.DataFrame({"user": ["a", "b", "d"], "friend": ["b", "a", "c"]})
    tags = pd.DataFrame({"item": ["x", "z"], "tag": ["rock", "jazz"]})
    feats = pd.DataFrame({"year": [1990.0, 2000.0, 2010.0]}, index=["x", "y", "z"])
    g = graph_from_frames(inter, friends=friends, item_tags=tags, item_features=feats)
    assert g["user"].ext_id == ["a", "b", "c", "d"]
    assert g["item"].ext_id == ["x", "y", "z"]
    assert g[UI].edge_index.tolist() == [[0, 1, 0, 2], [0, 1, 1, 0]]
    assert g[UI].weight.tolist() == [1, 2, 3, 4] and g[UI].time.tolist() == [10, 20, 30, 40]
    # (a,b) and (b,a) are one friendship, stored in both directions
    assert g[UU].edge_index.tolist() == [[0, 2, 1, 3], [1, 3, 0, 2]]
    assert g[IT].edge_index.tolist() == [[0, 2], [0, 1]]
    assert g["item"].x[:, 0].tolist() == [1990.0, 2000.0, 2010.0]
    assert torch.equal(g[IU].edge_index, g[UI].edge_index.flip(0))


def test_duplicates_are_loud_or_merged_on_request() -> None:
    inter = pd.DataFrame({"user": ["a", "a", "b"], "item": ["x", "x", "x"],
                          "weight": [1.0, 2.0, 1.0], "time": [5, 9, 1]})
    with pytest.raises(GraphFormatError, match="appear 2 times"):
        graph_from_frames(inter)
    g = graph_from_frames(inter, duplicates="sum")
    assert g[UI].weight.tolist() == [3.0, 1.0] and g[UI].time.tolist() == [9, 1]
    g = graph_from_frames(inter, duplicates="last")
    assert sorted(g[UI].weight.tolist()) == [1.0, 2.0]


def test_bad_rows_are_named() -> None:
    with pytest.raises(GraphFormatError, match="row 1: missing"):
        graph_from_frames(pd.DataFrame({"user": ["a", None], "item": ["x", "y"]}))
    with pytest.raises(GraphFormatError, match="row 0: weight"):
        graph_from_frames(pd.DataFrame({"user": ["a"], "item": ["x"], "weight": ["lots"]}))
    with pytest.raises(GraphFormatError, match="itself"):
        build_graph(["a", "b"], ["x"], [[0], [0]], friend_edge_index=[[1], [1]])
    with pytest.raises(GraphFormatError, match="outside"):
        build_graph(["a"], ["x"], [[0], [3]])
    with pytest.raises(GraphFormatError, match="more than once"):
        build_graph(["a"], ["x"], [[0, 0], [0, 0]])


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(GraphFormatError, match="does not exist"):
        load_graph(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(GraphFormatError, match="not a readable torch file"):
        load_graph(tmp_path / "junk.pt")
    torch.save({"format": "other/9"}, tmp_path / "other.pt")
    with pytest.raises(GraphFormatError, match="expected format"):
        load_graph(tmp_path / "other.pt")
    g = hand_graph()
    payload = {"format": FORMAT, "data": g.to_dict()}
    payload["data"][IU]["edge_index"] = payload["data"][IU]["edge_index"].flip(1)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(GraphFormatError, match=r"bad\.pt.*flipped"):
        load_graph(tmp_path / "bad.pt")
    assert issubclass(GraphFormatError, GnnrecError)


def test_save_fills_implied_parts(tmp_path: Path) -> None:
    from torch_geometric.data import HeteroData

    g = HeteroData()
    g["user"].num_nodes, g["user"].ext_id = 2, ["a", "b"]
    g["item"].num_nodes, g["item"].ext_id = 1, ["x"]
    g[UI].edge_index = torch.tensor([[0, 1], [0, 0]])
    h = load_graph(save_graph(g, tmp_path / "g.pt"))
    assert h["tag"].num_nodes == 0 and h[UU].edge_index.shape == (2, 0)
    assert h[UI].weight.tolist() == [1.0, 1.0] and h[UI].time.tolist() == [0, 0]
    assert torch.equal(h[IU].edge_index, h[UI].edge_index.flip(0))
    assert "tag" not in g.node_types  # input untouched


def test_fingerprint_tracks_edges_and_split() -> None:
    g = hand_graph()
    h = hand_graph()
    assert fingerprint(g) == fingerprint(h)
    h[UI].split = torch.zeros_like(h[UI].split)
    assert fingerprint(g) != fingerprint(h)


def test_train_view_keeps_only_train_edges() -> None:
    g = hand_graph()
    t = TrainView.from_graph(g)
    kept = torch.from_numpy(t.edges(UI)[2])
    assert t.edge_index(UI).size(1) == 9 and int(g[UI].split[kept].max()) == 0
    assert torch.equal(t.edge_index(IU), t.edge_index(UI).flip(0))
    assert g[UI].edge_index.size(1) == 13  # original untouched
    assert torch.equal(t.edge_index(UU), g[UU].edge_index)


def _tagged_graph() -> object:
    """2 users, 3 items, tags a/b/c; u0 holds i0 in train and i1 in test, u1 i1 and i2 in
    train. Tagging: u0 tagged i0 'a' and i1 'a' and 'b' (its own tag), u1 tagged i1 'a'.
    (i2, c) is a catalogue tag with no recorded event; (i1, a) has 1 catalogue weight more."""
    inter = pd.DataFrame({"user": ["u0", "u0", "u1", "u1"], "item": ["i0", "i1", "i1", "i2"]})
    tags = pd.DataFrame({"item": ["i0", "i1", "i1", "i2"], "tag": ["a", "a", "b", "c"],
                         "weight": [1.0, 3.0, 1.0, 1.0]})
    events = pd.DataFrame({"user": ["u0", "u0", "u0", "u1"], "item": ["i0", "i1", "i1", "i1"],
                           "tag": ["a", "a", "b", "a"]})
    g = graph_from_frames(inter, item_tags=tags, tag_events=events)
    g[UI].split = torch.tensor([0, 2, 0, 0])
    return g


def _weights(g: object, ei: torch.Tensor, w: torch.Tensor) -> dict[tuple[str, str], float]:
    return {(g["item"].ext_id[i], g["tag"].ext_id[k]): x for (i, k), x in
            zip(ei.t().tolist(), w.tolist(), strict=True)}


def test_train_view_drops_the_tagging_of_heldout_pairs(tmp_path: Path) -> None:
    g = load_graph(save_graph(_tagged_graph(), tmp_path / "g.pt"))  # tag_events survive a file
    assert g.tag_events.tolist() == [[0, 0, 0, 1], [0, 1, 1, 1], [0, 0, 1, 0]]
    t = TrainView.from_graph(g)

    def weights(view: TrainView) -> dict[tuple[str, str], float]:
        return _weights(g, view.edge_index(IT), view.edge_weight(IT))

    # u0's test pair (u0, i1) loses its two events: (i1, b) goes, (i1, a) keeps 3 - 1.
    assert weights(t) == {("i0", "a"): 1.0, ("i1", "a"): 2.0, ("i2", "c"): 1.0}
    assert torch.equal(t.edge_index(TI), t.edge_index(IT).flip(0))
    assert torch.equal(t.edge_weight(TI), t.edge_weight(IT))
    assert _weights(g, g[IT].edge_index, g[IT].weight) == {
        ("i0", "a"): 1.0, ("i1", "a"): 3.0, ("i1", "b"): 1.0,
        ("i2", "c"): 1.0}  # the full graph is untouched
    g[UI].split = torch.zeros(4, dtype=torch.long)  # nothing held out: nothing dropped
    assert weights(TrainView.from_graph(g)) == _weights(g, g[IT].edge_index, g[IT].weight)


def test_the_sampler_sees_the_train_views_tag_edges() -> None:
    from gnnrec.gnn.sampler import NeighborSampler

    g = _tagged_graph()
    view = NeighborSampler(g, [1]).graph  # mini-batch training samples from this
    for et in (IT, TI):
        src, dst, eid = view.edges(et)
        assert torch.equal(torch.from_numpy(np.stack([src, dst])), g[et].edge_index[:, [0, 1, 3]])
        assert eid.tolist() == [0, 1, 3]  # ids in g: (i1, b) is gone
        c = view.csr[et]
        _, ids, weights = c.take(np.arange(c.nnz))
        assert weights is not None  # u0's test pair took one of (i1, a)'s three events
        assert dict(zip(ids.tolist(), weights.tolist(), strict=True)) == {0: 1.0, 1: 2.0, 3: 1.0}


def test_tag_events_are_checked_and_fingerprinted() -> None:
    g, h = _tagged_graph(), _tagged_graph()
    h.tag_events = h.tag_events[:, :3]
    assert fingerprint(g) != fingerprint(h)
    h.tag_events = torch.tensor([[0], [5], [0]])
    with pytest.raises(GraphFormatError, match="tag_events row 1 has item ids outside"):
        save_graph(h, "/nonexistent/never-written.pt")
    h.tag_events = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(GraphFormatError, match=r"tag_events must be Long\[3, N\]"):
        save_graph(h, "/nonexistent/never-written.pt")
    with pytest.raises(GraphFormatError, match="unknown tag 'zz'"):
        graph_from_frames(pd.DataFrame({"user": ["u0"], "item": ["i0"]}),
                          item_tags=pd.DataFrame({"item": ["i0"], "tag": ["a"]}),
                          tag_events=pd.DataFrame({"user": ["u0"], "item": ["i0"],
                                                   "tag": ["zz"]}))


def test_synthetic_is_seeded_and_structured() -> None:
    a, b, c = synthetic_graph(300, 100, seed=1), synthetic_graph(300, 100, seed=1), \
        synthetic_graph(300, 100, seed=2)
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)
    ei = a[UI].edge_index
    keys = ei[0] * 100 + ei[1]
    assert torch.unique(keys).numel() == keys.numel()
    assert int((a[UI].time > 0).sum()) == ei.size(1)
    assert np.isclose(ei.size(1) / 300, 20, rtol=0.3)
