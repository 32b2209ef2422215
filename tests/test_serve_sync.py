"""Serving follows Neo4j beyond its run: it never brings a forgotten user back (another
replica, a reload, a restart), and a reload or a restart keeps the online feedback.

One run made through the product path (ingest -> Neo4j -> export -> run directory, an
untrained LightGCN), served by in-process services that share the real Neo4j (each one a
replica with its own state) and by a real two-replica Ray Serve deployment.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import SecretStr

from gnnrec.cli import main
from gnnrec.graph.client import GraphClient
from gnnrec.graph.load import existing_user_ids
from gnnrec.graph.schema import clear_database, ensure_schema
from gnnrec.graph.settings import Neo4jSettings
from gnnrec.serve.errors import GoneError, NotFoundError
from gnnrec.serve.options import Neo4jOptions, ServeOptions
from gnnrec.serve.schemas import InteractionIn, NewUserIn
from gnnrec.serve.service import RecommenderService

sys.path.insert(0, str(Path(__file__).parent))
from test_serve_state import make_run  # noqa: E402

pytestmark = pytest.mark.integration
TOKEN = "forget-token"


@dataclass
class World:
    run: Path
    neo4j: GraphClient
    neo4j_options: Neo4jOptions

    def options(self, **fields: object) -> ServeOptions:
        return ServeOptions(run=str(self.run), token=SecretStr(TOKEN),
                            neo4j=self.neo4j_options, **fields)  # type: ignore[arg-type]


def make_product_run(client: GraphClient, path: Path, num_users: int = 30,
                     num_items: int = 24) -> Path:
    """Ingest a synthetic graph's interactions and friendships, export it from Neo4j and
    make a run of it (untrained LightGCN)."""
    from gnnrec.gnn.generators import synthetic_graph
    from gnnrec.gnn.split import apply_split
    from gnnrec.graph.export import export_hetero
    from gnnrec.ingest.pipeline import IngestOptions, ingest
    from gnnrec.ingest.readers import Source

    g = synthetic_graph(num_users, num_items, num_tags=4, seed=3)
    users, items = g["user"].ext_id, g["item"].ext_id
    ui = g["user", "interacts", "item"].edge_index.tolist()
    uu = g["user", "friend", "user"].edge_index.tolist()
    sources = [
        Source.from_frame("interactions", pd.DataFrame(
            {"user": [users[u] for u in ui[0]], "item": [items[i] for i in ui[1]]})),
        Source.from_frame("social", pd.DataFrame(
            {"user": [users[a] for a in uu[0]], "friend": [users[b] for b in uu[1]]})),
    ]
    ingest(client, sources, IngestOptions(reject_file=path.parent / "rejects.csv"))
    data, _ = export_hetero(client, progress=False)
    return make_run(path, graph=apply_split(data, seed=0))


@pytest.fixture(scope="module")
def world(neo4j: GraphClient, neo4j_settings: Neo4jSettings,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("forget-serve")
    saved = os.environ.get("GNNREC_KEY_FILE")
    os.environ["GNNREC_KEY_FILE"] = str(tmp / "forget.key")  # the CLI's and the services'
    clear_database(neo4j)
    ensure_schema(neo4j)
    try:
        run = make_product_run(neo4j, tmp / "run")
        yield World(run, neo4j, Neo4jOptions(uri=neo4j_settings.uri, user=neo4j_settings.user,
                                             password=SecretStr(neo4j_settings.password)))
    finally:
        if saved is None:
            os.environ.pop("GNNREC_KEY_FILE", None)
        else:
            os.environ["GNNREC_KEY_FILE"] = saved


def _recommend_status(service: RecommenderService, user: str) -> int:
    try:
        service.recommend(user, 5)
    except NotFoundError:
        return 404
    return 200


def test_forget_holds_on_every_replica_reload_and_restart(
    world: World, neo4j_env: Neo4jSettings, capsys: pytest.CaptureFixture[str],
) -> None:
    a = RecommenderService(world.options(), replica="a")
    b = RecommenderService(world.options(), replica="b")
    user, other = "u3", "u4"
    item = a.state.user_items(user)[0]
    assert b.state.has_user(user) and a.state.has_user(other)

    assert asyncio.run(a.forget_user(user)).neo4j  # deleted in Neo4j, with its tombstone
    assert _recommend_status(a, user) == 404
    asyncio.run(b.poll_forgotten())  # what b's background poller does every forget_poll_s
    assert _recommend_status(b, user) == 404
    with pytest.raises(NotFoundError):
        asyncio.run(b.explain(user, item))

    # the run's training data still holds the user: a reload and a restart drop them
    asyncio.run(b.reload(str(world.run)))
    assert not b.state.has_user(user) and b.state.has_user(other)
    c = RecommenderService(world.options(), replica="c")  # a restart / a new serve
    assert not c.state.has_user(user) and c.state.num_users == b.state.num_users

    # `gnnrec forget` without --server: every replica learns it from Neo4j
    assert main(["forget", other]) == 0
    capsys.readouterr()
    for service in (a, b, c):
        assert service.state.has_user(other)
        asyncio.run(service.poll_forgotten())
        assert _recommend_status(service, other) == 404

    # a write naming a forgotten user is refused (410) and writes nothing
    with pytest.raises(GoneError, match="forgotten"):
        asyncio.run(a.record_interactions([InteractionIn(user=user, item=item)]))
    with pytest.raises(GoneError):
        asyncio.run(a.create_user(NewUserIn(user=other)))
    assert existing_user_ids(world.neo4j, [user, other]) == set()
    assert not a.state.has_user(user) and not a.state.has_user(other)
    for service in (a, b, c):
        service.close()


def test_forget_reaches_every_serve_replica(
    world: World, ray_session: None, neo4j_env: Neo4jSettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ray import serve

    from gnnrec.graph.server import free_port
    from gnnrec.serve.app import build
    from gnnrec.serve.client import ServeClient
    from gnnrec.serve.options import ResourceOptions

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    try:
        serve.run(build(world.options(forget_poll_s=0.3),
                        ResourceOptions(num_cpus=0.25, replicas=2)),
                  name="forget", route_prefix="/")
        c = ServeClient(url, token=TOKEN)
        assert len({c.health()["replica"] for _ in range(30)}) == 2
        served = c.health()["users"]

        def gone(user: str, tries: int = 10) -> bool:
            return all(c.request("GET", f"/recommend/{user}")[0] == 404 and
                       c.request("GET", "/explain", params=[("user", user),
                                                            ("item", "i0")])[0] == 404
                       for _ in range(tries))

        for user in ("u6", "u7"):
            assert c.request("GET", f"/recommend/{user}")[0] == 200
        # --server: every replica has dropped the user when the command returns
        assert main(["forget", "u6", "--server", url, "--token", TOKEN]) == 0
        told = json.loads(capsys.readouterr().out)["server"]  # memory: false when a
        assert told["url"] == url  # replica's poller was faster than the DELETE
        assert gone("u6")
        # no --server: each replica's poller drops the user within its interval
        assert main(["forget", "u7"]) == 0
        deadline = time.monotonic() + 20
        while not gone("u7", 10) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gone("u7")
        # online feedback through one replica, then a reload: every replica serves it
        c.add_user("web-newbie", items=["i4"], friends=["u8"])
        c.add_interactions([{"user": "web-fresh", "item": "i5"}])
        # a reload of the same run: the forgotten stay forgotten, the feedback stays
        answer = c.reload(str(world.run))
        assert answer["users"] == served and answer["replayed_interactions"] >= 2
        assert gone("u6") and gone("u7")
        for _ in range(10):
            assert c.recommend("web-newbie", 3)["cold_start"] is None
            assert "i5" not in {r["item"] for r in c.recommend("web-fresh", 10)["items"]}
    finally:
        serve.shutdown()


def test_reload_and_restart_keep_online_feedback(world: World, tmp_path: Path) -> None:
    a = RecommenderService(world.options(), replica="a")
    assert a.state.exported_at is not None and a.state.neo4j_sync.loaded
    known, friend = "u10", "u11"
    top = a.recommend(known, 5).items[0].item
    asyncio.run(a.record_interactions([InteractionIn(user=known, item=top),
                                       InteractionIn(user="fresh", item="i2"),
                                       InteractionIn(user="fresh", item="brand-new")]))
    asyncio.run(a.record_interactions([InteractionIn(user=known, item="brand-new")]))
    made = asyncio.run(a.create_user(NewUserIn(user="newbie", items=["i1", "i3"],
                                               friends=[friend])))
    assert made.cold_start == "items+friends"
    asyncio.run(a.create_user(NewUserIn(user="lonely")))
    users = [known, "fresh", "newbie", "lonely"]
    seen = {u: sorted(a.state.user_items(u)) for u in users}
    emb = {u: a.state.user_embedding(u) for u in users}
    assert top in seen[known] and "brand-new" in seen["fresh"]

    def same_as_before(service: RecommenderService) -> None:
        for u in users:
            assert sorted(service.state.user_items(u)) == seen[u], u
            if emb[u] is None:  # popularity-served
                assert service.state.user_embedding(u) is None
            else:
                assert np.allclose(service.state.user_embedding(u), emb[u], atol=1e-6), u
        assert service.recommend("newbie", 5).cold_start is None
        assert service.recommend("lonely", 5).cold_start == "popularity"
        assert top not in {r.item for r in service.recommend(known, 20).items}

    answer = asyncio.run(a.reload(str(world.run)))
    assert answer.replayed_interactions >= 6
    same_as_before(a)
    b = RecommenderService(world.options(), replica="b")  # a restart on the same run
    same_as_before(b)
    health = asyncio.run(b.health()).neo4j_sync
    assert health is not None and health.done and health.replayed_users_created >= 3
    assert health.note is None

    # a run from a graph that was not exported from Neo4j replays nothing, and says so
    synthetic = make_run(tmp_path / "synthetic")
    c = RecommenderService(world.options().model_copy(update={"run": str(synthetic)}))
    status = asyncio.run(c.health()).neo4j_sync
    assert status is not None and status.replayed_interactions == 0
    assert "no export time" in (status.note or "") and not c.state.has_user("newbie")
    for service in (a, b, c):
        service.close()
