"""Smoke test of the benchmark scripts (quality.py, epoch_time.py, sampling_scaling.py) on a tiny
synthetic graph: the code paths run end to end in a few seconds, so they cannot rot. The
benchmarks' graph source (experiments/graphs.py: ingest -> Neo4j -> export, cached) is
checked against `gnnrec export` on the real Neo4j."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `experiments` is a folder at the root, not an installed package
    sys.path.insert(0, str(ROOT))

from experiments import blend, common, epoch_time, graphs, ingest_bench, quality  # noqa: E402
from gnnrec.gnn.generators import synthetic_graph  # noqa: E402
from gnnrec.gnn.split import apply_split  # noqa: E402


def _tiny() -> object:
    return apply_split(synthetic_graph(60, 40, num_tags=5, mean_interactions=8.0,
                                       friends_per_user=3, seed=1), "random", seed=1)


@pytest.mark.integration
def test_quality_benchmark_runs_on_a_tiny_graph(ray_session: None, tmp_path: Path) -> None:
    """Tuning by gnnrec tune (real Ray Tune), selection on valid, fits on another seed,
    one test read per run, ratios with bootstrap intervals; a second call resumes."""
    torch.set_num_threads(1)
    graph = synthetic_graph(60, 40, num_tags=5, mean_interactions=8.0, friends_per_user=3,
                            seed=1)
    families = ("pop", "ials", "ease", "lightgcn")
    logged: list[str] = []
    result = quality.run_benchmark("tiny", graph, tmp_path, quality.Budget.quick(),
                                   quality.TuneResources(), families=families, seeds=(0, 1),
                                   log=logged.append)
    assert result["best_graph_model"] == "lightgcn"
    assert [s["seed"] for s in result["per_seed"]] == [0, 1]
    for seed in result["per_seed"]:
        assert set(seed["test"]) == set(families)
        for m in quality.GOAL_METRICS:
            ratio = seed["versus_baselines"][m]
            assert ratio["baseline"] in quality.BASELINES
            assert ratio["ci95"]["low"] <= ratio["ratio"] <= ratio["ci95"]["high"]
    for family in families:
        assert (tmp_path / "tiny" / "seed1" / family / "model.pt").is_file()
        assert result["families"][family]["trials"] == (1 if family == "pop" else 2)
    assert set(result["goal"]["metrics"]) == set(quality.GOAL_METRICS)
    versus = result["families"]["lightgcn"]["versus_baselines"]
    assert result["goal"]["metrics"] == versus
    for m in quality.GOAL_METRICS:  # every family over every seed: means, ratio, interval
        base = versus[m]["baseline"]
        means = [sum(s["test"][f][m] for s in result["per_seed"]) / 2 for f in ("lightgcn", base)]
        assert versus[m]["ratio_of_means"] == pytest.approx(means[0] / means[1])
        assert versus[m]["ci95"]["low"] <= versus[m]["ratio_of_means"] <= versus[m]["ci95"]["high"]
        assert len(versus[m]["per_seed"]) == 2
    again = quality.run_benchmark("tiny", graph, tmp_path, quality.Budget.quick(),
                                  quality.TuneResources(), families=families, seeds=(0, 1),
                                  log=logged.append)
    assert again["test_mean"] == result["test_mean"]  # resumed: nothing trained again
    final = quality.run_benchmark("tiny", graph, tmp_path, quality.Budget.quick(),
                                  quality.TuneResources(), families=families, seeds=(0, 1),
                                  log=logged.append, final_fit=True)
    assert final["test_mean"] == result["test_mean"]
    for seed in final["final_fit"]["per_seed"]:  # every run again on train + valid
        assert set(seed["test"]) == set(families)
        for family in families:
            run = tmp_path / "tiny" / f"seed{seed['seed']}"
            source = json.loads((run / family / "meta.json").read_text())
            meta = json.loads((run / f"{family}-final" / "meta.json").read_text())
            assert meta["train_config"]["fit_on"] == "train+valid"
            assert seed["epochs"][family] == max(1, source["best_epoch"]) or family == "pop"
    assert set(final["final_fit"]["goal"]["metrics"]) == set(quality.GOAL_METRICS)
    assert "Final fit on train + valid" in quality.table(final)
    seed0 = tmp_path / "tiny" / "seed0"
    for other in ("ials", "ease"):  # a blend's ends are the two runs alone (valid)
        mixed = blend.blend(seed0 / "lightgcn", seed0 / other)
        ends = {r["weight_a"]: r for r in mixed["blends"]}
        for w, family in ((1.0, "lightgcn"), (0.0, other)):
            valid = json.loads((seed0 / family / "meta.json").read_text())["best_valid"]
            assert ends[w]["recall@20"] == pytest.approx(valid["recall@20"], abs=1e-6)
        assert mixed["best"]["recall@20"] >= max(ends[0.0]["recall@20"], ends[1.0]["recall@20"])
    baselines = quality.run_benchmark("tiny", graph, tmp_path, quality.Budget.quick(),
                                      quality.TuneResources(), families=("pop", "ials"),
                                      seeds=(0, 1), log=logged.append)
    assert baselines["best_graph_model"] is None and "goal" not in baselines
    assert baselines["test_mean"]["ials"] == result["test_mean"]["ials"]
    print(quality.table(result))
    png = tmp_path / "q.png"
    quality.plot(png, result, "tiny")
    assert png.stat().st_size > 0
    out = common.write_json(tmp_path / "q.json", {**result, "machine": common.machine()})
    assert json.loads(out.read_text())["machine"]["cpu_count"] >= 1


def test_epoch_time_steps_agree_and_time_a_batch() -> None:
    torch.set_num_threads(1)
    graph = _tiny()
    torch.manual_seed(0)
    ours, ours_model, ours_inputs = epoch_time.ours_step(graph, "cpu")
    pyg, pyg_model, edge_index = epoch_time.pyg_step(graph, ours_model, "cpu")
    with torch.no_grad():
        a = torch.cat(ours_model.embeddings(ours_inputs))
        b = pyg_model.get_embedding(edge_index)
    assert torch.allclose(a, b, atol=1e-6)
    epochs = epoch_time.Epochs(graph, seed=0)
    for step in (ours, pyg):
        t = epochs.run(step, epoch=1, max_batches=1)
        assert t["batches"] == 1 and t["wall_s"] >= 0 and t["loss"] > 0


def test_epoch_time_reads_an_exported_file_with_its_split(tmp_path: Path) -> None:
    from gnnrec.gnn.graph_file import save_graph

    graph = _tiny()
    path = save_graph(graph, tmp_path / "g.pt")
    loaded, info = epoch_time.load(epoch_time._parse(["--graph", str(path), "--seed", "5"]))
    assert torch.equal(loaded["user", "interacts", "item"].split,
                       graph["user", "interacts", "item"].split)  # its own split, not seed 5
    assert info["num_users"] == graph["user"].num_nodes and str(path) in info["source"]


def test_paired_bootstrap_interval() -> None:
    ours = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64)
    same = quality.paired_bootstrap(ours, ours.clone(), resamples=200)
    assert same["low"] == pytest.approx(1.0) and same["high"] == pytest.approx(1.0)
    assert same["share_ge_1.03"] == 0.0
    better = quality.paired_bootstrap(ours * 1.1, ours, resamples=200)  # paired: exactly 1.1
    assert better["low"] == pytest.approx(1.1) and better["high"] == pytest.approx(1.1)
    assert better["share_ge_1.03"] == 1.0
    noisy = quality.paired_bootstrap(torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64),
                                     torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64),
                                     resamples=500, seed=3)
    assert noisy["low"] < 1.0 < noisy["high"]  # a tie on 4 users: the interval spans 1
    with pytest.raises(ValueError):
        quality.paired_bootstrap(ours, ours[:2])


def test_seeds_bootstrap_is_the_ratio_of_means_over_splits() -> None:
    a = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64)
    b = torch.tensor([0.5, 0.5], dtype=torch.float64)
    # split 1 exactly x1.5 (paired), split 2 exactly x1.0: ratio of means (0.75 + 0.5) / 1.0
    fixed = quality.seeds_bootstrap([(a * 1.5, a), (b, b)], resamples=300)
    assert 1.0 < fixed["low"] <= 1.25 <= fixed["high"] < 1.5  # not 1.5: split 2 pulls it
    noisy = quality.seeds_bootstrap([(a, a.flip(0)), (b, b)], resamples=500, seed=1)
    assert noisy["low"] < 1.0 < noisy["high"]
    single = quality.seeds_bootstrap([(a * 1.1, a)], resamples=100)
    assert single == quality.paired_bootstrap(a * 1.1, a, resamples=100)
    with pytest.raises(ValueError):
        quality.seeds_bootstrap([])
    with pytest.raises(ValueError):
        quality.seeds_bootstrap([(a, a), (b, a)])


def test_sampling_benchmark_runs_on_a_tiny_graph(ray_session: None) -> None:
    """Every sampler of experiments/sampling_scaling.py runs; the networkx baseline samples
    real train edges with the fan-out respected, so the ratio compares like with like."""
    from experiments import sampling_scaling

    g = _tiny()
    args = sampling_scaling._parse(["--repeats", "2", "--batch-size", "16"])
    out = sampling_scaling.bench_graph("tiny", g, 6, 2, 2, args)
    for key in ("inprocess", "ray1", "ray2", "plain1", "plain2", "networkx"):
        assert out[f"{key}_seeds_per_s"] > 0 and len(out[f"{key}_times_s"]) == 2
    assert len(out["speedup_vs_networkx_per_round"]) == 2
    assert len(out["ray_speedup_2v1_per_round"]) == 2
    assert len(out["plain_speedup_2v1_per_round"]) == 2

    nxs = sampling_scaling.NetworkxSampler(g, [3, 2])
    local, edges = nxs.sample("user", list(range(10)))
    glob = {nt: {v: k for k, v in m.items()} for nt, m in local.items()}
    for et, pairs in edges.items():
        ei = g[et].edge_index
        if "split" in g[et]:
            ei = ei[:, g[et].split == 0]
        real = set(zip(ei[0].tolist(), ei[1].tolist(), strict=True))
        assert {(glob[et[0]][s], glob[et[2]][d]) for s, d in pairs} <= real
        per_dst = Counter(d for _, d in pairs)
        assert max(per_dst.values(), default=0) <= 3


TINY_OPTIONS = {"num_users": 60, "num_items": 40, "seed": 1, "friend_density": 0.05}


@pytest.mark.integration
def test_product_graph_is_what_gnnrec_export_writes_and_is_cached(
        graph_client: object, neo4j_env: object, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmarks' graph: ingest into the configured Neo4j, the export `gnnrec export`
    runs, a cache keyed by content that a second run reads without Neo4j."""
    from gnnrec.cli import main as gnnrec
    from gnnrec.gnn.data import fingerprint
    from gnnrec.gnn.graph_file import load_graph
    from gnnrec.graph.load import graph_stats

    source = graphs.GraphSource("configured", yes=False, cache=tmp_path / "cache")
    graph, info = graphs.product_graph("synthetic", source, options=TINY_OPTIONS)
    assert info["cached"] is False and info["neo4j"]["ingest_into"] == "configured"
    assert info["ingest"]["rejected"] == 0
    assert info["ingest"]["read"] == info["ingest"]["loaded"] > 0
    assert info["num_users"] == 60 and info["num_items"] == 40
    assert info["num_friendships"] == graph_stats(graph_client)["relationships"]["FRIEND"] > 0
    assert Path(info["graph_file"]).parent == tmp_path / "cache"
    assert fingerprint(graph) == info["fingerprint"]
    # with the benchmarks' split, the very file `gnnrec export --out` writes (its default
    # split is the same seeded random one) from the database it left behind
    out = tmp_path / "exported.pt"
    assert gnnrec(["export", "--out", str(out)]) == 0
    exported = load_graph(out)
    assert fingerprint(apply_split(graph, "random", seed=0)) == fingerprint(exported)
    for nt in ("user", "item", "tag"):
        assert list(graph[nt].ext_id) == list(exported[nt].ext_id)
    for nt in ("user", "item"):
        assert torch.equal(graph[nt].x, exported[nt].x)
        assert graph[nt].feature_names == exported[nt].feature_names
    # a second run reads the cache: no Neo4j, no ingest
    def no_neo4j(_source: object) -> None:
        raise AssertionError("a cached graph must not touch Neo4j")

    with monkeypatch.context() as patch:
        patch.setattr(graphs, "bench_neo4j", no_neo4j)
        again, info2 = graphs.product_graph("synthetic", source, options=TINY_OPTIONS)
        assert info2["cached"] is True and info2["graph_file"] == info["graph_file"]
        assert fingerprint(again) == info["fingerprint"]
        # other data (another seed) or a refresh goes to Neo4j again
        with pytest.raises(AssertionError, match="must not touch Neo4j"):
            graphs.product_graph("synthetic", source, options={**TINY_OPTIONS, "seed": 2})
        with pytest.raises(AssertionError, match="must not touch Neo4j"):
            graphs.product_graph("synthetic", graphs.GraphSource(
                "configured", cache=tmp_path / "cache", refresh=True), options=TINY_OPTIONS)
    # the configured database holds the dataset now: it is not cleared without consent
    with pytest.raises(SystemExit, match="refusing: the database .* holds"):
        graphs.product_graph("synthetic", graphs.GraphSource(
            "configured", cache=tmp_path / "cache", refresh=True), options=TINY_OPTIONS)
    # the record next to the graph file holds no path of this machine
    record = Path(info["graph_file"] + ".json").read_text()
    assert str(tmp_path) not in record and str(ROOT) not in record


def test_cache_key_follows_the_data_and_the_code() -> None:
    sources = graphs.dataset_sources("synthetic", TINY_OPTIONS)
    key = graphs.cache_key("synthetic", TINY_OPTIONS, sources)
    assert key == graphs.cache_key("synthetic", TINY_OPTIONS,
                                   graphs.dataset_sources("synthetic", TINY_OPTIONS))
    other = graphs.dataset_sources("synthetic", {**TINY_OPTIONS, "seed": 2})
    assert graphs.cache_key("synthetic", TINY_OPTIONS, other) != key  # the frames differ
    frame = sources[-1].frame.copy()
    frame.iloc[0, 0] = "someone-else"
    changed = [*sources[:-1], dataclasses.replace(sources[-1], frame=frame)]
    assert graphs.cache_key("synthetic", TINY_OPTIONS, changed) != key  # one cell changed
    assert {"ingest", "graph/export.py"} <= set(graphs.CODE)
    with pytest.raises(ValueError, match="synthetic dataset only"):
        graphs.dataset_sources("ml-100k", {"seed": 1})


def test_results_hold_no_machine_paths(tmp_path: Path) -> None:
    wheel = "/".join(["", "opt", "cache", "wheels", "recbole-1.2.1-py3-none-any.whl"])
    result = {"graph": str(ROOT / "experiments" / "results" / "g.pt"),
              "source": f"PackageFiles({tmp_path / 'x.whl'}):recbole/ml-100k.inter",
              "list": [str(tmp_path / "runs" / "r1"), "rels/s", "GET /recommend/u?k=10"],
              str(tmp_path / "key"): 1.5, "not_a_path": wheel}
    path = common.write_json(tmp_path / "r.json", result)
    text = path.read_text()
    assert str(tmp_path) not in text and str(ROOT) not in text
    back = json.loads(text)
    assert back["graph"] == "experiments/results/g.pt"
    assert back["source"] == "PackageFiles(x.whl):recbole/ml-100k.inter"
    assert back["list"] == ["r1", "rels/s", "GET /recommend/u?k=10"]
    assert back["key"] == 1.5


def test_ingest_bench_checks_the_counts_that_matter() -> None:
    """After a write-back, a cleared database still lists RECOMMENDED with 0: not a mismatch."""
    expected = ingest_bench.EXPECTED
    used = {"nodes": {**expected["nodes"], "Run": 0},
            "relationships": {**expected["relationships"], "RECOMMENDED": 0}}
    ingest_bench.check_counts(used)
    ingest_bench.check_counts(expected)
    wrong = {**used, "relationships": {**used["relationships"], "FRIEND": 12_716}}
    with pytest.raises(SystemExit, match="FRIEND 12,716 != 12,717"):
        ingest_bench.check_counts(wrong)
    extra = {**used, "relationships": {**used["relationships"], "RECOMMENDED": 3}}
    with pytest.raises(SystemExit, match="RECOMMENDED 3 != 0"):
        ingest_bench.check_counts(extra)
    missing = {**used, "nodes": {"User": 1_892, "Item": 18_022}}
    with pytest.raises(SystemExit, match="Tag 0 != 9,749"):
        ingest_bench.check_counts(missing)


@pytest.mark.integration
def test_a_used_database_lists_types_with_zero_counts(graph_client: object) -> None:
    """What made ingest_bench stop after `make demo`: relationship types outlive their
    relationships, and graph_stats lists them with a count of 0."""
    from gnnrec.graph.load import graph_stats
    from gnnrec.graph.schema import clear_database

    graph_client.write("CREATE (:User {id: 'a'})-[:RECOMMENDED {rank: 1}]->(:Item {id: 'b'})")
    clear_database(graph_client)
    stats = graph_stats(graph_client)
    assert stats["relationships"].get("RECOMMENDED") == 0
    expected = ingest_bench.EXPECTED
    ingest_bench.check_counts({
        section: {**stats[section], **expected[section]} for section in expected})


def test_committed_results_hold_no_machine_paths() -> None:
    """experiments/results/ keeps results a reader can use anywhere: no absolute path of
    the machine that made them (the writers go through common.write_json)."""
    for path in sorted((ROOT / "experiments" / "results").glob("*.json")):
        result = json.loads(path.read_text())
        assert common.portable(result) == result, path.name
