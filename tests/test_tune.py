"""``gnnrec tune``: search spaces (unit) and a small real Ray Tune experiment (integration:
a tiny graph, the test session's local Ray; tens of seconds)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gnn_fixtures import small_graph  # noqa: E402

from gnnrec.gnn.graph_file import save_graph  # noqa: E402
from gnnrec.gnn.run import Run, load_run  # noqa: E402
from gnnrec.gnn.tune import (  # noqa: E402
    SPACES,
    TuneError,
    TuneSettings,
    default_config,
    family_spaces,
    load_space,
    parse_families,
    search_space,
    starting_points,
    to_ray_space,
    trial_settings,
)


def test_every_family_has_a_space_and_defaults() -> None:
    from gnnrec.gnn.models import MODELS

    assert set(SPACES) == set(MODELS)
    for family in MODELS:
        defaults = default_config(family)
        assert defaults["epochs"] > 0 and "lr" in defaults


def test_edge_weights_are_searched_only_where_the_graph_has_the_edges() -> None:
    graph = small_graph()
    space = search_space("lightgcn", graph)
    assert "social_weight" in space and "tag_weight" in space
    bare = graph.clone()
    bare["user", "friend", "user"].edge_index = bare["user", "friend", "user"].edge_index[:, :0]
    assert "social_weight" not in search_space("lightgcn", bare)
    assert "social_weight" not in search_space("ials", graph)


def test_baseline_spaces_are_as_wide_as_the_protocol_asks() -> None:
    assert max(SPACES["ials"]["factors"]["choice"]) >= 256
    lo, hi = SPACES["ials"]["regularization"]["loguniform"]
    assert hi / lo >= 1e4
    lo, hi = SPACES["ials"]["alpha"]["loguniform"]
    assert hi / lo >= 1e2
    lo, hi = SPACES["ease"]["regularization"]["loguniform"]
    assert hi / lo >= 1e4


def test_lightgcn_searches_the_full_softmax_and_starts_from_it() -> None:
    space = to_ray_space(search_space("lightgcn", small_graph()))
    points = starting_points("lightgcn", space)
    losses = [trial_settings("lightgcn", p, TuneSettings())[1] for p in points]
    defaults = default_config("lightgcn")  # the defaults come first, objective included
    assert (losses[0].loss, losses[0].num_negatives) == (defaults["loss"],
                                                         defaults["num_negatives"])
    assert losses[1].loss == "full" and losses[1].temperature == 1.0
    assert {lo.loss for lo in losses} == {"softmax", "full"}
    assert defaults["num_negatives"] == 64


def test_yaml_overrides_and_bad_entries(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("lr: {loguniform: [0.001, 0.01]}\nnum_layers: 2\nl2: null\n")
    space = search_space("lightgcn", None, load_space(path))
    assert space["lr"] == {"loguniform": [0.001, 0.01]} and space["num_layers"] == 2
    assert "l2" not in space
    for bad in ("lr: {loguniform: [0, 1]}", "lr: {normal: [0, 1]}", "lr: {choice: []}"):
        path.write_text(bad)
        with pytest.raises(TuneError, match="lr"):
            search_space("lightgcn", None, load_space(path))
    path.write_text("- 1\n- 2\n")
    with pytest.raises(TuneError, match="mapping"):
        load_space(path)


def test_trial_settings_split_model_and_training() -> None:
    settings = TuneSettings(max_evaluations=7, eval_every=3, patience=2, seed=5)
    model, train = trial_settings("xsimgcl", {"embedding_dim": 32, "lr": 0.01,
                                              "objective": {"loss": "softmax",
                                                            "num_negatives": 16}}, settings)
    assert model == {"embedding_dim": 32}
    assert (train.lr, train.loss, train.num_negatives) == (0.01, "softmax", 16)
    assert (train.epochs, train.eval_every, train.patience, train.seed) == (21, 3, 2, 5)


def test_a_name_both_take_is_the_models() -> None:
    # EASE's solve precision and TrainConfig's step precision share a name: the
    # benchmark's LastFM override {"precision": "float32"} must reach EASE
    model, train = trial_settings("ease", {"regularization": 10.0, "precision": "float32"},
                                  TuneSettings())
    assert model == {"regularization": 10.0, "precision": "float32"}
    assert train.precision == "fp32"
    assert default_config("ease")["precision"] == "float64"
    model, train = trial_settings("lightgcn", {"precision": "bf16"}, TuneSettings())
    assert model == {} and train.precision == "bf16"


def _nothing(config: dict) -> None:
    pass


def test_starting_points_set_a_choice_of_several_settings() -> None:
    """XSimGCL's objective is a choice of mappings (loss with its negatives); its starting
    points must be ones Ray's search accepts (it merges a mapping in a point into the
    space's entry, which a choice refuses) and give the defaults back."""
    from ray.tune import Experiment
    from ray.tune.search import BasicVariantGenerator

    space = to_ray_space(search_space("xsimgcl"))
    points = starting_points("xsimgcl", space)
    model, train = trial_settings("xsimgcl", points[0], TuneSettings())
    defaults = default_config("xsimgcl")
    assert (train.loss, train.num_negatives, train.lr) == (
        defaults["loss"], defaults["num_negatives"], defaults["lr"])
    assert model["embedding_dim"] == defaults["embedding_dim"]
    search = BasicVariantGenerator(points_to_evaluate=points, random_state=0)
    search.add_configurations(Experiment("x", run=_nothing, config=space, num_samples=3))
    drawn = [search.next_trial() for _ in range(3)]
    assert all(t is not None for t in drawn)
    objectives = {trial_settings("xsimgcl", t.config, TuneSettings())[1].loss for t in drawn}
    assert objectives <= {"bpr", "softmax"}


def graph_file(tmp_path: Path, users: int = 120, items: int = 50) -> Path:
    """A small split graph saved as ``tmp_path/g.pt``."""
    path = tmp_path / "g.pt"
    save_graph(small_graph(users=users, items=items), path)
    return path


def test_families_and_their_spaces() -> None:
    assert parse_families("ease") == ["ease"]
    assert parse_families(" ials, ease ,ials") == ["ials", "ease"]  # in order, once each
    assert parse_families("all") == list(SPACES)
    for bad in ("", "ials,svd", "all,ials"):
        with pytest.raises(TuneError, match="unknown model"):
            parse_families(bad)
    assert family_spaces(["ials", "ease"], None) == {"ials": None, "ease": None}
    one = {"factors": 64}
    assert family_spaces(["ials"], one) == {"ials": one}  # one model: the file itself
    assert family_spaces(["ials", "ease"], {"ials": one}) == {"ials": one, "ease": None}
    with pytest.raises(TuneError, match="maps each model"):  # settings, not model names
        family_spaces(["ials", "ease"], one)
    with pytest.raises(TuneError, match="maps each model"):
        family_spaces(["ials", "ease"], {"ials": 64})


@pytest.mark.integration
def test_tune_several_models_selects_the_best_on_valid_and_resumes(
        ray_session: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gnnrec.cli import main

    graph_path = graph_file(tmp_path)
    out = tmp_path / "families"
    args = ["tune", "--graph", str(graph_path), "--out", str(out), "--trials", "2",
            "--max-evaluations", "2", "--grace", "1", "--no-progress", "--json"]
    assert main([*args, "--model", "pop,ease"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["family"] for r in first["table"]] == ["pop", "ease"]
    # a model added later: --resume keeps the finished experiments and tunes the new one
    assert main([*args, "--model", "pop,ease,ials", "--resume"]) == 0
    selection = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    table = {r["family"]: r for r in selection["table"]}
    assert set(table) == {"pop", "ease", "ials"} and all(r["trials"] == 2 for r in table.values())
    assert table["ease"]["best_valid_in_tuning"] == first["table"][1]["best_valid_in_tuning"]
    # every family is a run directory scored on valid; the best is linked as OUT/best
    for family, row in table.items():
        _, meta, _ = load_run(out / family)
        assert meta["model"]["name"] == family and meta["status"] == "finished"
        assert row["valid_recall@20"] == pytest.approx(meta["best_valid"]["recall@20"])
    best = max(table.values(), key=lambda r: r["valid_recall@20"])["family"]
    assert selection["best"] == best and (out / "best").is_symlink()
    assert (out / "best").resolve() == (out / best).resolve()
    assert load_run(out / "best")[1]["model"]["name"] == best
    with open(out / "families.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["family"] for r in rows] == ["pop", "ease", "ials"]
    assert json.loads((out / "families.json").read_text())["best"] == best
    # the same command again is refused without --resume, as for one model
    assert main([*args, "--model", "pop,ease,ials"]) == 2
    assert "--resume" in capsys.readouterr().err
    # without --json: a line per model as it finishes, then the comparison
    assert main([*args[:-1], "--model", "pop,ease,ials", "--resume"]) == 0
    printed = capsys.readouterr().out
    for family in table:
        assert f"{family}: 2 trials" in printed
    assert f"best on valid: {best}" in printed and "<- best" in printed


@pytest.mark.integration
def test_tune_cli_writes_the_best_run_a_table_and_curves_and_resumes(
        ray_session: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gnnrec.cli import main

    graph_path = graph_file(tmp_path)
    out = tmp_path / "best"
    args = ["tune", "--model", "ials", "--graph", str(graph_path), "--out", str(out),
            "--trials", "3", "--max-evaluations", "3", "--grace", "1", "--no-progress",
            "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["trials"] == 3 and summary["errors"] == 0
    # the refit of the best configuration reproduces its trial (deterministic training)
    assert summary["refit_valid"]["recall@20"] == pytest.approx(
        summary["best_valid_in_tuning"], abs=1e-9)
    with open(out / "trials.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and {"factors", "regularization", "alpha"} <= set(rows[0])
    assert (out / "curves.png").stat().st_size > 1000
    table = json.loads((out / "trials.json").read_text())
    assert table[0]["config"]["factors"] == default_config("ials")["factors"]  # defaults first
    assert max(r["best_recall@20"] for r in table) == summary["best_valid_in_tuning"]
    model, meta, _ = load_run(out)
    assert meta["model"]["name"] == "ials" and meta["tuning"]["best_trial"]
    assert Run.open(out).meta()["status"] == "finished"
    # a finished experiment is refused without --resume, and resumes with it
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["best_trial"] == summary["best_trial"] and again["trials"] == 3


@pytest.mark.integration
def test_tune_a_graph_model_with_asha(ray_session: None, tmp_path: Path) -> None:
    from gnnrec.gnn.tune import tune_model

    graph_path = graph_file(tmp_path, users=100, items=40)
    settings = TuneSettings(trials=3, max_evaluations=3, eval_every=1, grace=1, patience=3)
    summary = tune_model("lightgcn", graph_path, tmp_path / "lg", settings,
                         space={"embedding_dim": {"choice": [8, 16]}, "num_layers": 1},
                         progress=False)
    table = json.loads((tmp_path / "lg" / "trials.json").read_text())
    assert len(table) == 3 and all(r["evaluations"] >= 1 for r in table)
    assert {r["config"]["embedding_dim"] for r in table} <= {8, 16}
    assert summary["best_config"]["model"]["num_layers"] == 1
    assert summary["refit_valid"]["recall@20"] == pytest.approx(
        summary["best_valid_in_tuning"], abs=1e-9)
    best = next(r for r in table if r["trial_id"] == summary["best_trial"])
    if best["stopped"] != "asha":  # a finished trial's own run is the result, not a retraining
        assert Run.open(tmp_path / "lg").meta()["copied_from_trial"].endswith(
            f"trial_runs/{summary['best_trial']}")
