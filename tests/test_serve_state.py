"""Unit tests of the serving state and service logic (no Ray, no Neo4j server)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr, ValidationError

from gnnrec.gnn.adjacency import CSR
from gnnrec.serve.errors import (
    AuthError,
    ConflictError,
    InvalidInputError,
    Neo4jUnavailableError,
    NotFoundError,
    WritesDisabledError,
)
from gnnrec.serve.explain import build_explanation
from gnnrec.serve.options import Neo4jOptions, ServeOptions
from gnnrec.serve.schemas import InteractionIn, NewUserIn
from gnnrec.serve.service import RecommenderService, validate_interactions
from gnnrec.serve.state import ServingState, mmr

E1, E2 = np.array([1.0, 0, 0, 0]), np.array([0, 1.0, 0, 0])


def make_state(**kwargs: object) -> ServingState:
    """Two clusters: items a0..a4 along E1, b0..b4 along E2 (a1, b1, b2 tagged rock).

    ``ua`` likes cluster A (has a0), ``ub`` cluster B (has b0, b1), ``uc`` has a0 and b0
    and is ub's friend. Scores fall with the item number inside a cluster.
    """
    rng = np.random.default_rng(0)
    items = [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]
    item_emb = np.stack([E1 * (1 - 0.1 * i) for i in range(5)]
                        + [E2 * (1 - 0.1 * i) for i in range(5)])
    item_emb = item_emb + rng.normal(0, 0.01, item_emb.shape)
    users = ["ua", "ub", "uc"]
    user_emb = np.stack([E1, E2, (E1 + E2) / 2])
    idx = {i: k for k, i in enumerate(items)}
    pairs = [(0, idx["a0"]), (1, idx["b0"]), (1, idx["b1"]), (2, idx["a0"]), (2, idx["b0"])]
    seen = CSR.from_edges([p[0] for p in pairs], [p[1] for p in pairs], 3)
    friends = CSR.from_edges([1], [2], 3)
    tags = CSR.from_edges([idx["a1"], idx["b1"], idx["b2"], idx["a0"]], [0, 0, 0, 1], 10)
    return ServingState(users, items, user_emb, item_emb, seen=seen, friends=friends,
                        item_tags=tags, tag_names=["rock", "pop"], model="test", run="tiny",
                        **kwargs)  # type: ignore[arg-type]


def ids(ranking: object) -> list[str]:
    return [s.id for s in ranking.items]  # type: ignore[attr-defined]


def test_scoring_excludes_seen_items_and_orders_by_score() -> None:
    state = make_state()
    got = ids(state.recommend("ua", 4))
    assert got == ["a1", "a2", "a3", "a4"]
    assert "b0" not in ids(state.recommend("ub", 10)) and "b1" not in ids(state.recommend("ub", 10))
    assert len(ids(state.recommend("ua", 100))) == 9  # everything unseen, no more


def test_tag_filter_and_exclude() -> None:
    state = make_state()
    assert ids(state.recommend("ua", 10, tag="rock")) == ["a1", "b1", "b2"]
    assert ids(state.recommend("ub", 10, tag="rock")) == ["b2", "a1"]  # b1 already seen
    assert "a1" not in ids(state.recommend("ua", 3, exclude=["a1", "unknown-id"]))
    with pytest.raises(NotFoundError, match="tag"):
        state.recommend("ua", 3, tag="jazz")


def test_unknown_user_points_at_post_users() -> None:
    with pytest.raises(NotFoundError, match="POST /users"):
        make_state().recommend("nobody", 3)


def test_mmr_changes_the_list_only_when_diversity_is_positive() -> None:
    state = make_state()
    plain = ids(state.recommend("ua", 4))
    assert ids(state.recommend("ua", 4, diversity=0.0)) == plain
    # near-duplicates of cluster A fill the plain list; MMR lets cluster B in
    assert {i[0] for i in plain} == {"a"}
    diverse = ids(state.recommend("ua", 4, diversity=0.9))
    assert diverse != plain and diverse[0] == plain[0]
    assert {i[0] for i in diverse} == {"a", "b"}
    # the function itself: diversity 0 keeps relevance order
    unit = np.eye(3, dtype=np.float32)
    cand = np.array([2, 0, 1])
    assert mmr(cand, np.array([3.0, 2.0, 1.0]), unit, 3, 0.0).tolist() == [2, 0, 1]


def test_fold_in_moves_recommendations_towards_new_items() -> None:
    state = make_state()
    before = state.user_embedding("ua")
    assert ids(state.recommend("ua", 1)) == ["a1"]
    fold = state.add_interactions([("ua", "b1"), ("ua", "b2"), ("ua", "b3")])
    assert fold.users_updated == ["ua"] and not fold.users_created
    after = state.user_embedding("ua")
    assert after is not None and before is not None
    assert after @ E2 > before @ E2 + 0.1
    top = ids(state.recommend("ua", 3))
    assert "b0" in top or "b4" in top  # cluster B now ranks among the best
    assert not {"b1", "b2", "b3"} & set(top)  # and the new items count as seen
    # repeating the same interactions changes nothing
    assert state.add_interactions([("ua", "b1")]).users_updated == []
    assert np.allclose(state.user_embedding("ua"), after)


def test_new_items_and_users_from_interactions() -> None:
    state = make_state()
    fold = state.add_interactions([("ub", "n1"), ("ub", "n2"), ("newbie", "n3")])
    assert fold.items_created == ["n1", "n2", "n3"]
    assert fold.users_created == ["newbie"]
    assert fold.items_without_embedding == ["n3"]  # its only user has nothing to go on
    assert state.similar("n1", 1)[0].id.startswith("b") or state.similar("n1", 1)[0].id == "n2"
    assert "n1" in ids(state.recommend("uc", 10))  # recommendable at once
    assert "n3" not in ids(state.recommend("uc", 10))
    assert state.recommend("newbie", 3).cold_start == "popularity"


def test_cold_start_from_items_friends_or_nothing() -> None:
    state = make_state()
    assert state.add_user("fa", items=["a0", "a1"]) == "items"
    emb = state.user_embedding("fa")
    assert emb is not None and emb @ E1 > abs(emb @ E2)
    assert ids(state.recommend("fa", 1)) == ["a2"]
    assert state.add_user("ff", friends=["ub"]) == "friends"
    emb = state.user_embedding("ff")
    assert emb is not None and emb @ E2 > abs(emb @ E1)
    assert state.add_user("fb", items=["b0"], friends=["ua"]) == "items+friends"
    assert state.add_user("nothing") == "popularity"
    ranking = state.recommend("nothing", 2)
    assert ranking.cold_start == "popularity"
    assert ids(ranking)[0] in {"a0", "b0"}  # most popular
    with pytest.raises(ConflictError):
        state.add_user("ua")
    with pytest.raises(InvalidInputError, match="unknown items"):
        state.add_user("x", items=["zz"])


def test_forget_user_removes_it_everywhere() -> None:
    state = make_state()
    assert [c[0] for c in state.explain_counts("ub", "a0").co_users] == ["uc"]
    assert state.forget_user("uc") is True
    with pytest.raises(NotFoundError):
        state.recommend("uc", 3)
    assert state.explain_counts("ub", "a0").co_users == []
    assert state.explain_counts("ub", "b0").friends == []
    assert state.forget_user("uc") is False
    assert state.num_users == 2
    assert state.add_user("uc") == "popularity"  # the id can come back, fresh


def test_explain_counts_and_scores() -> None:
    state = make_state()
    counts = state.explain_counts("ub", "a0")
    assert counts.user_degree == 2
    assert counts.friends == [("uc", 2)]
    assert counts.co_users == [("uc", 1, 2)]  # uc shares b0 with ub
    assert state.explain_counts("uc", "b1").tags == []  # rock is not in uc's history
    ex = build_explanation("ub", "a0", counts, source="memory", score=0.5, limit=10)
    assert ex.friends[0].contribution == pytest.approx(1 / np.sqrt(2))
    assert ex.co_users[0].contribution == pytest.approx(1 / 2)
    assert state.explain_counts("ub", "b2").tags == [("rock", 1)]


def test_validation_follows_the_ingest_rules() -> None:
    rows = [InteractionIn(user="u", item="i", weight=2.0, timestamp="2020-01-01T00:00:00Z"),
            InteractionIn(user="u", item="i", weight=1.0, timestamp=5),
            InteractionIn(user=7, item="j")]
    records = validate_interactions(rows, now=100)
    assert records[0] == {"user": "u", "item": "i", "weight": 3.0, "ts": 1577836800}
    assert records[1] == {"user": "7", "item": "j", "weight": 1.0, "ts": 100}
    with pytest.raises(ValidationError):  # the schema refuses a blank id before the rules run
        InteractionIn(user=" ", item="i")
    # the ingest rules still refuse it when a row bypasses the schema
    bad = [InteractionIn(user="u", item="i"), InteractionIn.model_construct(user=" ", item="i"),
           InteractionIn(user="u", item="i", weight=-1), InteractionIn(user="u", item="i",
                                                                       timestamp="soon")]
    with pytest.raises(InvalidInputError) as err:
        validate_interactions(bad, now=0)
    text = str(err.value)
    assert "row 2: empty user id" in text and "row 3: negative weight" in text
    assert "row 4: unparseable timestamp" in text
    with pytest.raises(InvalidInputError):
        validate_interactions([], now=0)


def _service(neo4j: Neo4jOptions, token: str | None = "t") -> RecommenderService:
    opts = ServeOptions(run="tiny", token=SecretStr(token) if token else None, neo4j=neo4j)
    return RecommenderService(opts, make_state())


def test_service_auth_and_memory_only_writes() -> None:
    service = _service(Neo4jOptions(enabled=False))
    service.authorize("Bearer t")
    with pytest.raises(AuthError):
        service.authorize("Bearer nope")
    with pytest.raises(AuthError):
        service.authorize(None)
    with pytest.raises(WritesDisabledError, match="without an API token"):
        _service(Neo4jOptions(enabled=False), token=None).authorize("Bearer t")
    result = asyncio.run(service.record_interactions([InteractionIn(user="ua", item="b1")]))
    assert result.persisted == "memory-only" and result.users_updated == ["ua"]
    made = asyncio.run(service.create_user(NewUserIn(user="z", items=["a0"])))
    assert made.cold_start == "items"
    assert asyncio.run(service.forget_user("z")).memory is True
    with pytest.raises(NotFoundError):
        asyncio.run(service.forget_user("z"))
    with pytest.raises(InvalidInputError):
        service.recommend("ua", 0)


def test_neo4j_down_writes_503_and_nothing_folded_in() -> None:
    from gnnrec.graph.server import free_port

    service = _service(Neo4jOptions(uri=f"bolt://127.0.0.1:{free_port()}", password="x"))
    before = service.state.user_embedding("ua")
    with pytest.raises(Neo4jUnavailableError, match="nothing was written"):
        asyncio.run(service.record_interactions([InteractionIn(user="ua", item="b1")]))
    with pytest.raises(Neo4jUnavailableError):
        asyncio.run(service.create_user(NewUserIn(user="new")))
    with pytest.raises(Neo4jUnavailableError):
        asyncio.run(service.forget_user("ua"))
    assert np.array_equal(service.state.user_embedding("ua"), before)
    assert "b1" not in service.state.user_items("ua") and not service.state.has_user("new")
    assert service.state.has_user("ua")
    assert service.recommend("ua", 3).items  # reads keep working
    ex = asyncio.run(service.explain("ub", "a0"))
    assert ex.source == "memory" and "Neo4j unavailable" in (ex.note or "")
    health = asyncio.run(service.health())
    assert health.neo4j.configured and not health.neo4j.reachable


def make_run(path: Path, num_users: int = 30, num_items: int = 40, seed: int = 0,
             graph: Any = None) -> Path:
    """A real run directory (untrained LightGCN on a synthetic graph, or on the split
    ``graph`` given), as gnn/run.py writes."""
    from gnnrec.gnn.generators import synthetic_graph
    from gnnrec.gnn.graph_file import save_graph
    from gnnrec.gnn.run import Run, build_model, final_embeddings
    from gnnrec.gnn.split import apply_split

    if graph is None:
        graph = apply_split(synthetic_graph(num_users, num_items, num_tags=6, seed=seed),
                            seed=seed)
    graph_path = save_graph(graph, path.parent / f"{path.name}.graph.pt")
    model = build_model("lightgcn", graph, {"embedding_dim": 8, "num_layers": 2})
    run = Run.create(path, model_name="lightgcn", model=model, graph=graph,
                     graph_path=graph_path, train_config={})
    run.save_model(model.state_dict())
    run.save_embeddings(*final_embeddings(model, graph))
    run.update_meta(status="finished", metrics={"test": {"recall@10": 0.1}})
    return path


def test_from_run_loads_a_run_directory(tmp_path: Path) -> None:
    state = ServingState.from_run(make_run(tmp_path / "run"))
    assert state.model == "lightgcn" and state.num_users == 30 and state.num_items == 40
    assert state.metrics["test"]["recall@10"] == 0.1
    user = "u0"
    seen = set(state.user_items(user))
    assert seen and not seen & set(ids(state.recommend(user, 10)))


def test_serve_config_yaml_args_are_valid_options() -> None:
    import yaml

    from gnnrec.serve.options import ResourceOptions

    config = yaml.safe_load((Path(__file__).parents[1] / "serve" / "serve_config.yaml")
                            .read_text())
    app = config["applications"][0]
    assert app["import_path"] == "gnnrec.serve.app:app_builder"
    args = dict(app["args"])
    resources = ResourceOptions.model_validate(args.pop("resources"))
    options = ServeOptions.model_validate(args)
    assert options.max_body_bytes == 1 << 20 and resources.replicas == 1
