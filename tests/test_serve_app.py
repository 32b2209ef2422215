"""Integration: the real Ray Serve application over HTTP, with the real Neo4j.

Four applications share one Serve instance (one local Ray, 2 CPUs):

* ``/``      run A, Neo4j holding run A's graph, token required for writes;
* ``/down``  run A, Neo4j pointed at a closed port (reads from memory, writes 503);
* ``/open``  run A, no token configured (writes refused with 403), no Neo4j;
* ``/multi`` run A on two replicas following one feedback log, no Neo4j.

Run A and run B are real run directories (``Run.create`` + an untrained LightGCN) loaded
through ``ServingState.from_run``.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from gnnrec.graph import load
from gnnrec.graph.client import GraphClient
from gnnrec.graph.schema import clear_database, ensure_schema
from gnnrec.graph.server import free_port
from gnnrec.graph.settings import Neo4jSettings
from gnnrec.serve.client import ServeClient, ServerError, explain_via_server, recommend_via_server
from gnnrec.serve.options import Neo4jOptions, ResourceOptions, ServeOptions

sys.path.insert(0, str(Path(__file__).parent))
from test_serve_state import make_run  # noqa: E402

pytestmark = pytest.mark.integration
TOKEN = "test-token"
MAX_K = 50
MAX_BODY = 8192


@dataclass
class Served:
    url: str
    run_a: Path
    run_b: Path
    graph: object  # HeteroData of run A
    neo4j: GraphClient

    def client(self, prefix: str = "", token: str | None = TOKEN) -> ServeClient:
        return ServeClient(self.url + prefix, token=token)


def _load_into_neo4j(client: GraphClient, graph: object) -> None:
    g = graph  # HeteroData
    users, items, tags = g["user"].ext_id, g["item"].ext_id, g["tag"].ext_id  # type: ignore[index]
    load.merge_users(client, ({"id": u, "props": {}} for u in users))
    load.merge_items(client, ({"id": i, "props": {}} for i in items))
    load.merge_tags(client, ({"name": t} for t in tags))
    ui = g["user", "interacts", "item"].edge_index.tolist()  # type: ignore[index]
    load.merge_interactions(client, ({"user": users[a], "item": items[b], "weight": 1.0,
                                      "ts": None} for a, b in zip(*ui, strict=True)))
    uu = g["user", "friend", "user"].edge_index  # type: ignore[index]
    half = uu[:, : uu.size(1) // 2].tolist()
    load.merge_friendships(client, ({"a": min(users[a], users[b]), "b": max(users[a], users[b])}
                                    for a, b in zip(*half, strict=True)))
    it = g["item", "has_tag", "tag"].edge_index.tolist()  # type: ignore[index]
    load.merge_item_tags(client, ({"item": items[a], "tag": tags[b], "weight": 1.0}
                                  for a, b in zip(*it, strict=True)))


@pytest.fixture(scope="module")
def served(ray_session: None, neo4j: GraphClient, neo4j_settings: Neo4jSettings,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from ray import serve

    from gnnrec.gnn.graph_file import load_graph
    from gnnrec.serve.app import build

    tmp = tmp_path_factory.mktemp("serve")
    run_a = make_run(tmp / "run_a", 40, 60, seed=0)
    run_b = make_run(tmp / "run_b", 25, 30, seed=1)
    graph = load_graph(tmp / "run_a.graph.pt")  # the graph file make_run trained on
    clear_database(neo4j)
    ensure_schema(neo4j)
    _load_into_neo4j(neo4j, graph)

    up = Neo4jOptions(uri=neo4j_settings.uri, user=neo4j_settings.user,
                      password=SecretStr(neo4j_settings.password))
    down = Neo4jOptions(uri=f"bolt://127.0.0.1:{free_port()}", password=SecretStr("x"))
    off = Neo4jOptions(enabled=False)
    token = SecretStr(TOKEN)
    small = ResourceOptions(num_cpus=0.25)
    apps = {
        "main": ("/", ServeOptions(run=str(run_a), token=token, neo4j=up, max_k=MAX_K,
                                   max_body_bytes=MAX_BODY), small),
        "down": ("/down", ServeOptions(run=str(run_a), token=token, neo4j=down), small),
        "open": ("/open", ServeOptions(run=str(run_a), token=None, neo4j=off), small),
        "multi": ("/multi", ServeOptions(run=str(run_a), token=token, neo4j=off),
                  ResourceOptions(num_cpus=0.25, replicas=2)),
    }
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run_many([serve.RunTarget(build(options, resources), name=name,  # in parallel
                                        route_prefix=prefix)
                        for name, (prefix, options, resources) in apps.items()])
        yield Served(f"http://127.0.0.1:{port}", run_a, run_b, graph, neo4j)
    finally:
        serve.shutdown()


def _seen(served: Served, user: str) -> set[str]:
    g = served.graph
    u = g["user"].ext_id.index(user)  # type: ignore[index]
    ei = g["user", "interacts", "item"].edge_index  # type: ignore[index]
    return {g["item"].ext_id[i] for i in ei[1][ei[0] == u].tolist()}  # type: ignore[index]


def test_health_and_openapi(served: Served) -> None:
    health = served.client().health()
    assert health["run"] == str(served.run_a) and health["model"] == "lightgcn"
    assert health["metrics"]["test"]["recall@10"] == 0.1
    assert health["neo4j"] == {"configured": True, "reachable": True,
                               "uri": health["neo4j"]["uri"], "error": None}
    assert health["users"] == 40 and health["feedback"] == "local"
    status, spec = served.client().request("GET", "/openapi.json")
    assert status == 200
    assert {"/recommend/{user}", "/explain/{user}/{item}", "/interactions", "/users",
            "/users/{user}", "/admin/reload", "/similar/{item}", "/health"} <= set(spec["paths"])
    assert served.client().request("GET", "/docs")[0] == 200


def test_recommend_similar_and_filters(served: Served) -> None:
    c = served.client()
    answer = recommend_via_server(served.url, "u0", 5)
    items = [r["item"] for r in answer["items"]]
    assert len(items) == 5 and not set(items) & _seen(served, "u0")
    assert answer["cold_start"] is None
    without = [r["item"] for r in c.recommend("u0", 5, exclude=items[:2])["items"]]
    assert not set(items[:2]) & set(without)
    g = served.graph
    tag = g["tag"].ext_id[0]  # type: ignore[index]
    it = g["item", "has_tag", "tag"].edge_index  # type: ignore[index]
    tagged = {g["item"].ext_id[i] for i in it[0][it[1] == 0].tolist()}  # type: ignore[index]
    got = [r["item"] for r in c.recommend("u0", 10, tag=tag)["items"]]
    assert got and set(got) <= tagged
    diverse = c.recommend("u0", 5, diversity=0.7)
    assert len(diverse["items"]) == 5 and diverse["filters"]["diversity"] == 0.7
    sim = c.similar("i0", 3)["items"]
    assert len(sim) == 3 and "i0" not in {r["item"] for r in sim}


def test_explain_from_neo4j_matches_memory(served: Served) -> None:
    g = served.graph
    uu = g["user", "friend", "user"].edge_index  # type: ignore[index]
    ui = g["user", "interacts", "item"].edge_index  # type: ignore[index]
    users, items = g["user"].ext_id, g["item"].ext_id  # type: ignore[index]
    user, item = None, None  # a user with a friend who interacted with an item
    for a, b in uu.t().tolist():
        friend_items = set(ui[1][ui[0] == b].tolist()) - set(ui[1][ui[0] == a].tolist())
        if friend_items:
            user, item = users[a], items[min(friend_items)]
            break
    assert user is not None and item is not None
    from_neo4j = explain_via_server(served.url, user, item)
    assert from_neo4j["source"] == "neo4j"
    assert from_neo4j["friends"] and from_neo4j["score"] is not None
    from_memory = served.client("/down").explain(user, item)
    assert from_memory["source"] == "memory" and "Neo4j unavailable" in from_memory["note"]
    for key in ("friends", "co_users", "tags", "user_items"):
        assert from_neo4j[key] == from_memory[key], key


def test_bad_input(served: Served) -> None:
    c = served.client()
    status, body = c.request("GET", "/recommend/nobody")
    assert status == 404 and "POST /users" in body["detail"]
    assert c.request("GET", "/recommend/u0", params=[("k", 0)])[0] == 422
    assert c.request("GET", "/recommend/u0", params=[("k", MAX_K + 1)])[0] == 422
    assert c.request("GET", "/recommend/u0", params=[("k", "ten")])[0] == 422
    assert c.request("GET", "/recommend/u0", params=[("diversity", 1.5)])[0] == 422
    assert c.request("GET", "/similar/no-such-item")[0] == 404
    assert c.request("GET", "/explain/u0/no-such-item")[0] == 404
    assert c.request("POST", "/interactions", raw=b'[{"user": "u0", "item": ')[0] == 422
    status, body = c.request("POST", "/interactions", [{"user": "u0", "item": "i1",
                                                        "weight": "heavy"}])
    assert status == 422 and body["detail"][0]["loc"][-1] == "weight"
    assert c.request("POST", "/interactions", {"user": "u0"})[0] == 422  # not a list
    status, body = c.request("POST", "/interactions", [{"user": "u0", "item": "i1",
                                                        "weight": -2}])
    assert status == 422 and "row 1: negative weight" in body["detail"]
    big = [{"user": "u0", "item": f"i{n}"} for n in range(MAX_BODY // 20)]
    assert len(json.dumps(big)) > MAX_BODY
    assert c.request("POST", "/interactions", big)[0] == 413
    # auth: none, wrong, and a server without a token
    assert served.client(token=None).request("POST", "/interactions",
                                             [{"user": "u0", "item": "i1"}])[0] == 401
    assert served.client(token="wrong").request("DELETE", "/users/u0")[0] == 401
    status, body = served.client("/open").request("POST", "/users", {"user": "x"})
    assert status == 403 and "without an API token" in body["detail"]
    assert c.request("POST", "/users", {"user": "u1"})[0] == 409
    with pytest.raises(ServerError, match="404"):
        recommend_via_server(served.url, "nobody", 3)


def test_fold_in_is_visible_on_the_next_request(served: Served) -> None:
    c = served.client()
    before = [r["item"] for r in c.recommend("u1", 10)["items"]]
    posted = before[:3]
    answer = c.add_interactions([{"user": "u1", "item": i, "weight": 2.5} for i in posted]
                                + [{"user": "u1", "item": "brand-new", "timestamp": 1700000000}])
    assert answer["users_updated"] == ["u1"] and answer["items_created"] == ["brand-new"]
    assert answer["persisted"] == "neo4j" and answer["written"] == 4
    after = [r["item"] for r in c.recommend("u1", 10)["items"]]
    assert not set(posted) & set(after) and after != before
    assert c.similar("brand-new", 3)["items"]  # the new item has an embedding
    rows = served.neo4j.read(
        "MATCH (:User {id: $u})-[r:INTERACTED]->(i:Item) WHERE i.id IN $items "
        "RETURN i.id AS item, r.weight AS w, r.ts AS ts", {"u": "u1",
                                                           "items": [*posted, "brand-new"]})
    assert {r["item"]: r["w"] for r in rows} == {**dict.fromkeys(posted, 2.5), "brand-new": 1.0}
    assert next(r["ts"] for r in rows if r["item"] == "brand-new") == 1700000000


def test_cold_start_and_forget(served: Served) -> None:
    c = served.client()
    made = c.add_user("newbie", items=["i1", "i2"], friends=["u3"])
    assert made["cold_start"] == "items+friends" and made["persisted"] == "neo4j"
    rec = c.recommend("newbie", 5)
    assert rec["cold_start"] is None and not {"i1", "i2"} & {r["item"] for r in rec["items"]}
    lonely = c.add_user("lonely")
    assert lonely["cold_start"] == "popularity"
    assert c.recommend("lonely", 5)["cold_start"] == "popularity"
    assert load.existing_user_ids(served.neo4j, ["newbie", "lonely"]) == {"newbie", "lonely"}
    status, body = c.request("POST", "/users", {"user": "bad", "items": ["no-such"]})
    assert status == 422 and "unknown items" in body["detail"]

    gone = c.forget("newbie")
    assert gone["memory"] is True and gone["neo4j"] == {"INTERACTED": 2, "FRIEND": 1}
    assert c.request("GET", "/recommend/newbie")[0] == 404
    assert load.existing_user_ids(served.neo4j, ["newbie"]) == set()
    assert c.request("DELETE", "/users/newbie")[0] == 404


def test_neo4j_down_reads_work_writes_503_nothing_applied(served: Served) -> None:
    c = served.client("/down")
    health = c.health()
    assert health["neo4j"]["configured"] and not health["neo4j"]["reachable"]
    before = c.recommend("u2", 10)["items"]
    status, body = c.request("POST", "/interactions",
                             [{"user": "u2", "item": before[0]["item"]}])
    assert status == 503 and "nothing was written or folded in" in body["detail"]
    assert c.recommend("u2", 10)["items"] == before
    assert c.request("POST", "/users", {"user": "ghost"})[0] == 503
    assert c.request("GET", "/recommend/ghost")[0] == 404
    assert c.request("DELETE", "/users/u2")[0] == 503
    assert c.recommend("u2", 3)["items"]


def test_writes_reach_every_replica(served: Served) -> None:
    c = served.client("/multi")
    assert c.health()["feedback"] == "log"
    replicas = {c.health()["replica"] for _ in range(30)}
    assert len(replicas) == 2
    top = c.recommend("u4", 10)["items"][0]["item"]
    c.add_interactions([{"user": "u4", "item": top}])
    c.add_user("multi-user", items=["i5"])
    for _ in range(20):  # requests land on both replicas; each must already know
        assert top not in {r["item"] for r in c.recommend("u4", 10)["items"]}
        assert c.recommend("multi-user", 3)["cold_start"] is None
    c.forget("multi-user")
    assert all(c.request("GET", "/recommend/multi-user")[0] == 404 for _ in range(10))
    assert c.reload(str(served.run_b))["run"] == str(served.run_b)
    assert {c.health()["run"] for _ in range(20)} == {str(served.run_b)}


def test_cli_explain(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    from gnnrec.cli import main

    assert main(["explain", "u0", "i3", "--server", served.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "neo4j"
    assert main(["explain", "u0", "i3", "--server", served.url]) == 0
    assert "u0 -> i3  (from neo4j" in capsys.readouterr().out
    assert main(["explain", "nobody", "i3", "--server", served.url]) == 2


def test_reload_swaps_the_run(served: Served) -> None:
    c = served.client()
    assert c.request("POST", "/admin/reload", {"run": "/no/such/run"})[0] == 404
    status, body = c.request("POST", "/admin/reload", {"run": str(served.run_a.parent)})
    assert status == 422 and "cannot load run" in body["detail"]
    assert served.client(token=None).request("POST", "/admin/reload",
                                             {"run": str(served.run_b)})[0] == 401
    errors: list[int] = []
    stop = threading.Event()

    def reads() -> None:  # requests in flight during the swap all succeed
        reader = served.client()
        while not stop.is_set():
            status, _ = reader.request("GET", "/recommend/u0", params=[("k", 5)])
            errors.extend([status] if status != 200 else [])

    thread = threading.Thread(target=reads)
    thread.start()
    try:
        answer = c.reload(str(served.run_b))
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert answer["run"] == str(served.run_b) and answer["previous_run"] == str(served.run_a)
    assert answer["users"] == 25 and c.health()["run"] == str(served.run_b)
    assert c.health()["items"] == 30


def test_app_builder_takes_config_args(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.serve import Application

    from gnnrec.serve.app import app_builder

    monkeypatch.setenv("GNNREC_API_TOKEN", "from-env")
    app = app_builder({"run": "/srv/run", "neo4j": {"enabled": False},
                       "resources": {"replicas": 2, "num_cpus": 0.25}})
    assert isinstance(app, Application)


# -- hostile input (issue 21, items 3, 4 and 9) ---------------------------------------------------
def _no_users(served: Served, *ids: str) -> bool:
    return load.existing_user_ids(served.neo4j, list(ids)) == set()


def test_json_booleans_are_never_ids_timestamps_or_weights(served: Served) -> None:
    c = served.client()
    for rows in ([{"user": True, "item": "i1"}], [{"user": "u0", "item": False}],
                 [{"user": "u0", "item": "i1", "timestamp": False}],
                 [{"user": "u0", "item": "i1", "weight": True}]):
        status, body = c.request("POST", "/interactions", rows)
        assert status == 422, (rows, body)
    for body in ({"user": False}, {"user": "fresh", "items": [True]},
                 {"user": "fresh", "friends": [False]}):
        assert c.request("POST", "/users", body)[0] == 422, body
    assert _no_users(served, "True", "False", "fresh")
    assert c.request("GET", "/recommend/0")[0] == 404  # POST /users {"user": false} made none


def test_openapi_states_the_limits_the_server_enforces(served: Served) -> None:
    from gnnrec.ingest.validate import MAX_ID_LENGTH

    spec = served.client().request("GET", "/openapi.json")[1]
    schemas = spec["components"]["schemas"]
    user = schemas["InteractionIn"]["properties"]["user"]
    text = next(s for s in user["anyOf"] if s.get("type") == "string")
    assert text["minLength"] == 1 and text["maxLength"] == MAX_ID_LENGTH
    assert {s.get("type") for s in user["anyOf"]} == {"string", "integer"}
    body = spec["paths"]["/interactions"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["minItems"] == 1
    path_user = spec["paths"]["/users/{user}"]["delete"]["parameters"][0]["schema"]
    assert path_user["maxLength"] == MAX_ID_LENGTH
    assert "422" in spec["paths"]["/interactions"]["post"]["responses"]


def test_bodies_that_are_not_json_answer_422(served: Served) -> None:
    c = served.client()
    for raw, headers in ((b"\xff\xfe[", {}), (b"hello", {"Content-Type": "text/plain"}),
                         (b'[{"user": "\\ud800", "item": "i1"}]', {}), (b"", {})):
        status, body = c.request("POST", "/interactions", raw=raw, headers=headers)
        assert status == 422, (raw, status, body)


def test_over_long_ids_answer_422_and_write_nothing(served: Served) -> None:
    from gnnrec.ingest.validate import MAX_ID_LENGTH

    long = "u" * 9_000  # the probe's id: a 503 "retry later" from Neo4j's index before
    c = served.client("/down")  # validation answers before Neo4j is asked (here: unreachable)
    status, body = c.request("POST", "/interactions", [{"user": long, "item": "i1"}])
    assert status == 422 and str(MAX_ID_LENGTH) in json.dumps(body)
    assert c.request("POST", "/users", {"user": "ok", "items": ["i" * 9_000]})[0] == 422
    assert c.request("DELETE", f"/users/{long}")[0] == 422
    just_over = "v" * (MAX_ID_LENGTH + 1)
    assert served.client().request("POST", "/users", {"user": just_over})[0] == 422
    assert _no_users(served, just_over)


def test_ids_with_a_slash_are_addressable_and_never_redirected(served: Served) -> None:
    c = served.client()
    c.add_user("x", items=["i1"])
    c.add_user("x/", items=["i2"])
    c.add_user("a/b", items=["i3"])
    assert c.recommend("a/b", 3)["user"] == "a/b"  # GET /recommend/a%2Fb
    status, body = c.request("GET", "/explain", params=[("user", "a/b"), ("item", "i3")])
    assert status == 200 and body["user"] == "a/b" and body["item"] == "i3"
    status, body = c.request("DELETE", "/users/x%2F")
    assert status == 200 and body["user"] == "x/"
    assert c.request("GET", "/recommend/x")[0] == 200  # "x" untouched
    assert c.request("GET", "/recommend/x%2F")[0] == 404
    assert c.request("DELETE", "/users/nobody%2F")[0] == 404  # not a 307 to /users/nobody
    c.forget("x")
    c.forget("a/b")
    assert _no_users(served, "x", "x/", "a/b")


def test_a_killed_replica_is_replaced_and_knows_every_write(served: Served) -> None:
    """Killing one of /multi's two replicas (``ray.kill``: the actor process dies at once):
    the other keeps answering, Serve starts a new one, and the new one replays the feedback
    log (it knows a user made before)."""
    import time

    import ray

    c = served.client("/multi")
    c.add_user("before-kill", items=["i5"])
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if "multi" in a["name"] and "Recommender" in a["name"]]
    assert len(replicas) == 2, replicas
    initial = {c.health()["replica"] for _ in range(30)}
    assert len(initial) == 2
    victim = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
    ray.kill(victim, no_restart=True)
    answers = []
    for _ in range(40):  # meanwhile: every answer is right (retries land on the live one)
        status, body = c.request("GET", "/recommend/before-kill", params=[("k", 3)])
        answers.append(status)
        assert status != 404, body
    assert answers.count(200) >= 30, answers
    deadline = time.monotonic() + 180
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = {c.health()["replica"] for _ in range(20)}
        if len(seen) == 2 and seen != initial:  # a new replica answers beside the survivor
            break
        time.sleep(1)
    assert len(seen) == 2 and seen != initial, (seen, initial)
    for _ in range(20):  # both replicas, the new one included, know the earlier write
        assert c.recommend("before-kill", 3)["cold_start"] is None
    c.forget("before-kill")


def test_schemathesis_finds_no_5xx_and_no_schema_violation(served: Served) -> None:
    """Generated requests for every operation of the served OpenAPI (bounded: 10 each).

    Last in the module: its writes (random users and interactions) land in Neo4j and memory.
    """
    from api_fuzz import fuzz_openapi

    result = fuzz_openapi(served.url, TOKEN, max_examples=10)
    assert result["cases"] >= 50
    assert result["failures"] == [], "\n".join(result["failures"][:5])
