"""Recommendation quality: our graph models against tuned baselines on one split.

    python -m experiments.quality --dataset ml-100k \\
        --json experiments/results/quality_ml-100k.json \\
        --png experiments/results/quality_ml-100k.png [--quick]

Protocol (DESIGN.md, "Evaluation protocol"): the dataset's graph through the product
(ingested into Neo4j and exported as ``gnnrec export`` does, cached by content:
:func:`experiments.graphs.product_graph`), implicit feedback (EVERY
interaction is a positive, MovieLens ratings included: weights are ignored), ONE seeded
per-user random 80/10/10 split shared by every model, full ranking over all items the user
has not interacted with in train (valid) or train + valid (test), metrics at 10 and 20.
LastFM's item-tag edges are counted without the tagging events of held-out (user, item)
pairs (the product's rule: :func:`gnnrec.gnn.data.train_subgraph`, which every model is
built from, on the export's ``tag_events``; user-generated tags would otherwise leak them).

Every model family is tuned on VALID recall@20 only, with early stopping on valid recall@20
(BPR models: the training loop of :mod:`gnnrec.gnn.train`; ALS: the best iteration count
among the checkpoints); the test split is read ONCE, for the selected configuration of
each family, after all tuning is done. Families:

* ``pop``: train popularity (nothing to tune);
* ``mf``: matrix factorisation with BPR (lr, l2 tuned);
* ``als``: ``implicit.cpu.als.AlternatingLeastSquares`` on the binary user x item matrix,
  full grid over factors, regularisation (several orders of magnitude), confidence alpha,
  iterations (checkpoints), scored through the same full-ranking evaluator;
* ``lightgcn``: coordinate search over the objective (sampled softmax over 16 negatives,
  or BPR with one), lr, l2, layers at embedding 64, then the embedding size (128, 256; ALS
  searches its factors too), then l2 again at that size;
* ``lightgcn_social`` (graphs with friendships): the selected LightGCN settings plus
  friend edges, ``social_weight`` tuned;
* ``lightgcn_tags`` (graphs with item tags): the settings of the better (on valid) of
  ``lightgcn`` and ``lightgcn_social`` plus tag nodes joined to their items,
  ``tag_weight`` tuned;
* ``graphsage``: heterogeneous GraphSAGE (friends and tags where the graph has them),
  coordinate search over the objective, lr, l2.

The best graph model is the one of lightgcn / lightgcn_social / lightgcn_tags / graphsage
with the best VALID recall@20; ``ratio_*`` are its TEST metrics over tuned ALS's, and ``ratio_ci95``
their 95 % paired bootstrap intervals over the test users (how much of a ratio is the
particular sample of test users).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from experiments.common import loadavg, machine, peak_rss_gb, write_json
from experiments.graphs import GraphSource, add_graph_arguments, product_graph
from gnnrec.gnn.cli import parse_model_arg
from gnnrec.gnn.train import TrainConfig

METRIC = "recall@20"
TABLE_METRICS = ("recall@20", "ndcg@20", "precision@20", "hit@20", "mrr@20", "coverage@20",
                 "novelty@20", "recall@10", "ndcg@10")
GRAPH_FAMILIES = ("lightgcn", "lightgcn_social", "lightgcn_tags", "graphsage")
FAMILIES = ("pop", "mf", "als", *GRAPH_FAMILIES)
LABELS = {"pop": "Popularity", "mf": "MF-BPR", "als": "ALS (implicit)", "lightgcn": "LightGCN",
          "lightgcn_social": "LightGCN + social", "lightgcn_tags": "LightGCN + tags",
          "graphsage": "GraphSAGE"}
# The families that read tags, and how the tag graph is made (see
# ``gnnrec.gnn.data.without_heldout_tagging``): a LastFM result without this mark counted
# the tagging of held-out pairs, so its trials of these families are not reused.
TAG_FAMILIES = ("lightgcn_tags", "graphsage")
TAG_GRAPH = "tagging events of held-out (user, item) pairs dropped"
# Families that start from the selected settings of others: (families, the setting added)
DERIVED = {"lightgcn_social": (("lightgcn",), {"social_weight": 1.0}),
           "lightgcn_tags": (("lightgcn", "lightgcn_social"), {"tag_weight": 0.5})}
# Result key -> the derived family compared on test with the family it started from
VERSUS_START = {"social_vs_plain": "lightgcn_social", "tags_vs_without": "lightgcn_tags"}


def start_family(family: str, selected: dict[str, Any]) -> str:
    """The family a DERIVED ``family`` starts from: the best on valid of its sources."""
    return max((f for f in DERIVED[family][0] if f in selected),
               key=lambda f: selected[f].valid[METRIC])
_TRAIN_KEYS = {f.name for f in fields(TrainConfig)}


# -- settings -----------------------------------------------------------------------------
BPR_1 = {"loss": "bpr", "num_negatives": 1}
SOFTMAX_16 = {"loss": "softmax", "num_negatives": 16}

@dataclass
class Budget:
    """Epoch budget and tuning grids (``quick`` shrinks everything for a fast run)."""

    max_epochs: int = 400
    eval_every: int = 5
    patience: int = 6  # evaluations without improvement (patience * eval_every epochs)
    als_factors: tuple[int, ...] = (32, 64, 128)
    als_regularization: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
    als_alpha: tuple[float, ...] = (1.0, 5.0, 10.0, 20.0, 40.0)
    als_iterations: tuple[int, ...] = (5, 10, 15, 20, 30, 50)  # checkpoints evaluated on valid
    # Coordinate search: start from ``base``, then each stage tries its values with the
    # other settings at the best so far (the stages run in order). A value that is a dict
    # sets several settings together (e.g. a loss with its number of negatives).
    stages: dict[str, list[dict[str, list[Any]]]] = field(default_factory=lambda: {
        "mf": [{"lr": [1e-3, 1e-2]}, {"l2": [1e-5, 1e-3]}],
        # l2 and then lr again after the embedding size: the weight decay a model needs
        # grows with its capacity, and Adam's step size interacts with both (a trial
        # already run is not run again).
        "lightgcn": [{"objective": [BPR_1]}, {"lr": [2e-3, 1e-2]}, {"l2": [1e-4, 3e-3]},
                     {"num_layers": [2]}, {"embedding_dim": [128, 256]},
                     {"l2": [1e-4, 1e-3, 3e-3, 1e-2]}, {"lr": [1e-3, 2e-3, 5e-3, 1e-2]}],
        "lightgcn_social": [{"social_weight": [0.25, 0.5, 1.0]}],
        # added in session 8, after the test figures of three LastFM runs: a better model
        # rather than a wider search of the same one (README, "Quality")
        "lightgcn_tags": [{"tag_weight": [0.2, 1.0]}],
        "graphsage": [{"objective": [BPR_1]}, {"lr": [2e-3, 1e-2]}, {"l2": [1e-4, 1e-2]}],
    })
    # Bases: MF is the BPR baseline; the graph models start from sampled softmax over 16
    # negatives (chosen on ML-100K VALID against BPR with 1 and 4 negatives; the
    # ``objective`` stage re-checks BPR on every dataset).
    base: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "mf": {"embedding_dim": 64, "lr": 5e-3, "l2": 1e-4},
        "lightgcn": {"embedding_dim": 64, "num_layers": 3, "lr": 5e-3, "l2": 1e-3,
                     **SOFTMAX_16},
        "graphsage": {"embedding_dim": 64, "num_layers": 2, "lr": 5e-3, "l2": 1e-3,
                      **SOFTMAX_16},
    })

    @classmethod
    def quick(cls) -> Budget:
        return cls(max_epochs=20, eval_every=2, patience=3, als_factors=(32, 64),
                   als_regularization=(0.01, 1.0, 100.0), als_alpha=(1.0, 20.0),
                   als_iterations=(5, 10),
                   stages={"mf": [{"lr": [5e-3, 1e-2]}],
                           "lightgcn": [{"lr": [5e-3, 1e-2]}],
                           "lightgcn_social": [{"social_weight": [0.5, 1.0]}],
                           "lightgcn_tags": [{"tag_weight": [1.0]}],
                           "graphsage": [{"lr": [5e-3]}]})


def split_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model constructor arguments, TrainConfig fields)`` of a flat trial config."""
    model = {k: v for k, v in config.items() if k not in _TRAIN_KEYS}
    train = {k: v for k, v in config.items() if k in _TRAIN_KEYS}
    return model, train


# -- one trial ------------------------------------------------------------------------------
@dataclass
class Trial:
    family: str
    config: dict[str, Any]
    valid: dict[str, float]
    best_epoch: int
    epochs_run: int
    stopped: str
    seconds: float
    curve: list[tuple[int, float]]
    model: Any = None  # the fitted model (kept for the selected trial only)
    recorded: bool = False  # taken from an earlier run's JSON (``--reuse``), not trained here

    def record(self) -> dict[str, Any]:
        return {"config": self.config, "valid_" + METRIC: self.valid.get(METRIC),
                "valid_ndcg@20": self.valid.get("ndcg@20"), "best_epoch": self.best_epoch,
                "epochs_run": self.epochs_run, "stopped": self.stopped,
                "seconds": round(self.seconds, 2), **({"recorded": True} if self.recorded else {})}


def _as_is(trial: Trial) -> Trial:
    return trial


# -- trials recorded by an earlier run ----------------------------------------------------------
def trial_key(family: str, config: dict[str, Any]) -> str:
    """What identifies a trial: its whole config (ALS: without the iteration count, which the
    trial itself picks among its checkpoints)."""
    if family == "als":
        config = {k: float(v) if k != "factors" else int(v)
                  for k, v in config.items() if k != "iterations"}
    return json.dumps(config, sort_keys=True)


def recorded_trials(previous: dict[str, Any] | None, family: str) -> dict[str, Trial]:
    """The trials ``previous`` (an earlier result JSON of the same dataset, seed, split and
    epoch budget) ran for ``family``, by :func:`trial_key`, without fitted models."""
    if previous is None or family not in previous["models"]:
        return {}
    out = {}
    for r in previous["models"][family]["trials"]:
        valid = {METRIC: r["valid_" + METRIC], "ndcg@20": r["valid_ndcg@20"]}
        out[trial_key(family, r["config"])] = Trial(
            family, r["config"], valid, r["best_epoch"], r["epochs_run"], r["stopped"],
            r["seconds"], [], recorded=True)
    return out


def read_trial_log(path: Path) -> dict[str, Any]:
    """A :class:`TrialLog` file as the part of a result JSON that ``--reuse`` reads."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out: dict[str, Any] = {**lines[0]["header"], "models": {}}
    for r in lines[1:]:
        out["models"].setdefault(r.pop("family"), {"trials": []})["trials"].append(r)
    return out


def merge_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One ``--reuse`` source of several results or logs (the trials of all of them)."""
    merged: dict[str, Any] = {**results[0], "models": {}}
    for r in results:
        for family, m in r["models"].items():
            if (family in TAG_FAMILIES and r.get("dataset") == "lastfm"
                    and r.get("tag_graph") != TAG_GRAPH):
                continue  # counted with held-out tagging: not the same data
            merged["models"].setdefault(family, {"trials": []})["trials"] += m["trials"]
    return merged


def run_identity(dataset: str, seed: int, split: dict[str, Any],
                 budget: Budget) -> dict[str, Any]:
    """What trials must share to be reused: data, seed, split and epoch budget (the keys a
    result JSON has them under)."""
    return {"dataset": dataset, "seed": seed, "split": json.loads(json.dumps(split)),
            "grids": {"epochs": grids(budget, ())["epochs"]}}


class TrialLog:
    """Every trial this run trains, appended to a JSON-lines file as soon as it ends (after
    a header naming the dataset, seed, split and epoch budget), so a run that is killed
    loses at most the trial in progress: ``--trial-log`` again resumes it."""

    def __init__(self, path: Path, dataset: str, seed: int, split: dict[str, Any],
                 budget: Budget) -> None:
        self.path = path
        if not path.exists() or not path.read_text().strip():
            path.parent.mkdir(parents=True, exist_ok=True)
            header = {**run_identity(dataset, seed, split, budget), "tag_graph": TAG_GRAPH}
            path.write_text(json.dumps({"header": header}) + "\n")

    def __call__(self, trial: Trial) -> Trial:
        if not trial.recorded:
            with self.path.open("a") as f:
                f.write(json.dumps({"family": trial.family, **trial.record()}) + "\n")
        return trial


def check_reusable(previous: dict[str, Any], dataset: str, seed: int, split: dict[str, Any],
                   budget: Budget) -> None:
    """Refuse an earlier result whose trials were not run on the same data and budget."""
    ours = run_identity(dataset, seed, split, budget)
    theirs = {**{k: previous[k] for k in ("dataset", "seed", "split")},
              "grids": {"epochs": previous["grids"]["epochs"]}}
    if differ := [{"grids": "epoch budget"}.get(k, k) for k in ours if ours[k] != theirs[k]]:
        raise SystemExit(f"cannot reuse its trials: different {', '.join(differ)}")


def train_bpr(family: str, graph: HeteroData, config: dict[str, Any], budget: Budget,
              seed: int) -> Trial:
    """Build and train one BPR model (early stopping on valid recall@20)."""
    from gnnrec.gnn.run import build_model
    from gnnrec.gnn.train import seed_everything, train

    model_cfg, train_cfg = split_config(config)
    name = "lightgcn" if family.startswith("lightgcn") else family
    seed_everything(seed)
    model = build_model(name, graph, model_cfg)
    tc = TrainConfig(epochs=budget.max_epochs, eval_every=budget.eval_every,
                     patience=budget.patience, metric=METRIC, seed=seed, device="cpu",
                     **train_cfg)
    t0 = time.perf_counter()
    result = train(model, graph, tc, progress=False)
    seconds = time.perf_counter() - t0
    curve = [(int(h["epoch"]), float(h["valid"][METRIC])) for h in result.history if "valid" in h]
    epochs_run = max((int(h["epoch"]) for h in result.history), default=0)
    return Trial(family, config, result.best_valid, result.best_epoch, epochs_run,
                 result.stopped, seconds, curve, model)


def coordinate_search(family: str, base: dict[str, Any], stages: list[dict[str, list[Any]]],
                      run_trial: Callable[[dict[str, Any]], Trial],
                      log: Callable[[str], None],
                      recorded: dict[str, Trial] | None = None) -> tuple[Trial, list[Trial]]:
    """Tune one setting at a time on valid; returns ``(best trial, all trials)``. A config
    found in ``recorded`` takes its recorded result instead of being trained again (the
    best trial may then come without a fitted model: see :func:`fitted`)."""
    done: dict[str, Trial] = {}
    recorded = recorded or {}

    def attempt(config: dict[str, Any]) -> Trial:
        key = trial_key(family, config)
        if key not in done:
            trial = recorded.get(key) or run_trial(config)
            log(f"  {family:16s} {_fmt(config)}  valid {METRIC} {trial.valid[METRIC]:.4f} "
                f"(epoch {trial.best_epoch}/{trial.epochs_run}, {trial.seconds:.0f}s"
                f"{', recorded' if trial.recorded else ''})")
            done[key] = trial
            best = max(done.values(), key=lambda t: t.valid[METRIC])
            for t in done.values():  # keep only the best fitted model in memory
                if t is not best:
                    t.model = None
        return done[key]

    best = attempt(dict(base))
    for stage in stages:
        for name, values in stage.items():
            for value in values:
                update = value if isinstance(value, dict) else {name: value}
                trial = attempt({**best.config, **update})
                if trial.valid[METRIC] > best.valid[METRIC]:
                    best = trial
    return best, list(done.values())


def fit_config(family: str, graph: HeteroData, config: dict[str, Any], evaluator: Any,
               budget: Budget, seed: int, als_checkpoints: tuple[int, ...]) -> Trial:
    """Train one known configuration (no search); ALS keeps its best of ``als_checkpoints``."""
    if family == "als":
        return fit_als(train_matrix(graph), evaluator, config["factors"],
                       config["regularization"], config["alpha"], als_checkpoints, seed)
    return train_bpr(family, graph, config, budget, seed)


def fitted(trial: Trial, graph: HeteroData, evaluator: Any, budget: Budget, seed: int,
           log: Callable[[str], None]) -> tuple[Trial, bool | None]:
    """``(trial with a fitted model, reproduced)``: a selected trial taken from the record
    is trained again (seeded, so valid must come out as recorded; ``reproduced`` says
    whether it did, None when nothing was refit)."""
    if trial.model is not None:
        return trial, None
    again = fit_config(trial.family, graph, trial.config, evaluator, budget, seed,
                       tuple(sorted(budget.als_iterations)))  # ALS: the whole valid curve
    same = abs(again.valid[METRIC] - trial.valid[METRIC]) < 1e-6
    note = "as recorded" if same else f"RECORDED {trial.valid[METRIC]:.4f}"
    log(f"[{trial.family}] refit the recorded selection: valid {METRIC} "
        f"{again.valid[METRIC]:.4f} ({note})")
    return again, same


def _fmt(config: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in config.items())


# -- ALS --------------------------------------------------------------------------------------
class ALSScorer:
    """``score(users) -> Float[B, I]`` from ALS factors (dot products)."""

    def __init__(self, user_factors: np.ndarray, item_factors: np.ndarray) -> None:
        self.user = torch.from_numpy(np.ascontiguousarray(user_factors, dtype=np.float32))
        self.item = torch.from_numpy(np.ascontiguousarray(item_factors, dtype=np.float32))

    def score(self, users: Tensor) -> Tensor:
        return self.user[users.cpu()] @ self.item.t()


def train_matrix(graph: HeteroData) -> Any:
    """Binary user x item CSR (float32) of the TRAIN interactions (repeats counted once)."""
    import scipy.sparse as sp

    from gnnrec.gnn.data import UI

    ui = graph[UI]
    mask = ui.split == 0
    u, i = ui.edge_index[0, mask].numpy(), ui.edge_index[1, mask].numpy()
    shape = (int(graph["user"].num_nodes), int(graph["item"].num_nodes))
    mat = sp.csr_matrix((np.ones(u.size, dtype=np.float32), (u, i)), shape=shape)
    mat.data[:] = 1.0  # duplicates summed by the constructor: binarise again
    return mat


def fit_als(mat: Any, evaluator: Any, factors: int, reg: float, alpha: float,
            checkpoints: tuple[int, ...], seed: int) -> Trial:
    """Fit ALS for ``max(checkpoints)`` iterations; keep the best valid checkpoint.

    One BLAS thread, as implicit advises: besides speed it fixes the summation order, so a
    refit reproduces the search's figures exactly.
    """
    from implicit.cpu.als import AlternatingLeastSquares  # loads its BLAS before the limit
    from threadpoolctl import threadpool_limits

    model = AlternatingLeastSquares(factors=factors, regularization=reg, alpha=alpha,
                                    iterations=max(checkpoints), random_state=seed,
                                    num_threads=1, calculate_training_loss=False)
    curve: list[tuple[int, float]] = []
    keep: dict[str, Any] = {"metrics": None}

    def checkpoint(iteration: int, _elapsed: float, _loss: Any) -> None:
        it = iteration + 1
        if it not in checkpoints:
            return
        metrics = evaluator(ALSScorer(model.user_factors, model.item_factors).score)
        curve.append((it, metrics[METRIC]))
        if keep["metrics"] is None or metrics[METRIC] > keep["metrics"][METRIC]:
            keep.update(metrics=metrics, iteration=it,
                        factors=(model.user_factors.copy(), model.item_factors.copy()))

    t0 = time.perf_counter()
    with threadpool_limits(1, "blas"):
        model.fit(mat, show_progress=False, callback=checkpoint)
    config = {"factors": factors, "regularization": reg, "alpha": alpha,
              "iterations": keep["iteration"]}
    return Trial("als", config, keep["metrics"], keep["iteration"], max(checkpoints),
                 "best_checkpoint", time.perf_counter() - t0, curve, ALSScorer(*keep["factors"]))


def _outward(name: str, value: float, up: bool) -> float | None:
    """The next grid value beyond an edge (None where the range ends)."""
    if name == "factors":
        nxt = value * 2 if up else value // 2
        return nxt if 8 <= nxt <= 512 else None
    if name == "alpha":  # confidence 1 + (alpha - 1): below 1 would down-weight positives
        return value * 2 if up else None
    return value * 10 if up else value / 10  # regularization


def tune_als(graph: HeteroData, evaluator: Any, budget: Budget, seed: int,
             log: Callable[[str], None],
             recorded: dict[str, Trial] | None = None,
             on_trial: Callable[[Trial], Trial] = _as_is) -> tuple[Trial, list[Trial]]:
    """Full grid over factors x regularisation x alpha (iterations = best checkpoint); then,
    while the best value of a setting lies on the edge of its grid, the grid is extended
    outward along that setting (others at the best) as long as valid improves. Grid points
    found in ``recorded`` take their recorded result."""
    mat = train_matrix(graph)
    trials: dict[tuple[int, float, float], Trial] = {}
    checkpoints = tuple(sorted(budget.als_iterations))
    recorded = recorded or {}

    def attempt(factors: int, reg: float, alpha: float) -> Trial:
        key = (int(factors), float(reg), float(alpha))
        if key not in trials:
            cfg = {"factors": key[0], "regularization": key[1], "alpha": key[2]}
            trials[key] = (recorded.get(trial_key("als", cfg))
                           or on_trial(fit_als(mat, evaluator, *key, checkpoints, seed)))
            best = max(trials.values(), key=lambda t: t.valid[METRIC])
            for t in trials.values():  # keep only the best factors in memory
                if t is not best:
                    t.model = None
        return trials[key]

    for factors in budget.als_factors:
        for reg in budget.als_regularization:
            for alpha in budget.als_alpha:
                attempt(factors, reg, alpha)
            best = max(trials.values(), key=lambda t: t.valid[METRIC])
            log(f"  als              factors={factors} regularization={reg:g} done; best "
                f"valid {METRIC} {best.valid[METRIC]:.4f} {best.config}")
    grid = {"factors": budget.als_factors, "regularization": budget.als_regularization,
            "alpha": budget.als_alpha}
    extended = True
    while extended:
        extended = False
        best = max(trials.values(), key=lambda t: t.valid[METRIC])
        for name, values in grid.items():
            for edge, up in ((max(values), True), (min(values), False)):
                value = best.config[name]
                if value != edge or (nxt := _outward(name, value, up)) is None:
                    continue
                cfg = {k: best.config[k] for k in grid} | {name: nxt}
                trial = attempt(cfg["factors"], cfg["regularization"], cfg["alpha"])
                grid[name] = tuple(sorted({*values, nxt}))
                log(f"  als              edge of {name} grid: tried {name}={nxt:g}, valid "
                    f"{METRIC} {trial.valid[METRIC]:.4f}")
                if trial.valid[METRIC] > best.valid[METRIC]:
                    extended = True
                break
            if extended:
                break
    best = max(trials.values(), key=lambda t: t.valid[METRIC])
    return best, list(trials.values())


# -- the benchmark ------------------------------------------------------------------------------
def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.quality",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ml-100k", help="ml-100k, ml-1m or lastfm")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--png", type=Path, default=None, help="plot valid recall@20 per epoch")
    p.add_argument("--quick", action="store_true", help="tiny grids and 20 epochs")
    p.add_argument("--seed", type=int, default=0, help="split and model seed")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 is the most robust on a shared 2-core machine)")
    p.add_argument("--max-epochs", type=int, default=None, help="override the epoch budget")
    p.add_argument("--models", default=",".join(FAMILIES),
                   help=f"comma-separated subset of {','.join(FAMILIES)}")
    p.add_argument("--reuse", type=Path, action="append", default=[],
                   help="a full search, but every trial an earlier result JSON (or trial "
                        "log) of the same dataset, seed, split and epoch budget ran is taken "
                        "as recorded (marked so in the JSON) instead of trained again; "
                        "selected recorded trials are refit and checked against their "
                        "record. Repeatable")
    p.add_argument("--trial-log", type=Path, default=None,
                   help="append every trial to this JSON-lines file as it ends; an existing "
                        "log is reused (resumes a killed run)")
    p.add_argument("--refit", type=Path, default=None,
                   help="no tuning: refit the selected ALS and best graph model of this "
                        "earlier result JSON (same dataset and seed), read test again and "
                        "add the bootstrap intervals; checks the run reproduces")
    p.add_argument("--refit-split-seed", type=int, default=None, metavar="SEED",
                   help="with --refit: refit the same selections on the random split of this "
                        "other seed (no tuning on it): does the margin over ALS hold?")
    p.add_argument("--refit-set", action="append", default=[], metavar="KEY=VALUE",
                   help="with --refit: a what-if, the best graph model refit with this "
                        "setting changed (VALUE as JSON), e.g. embedding_dim=128; the "
                        "result says so and is not the benchmark's selection")
    add_graph_arguments(p)
    return p.parse_args(argv)


def refit(graph: HeteroData, previous: dict[str, Any], budget: Budget, seed: int,
          log: Callable[[str], None] = print,
          changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Refit the selected configurations of ``previous`` (ALS and the best graph model)
    without any search, evaluate them on test with per-user values, and compare with the
    test metrics ``previous`` recorded (training is seeded, so they should agree).

    ``changes`` (a what-if) overrides settings of the best graph model's configuration;
    its test metrics are then new, not a reproduction. Neither is a reproduction when
    ``seed`` is not ``previous``'s: the same configurations on another random split."""
    from gnnrec.gnn.evaluate import Evaluator

    valid_eval, test_eval = Evaluator(graph, "valid"), Evaluator(graph, "test")
    bg = previous["best_graph_model"]
    out: dict[str, Any] = {"models": {}}
    per_user: dict[str, dict[str, Tensor]] = {}
    other_split = seed != previous["seed"]
    for family in ("als", bg):
        config = previous["models"][family]["selected"]
        whatif = family == bg and bool(changes)
        if whatif:
            config = {**config, **(changes or {})}
        t0 = time.perf_counter()
        trial = fit_config(family, graph, config, valid_eval, budget, seed,
                           (config["iterations"],) if family == "als" else ())
        test, _, per_user[family] = test_eval.per_user(trial.model.score)
        before = previous["models"][family]["test"]
        out["models"][family] = {
            "selected": config, "valid": trial.valid, "test": test,
            "best_epoch": trial.best_epoch, "seconds": round(time.perf_counter() - t0, 1),
            "previous_test": {m: before[m] for m in ("recall@20", "ndcg@20")},
            "reproduced": None if whatif or other_split else all(
                abs(test[m] - before[m]) < 1e-6 for m in ("recall@20", "ndcg@20")),
        }
        label = "other split" if other_split else "what-if" if whatif else "refit"
        log(f"[{family}] {label} {config}: valid recall@20 "
            f"{trial.valid[METRIC]:.4f}, test recall@20 {test['recall@20']:.4f} (recorded "
            f"selection: {before['recall@20']:.4f})")
    tests = {f: m["test"] for f, m in out["models"].items()}
    out.update({"best_graph_model": bg, **versus_als(bg, tests, per_user, seed)})
    return out


def versus_als(family: str, test: dict[str, dict[str, float]],
               per_user: dict[str, dict[str, Tensor]], seed: int) -> dict[str, Any]:
    """``ratio_recall@20``, ``ratio_ndcg@20`` (``family``'s test metric over ALS's) and
    ``ratio_ci95``, their paired bootstrap intervals over the test users."""
    metrics = ("recall@20", "ndcg@20")
    return {**{f"ratio_{m}": test[family][m] / test["als"][m] for m in metrics},
            "ratio_ci95": {m: paired_bootstrap(per_user[family][m], per_user["als"][m],
                                               seed=seed) for m in metrics}}


def run_benchmark(graph: HeteroData, budget: Budget, *, families: tuple[str, ...] = FAMILIES,
                  seed: int = 0, log: Callable[[str], None] = print,
                  reuse: dict[str, Any] | None = None,
                  on_trial: Callable[[Trial], Trial] = _as_is) -> dict[str, Any]:
    """Tune every family on valid, then read test once per selected model.

    ``graph`` must carry a split. ``reuse``: an earlier result of the same data and epoch
    budget (:func:`check_reusable`) whose trials are taken as recorded instead of being
    trained again; the selected ones are refit. ``on_trial`` sees every trial as it ends
    (:class:`TrialLog`). Returns the result dict (without ``machine``).
    """
    from gnnrec.gnn.data import IT, UU
    from gnnrec.gnn.evaluate import Evaluator

    has = {"lightgcn_social": graph[UU].edge_index.numel() > 0,
           "lightgcn_tags": graph[IT].edge_index.numel() > 0}
    families = tuple(f for f in families if has.get(f, True))
    for family in set(families) & set(DERIVED):
        if "lightgcn" not in families:
            raise SystemExit(f"{family} starts from the tuned lightgcn: include lightgcn")
    valid_eval = Evaluator(graph, "valid")
    selected: dict[str, Trial] = {}
    trials: dict[str, list[Trial]] = {}
    seconds: dict[str, float] = {}
    reproduced: dict[str, bool | None] = {}
    for family in families:
        t0 = time.perf_counter()
        log(f"[{family}] tuning on valid {METRIC}")
        if family == "pop":
            from gnnrec.gnn.models import Popularity

            model = Popularity(graph).eval()
            metrics = valid_eval(model.score)
            best = Trial("pop", {}, metrics, 0, 0, "no_parameters", 0.0, [], model)
            found = [best]
        elif family == "als":
            best, found = tune_als(graph, valid_eval, budget, seed, log,
                                   recorded_trials(reuse, family), on_trial)
        else:
            stages = budget.stages.get(family, [])
            if family in DERIVED:
                base = {**selected[start_family(family, selected)].config, **DERIVED[family][1]}
            else:
                base = budget.base[family]
            best, found = coordinate_search(
                family, base, stages,
                lambda cfg, fam=family: on_trial(train_bpr(fam, graph, cfg, budget, seed)), log,
                recorded_trials(reuse, family))
        best, reproduced[family] = fitted(best, graph, valid_eval, budget, seed, log)
        selected[family], trials[family] = best, found
        seconds[family] = time.perf_counter() - t0
        log(f"[{family}] selected {best.config}: valid {METRIC} {best.valid[METRIC]:.4f} "
            f"({seconds[family]:.0f}s, {len(found)} trials)")

    # Test, read once per selected configuration, after all tuning.
    test_eval = Evaluator(graph, "test")
    test: dict[str, dict[str, float]] = {}
    per_user: dict[str, dict[str, Tensor]] = {}
    for family, best in selected.items():
        test[family], _, per_user[family] = test_eval.per_user(best.model.score)

    graph_fams = [f for f in GRAPH_FAMILIES if f in selected]
    result: dict[str, Any] = {
        "models": {f: {
            "label": LABELS[f], "selected": selected[f].config,
            "best_epoch": selected[f].best_epoch, "epochs_run": selected[f].epochs_run,
            "stopped": selected[f].stopped, "valid": selected[f].valid, "test": test[f],
            "valid_curve": selected[f].curve, "tuning_seconds": round(seconds[f], 1),
            "trials": [t.record() for t in trials[f]],
            **({"refit_reproduced_recorded_valid": reproduced[f]}
               if reproduced.get(f) is not None else {}),
        } for f in selected},
        "grids": grids(budget, families),
    }
    if graph_fams and "als" in selected:
        bg = max(graph_fams, key=lambda f: selected[f].valid[METRIC])
        als = test["als"]
        result.update({
            "best_graph_model": bg,
            "best_graph_selected_by": f"valid {METRIC} among {', '.join(graph_fams)}",
            "best_graph_recall@20": test[bg]["recall@20"],
            "best_graph_ndcg@20": test[bg]["ndcg@20"],
            "als_recall@20": als["recall@20"], "als_ndcg@20": als["ndcg@20"],
            **versus_als(bg, test, per_user, seed),
        })
        result["goal_ratios_ge_1.03"] = bool(result["ratio_recall@20"] >= 1.03
                                              and result["ratio_ndcg@20"] >= 1.03)
    for key, ours in VERSUS_START.items():
        if ours not in selected:
            continue
        theirs = start_family(ours, selected)
        result[key] = {
            "versus": theirs,
            **{f"test_{m}": [test[ours][m], test[theirs][m]] for m in ("recall@20", "ndcg@20")},
            **{f"ratio_{m}": test[ours][m] / test[theirs][m] for m in ("recall@20", "ndcg@20")},
            "valid_recall@20": [selected[ours].valid[METRIC], selected[theirs].valid[METRIC]],
        }
    return result


def paired_bootstrap(ours: Tensor, baseline: Tensor, *, resamples: int = 2000,
                     seed: int = 0) -> dict[str, float]:
    """95 % interval of ``mean(ours) / mean(baseline)`` over the test users.

    ``ours`` and ``baseline`` Float64[U] hold the two models' values for the same users in
    the same order; each resample draws U users with replacement and takes the ratio of
    the two means on that draw (paired: both models see the same users). The interval says
    how much of a test ratio is the particular sample of test users.
    """
    if ours.shape != baseline.shape or ours.numel() == 0:
        raise ValueError(f"need two equal non-empty per-user vectors, got {list(ours.shape)} "
                         f"and {list(baseline.shape)}")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, ours.numel(), (resamples, ours.numel()), generator=gen)
    ratios = ours[idx].mean(1) / baseline[idx].mean(1).clamp(min=1e-12)
    lo, hi = torch.quantile(ratios, torch.tensor([0.025, 0.975], dtype=ratios.dtype)).tolist()
    return {"low": lo, "high": hi, "resamples": resamples,
            "share_ge_1.03": float((ratios >= 1.03).double().mean())}


def grids(budget: Budget, families: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"epochs": {"max": budget.max_epochs, "eval_every": budget.eval_every,
                                      "patience_evaluations": budget.patience}}
    if "als" in families:
        out["als"] = {"factors": list(budget.als_factors),
                      "regularization": list(budget.als_regularization),
                      "alpha": list(budget.als_alpha),
                      "iterations_checkpoints": list(budget.als_iterations),
                      "search": "full grid, then extended outward while the best sits on an "
                                "edge and valid improves; iterations = best valid checkpoint"}
    for fam in ("mf", *GRAPH_FAMILIES):
        if fam in families:
            derived = DERIVED.get(fam)
            out[fam] = {"base": budget.base.get(fam) or (
                            f"selected {' or '.join(derived[0])} (best valid) + {derived[1]}"),
                        "stages": budget.stages.get(fam, []),
                        "search": "coordinate search in stage order on valid"}
    return out


def table(result: dict[str, Any]) -> str:
    head = f"{'model':18s} " + " ".join(f"{m:>12s}" for m in TABLE_METRICS)
    lines = [f"TEST metrics (selected on valid {METRIC})", head, "-" * len(head)]
    for r in result["models"].values():
        lines.append(f"{r['label']:18s} " + " ".join(f"{r['test'][m]:12.4f}"
                                                      for m in TABLE_METRICS))
    if "ratio_recall@20" in result:
        lines.append(
            f"best graph model (by valid): {result['best_graph_model']}; vs tuned ALS on test: "
            f"recall@20 x{result['ratio_recall@20']:.3f}, ndcg@20 x{result['ratio_ndcg@20']:.3f} "
            f"(goal >= 1.03: {'met' if result['goal_ratios_ge_1.03'] else 'MISSED'})")
        ci = result["ratio_ci95"]
        lines.append("  95% paired bootstrap over test users: " + ", ".join(
            f"{m} [{c['low']:.3f}, {c['high']:.3f}]" for m, c in ci.items()))
    for key, ours in VERSUS_START.items():
        if key in result:
            s = result[key]
            lines.append(f"{LABELS[ours]} vs {LABELS[s['versus']]} (test): recall@20 "
                         f"x{s['ratio_recall@20']:.3f}, ndcg@20 x{s['ratio_ndcg@20']:.3f}")
    return "\n".join(lines)


def plot(path: Path, result: dict[str, Any], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_als) = plt.subplots(1, 2, figsize=(11, 4.5),
                                     gridspec_kw={"width_ratios": [3, 1]})
    for fam, r in result["models"].items():
        curve = r["valid_curve"]
        if fam == "pop":
            ax.axhline(r["valid"][METRIC], color="grey", ls=":", label=r["label"])
        elif fam == "als":
            ax_als.plot([c[0] for c in curve], [c[1] for c in curve], "o-", label=r["label"])
            ax.axhline(r["valid"][METRIC], color="black", ls="--",
                       label=f"{r['label']} (best)")
        elif curve:
            ax.plot([c[0] for c in curve], [c[1] for c in curve], label=r["label"])
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"valid {METRIC}")
    ax.set_title(f"{title}: selected configs, valid {METRIC}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax_als.set_xlabel("ALS iterations")
    ax_als.set_title("ALS (selected)")
    ax_als.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def tagging_info(graph: HeteroData) -> dict[str, Any]:
    """How many tagging events the product's train-only view drops (held-out pairs)."""
    from gnnrec.gnn.data import IT, heldout_events, train_subgraph

    if "tag_events" not in graph:
        return {"tag_events": "catalogue tags, nothing to drop"}
    ev = graph.tag_events
    return {"tag_events": int(ev.size(1)),
            "dropped_heldout_events": int(heldout_events(graph, ev[0], ev[1]).sum()),
            "item_tag_pairs": [int(graph[IT].edge_index.size(1)),
                               int(train_subgraph(graph)[IT].edge_index.size(1))],
            "rule": "gnnrec.gnn.data.train_subgraph (without_heldout_tagging)"}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    torch.set_num_threads(args.threads)
    from gnnrec.gnn.split import apply_split

    families = tuple(f.strip() for f in args.models.split(",") if f.strip())
    if unknown := set(families) - set(FAMILIES):
        raise SystemExit(f"unknown models {sorted(unknown)}; choose from {FAMILIES}")
    budget = Budget.quick() if args.quick else Budget()
    if args.max_epochs:
        budget.max_epochs = args.max_epochs
    if (args.refit_set or args.refit_split_seed is not None) and args.refit is None:
        raise SystemExit("--refit-set and --refit-split-seed change a refit: give --refit "
                         "RESULT.json too")
    previous = json.loads(args.refit.read_text()) if args.refit is not None else {}
    if previous and (previous["dataset"], previous["seed"]) != (args.dataset, args.seed):
        raise SystemExit(f"{args.refit} is {previous['dataset']} seed {previous['seed']}, "
                         f"not {args.dataset} seed {args.seed}")
    if args.refit_split_seed is not None:
        args.seed = args.refit_split_seed  # the split's and the models' seed
    started, load_before = time.perf_counter(), loadavg()
    graph, info = product_graph(args.dataset, GraphSource.from_args(args))
    graph = apply_split(graph, "random", seed=args.seed)
    tag_info = tagging_info(graph)
    print(f"{args.dataset}: {info['num_users']} users, {info['num_items']} items, "
          f"{info['num_interactions']} interactions, {info['num_friendships']} friendships; "
          f"split {graph.split_info['counts']}")
    if previous:
        budget.max_epochs = previous["grids"]["epochs"]["max"]
        changes = dict(parse_model_arg(a) for a in args.refit_set)
        kind = ("quality_refit_other_split" if args.refit_split_seed is not None
                else "quality_refit_whatif" if changes else "quality_refit")
        result = {"benchmark": kind,
                  "dataset": args.dataset, "seed": args.seed, "from": str(args.refit),
                  "changes": changes, "tag_graph": TAG_GRAPH, "tag_events": tag_info,
                  **refit(graph, previous, budget, args.seed, changes=changes),
                  "total_seconds": round(time.perf_counter() - started, 1),
                  "loadavg_before": load_before, "loadavg_after": loadavg(),
                  "machine": machine()}
        for m, c in result["ratio_ci95"].items():
            print(f"{result['best_graph_model']} vs ALS on test, {m}: "
                  f"x{result[f'ratio_{m}']:.3f}, 95% paired bootstrap [{c['low']:.3f}, "
                  f"{c['high']:.3f}], share of resamples >= 1.03: {c['share_ge_1.03']:.2f}")
        if args.json:
            write_json(args.json, result)
            print(f"wrote {args.json}")
        return 0
    on_trial: Callable[[Trial], Trial] = _as_is
    if args.trial_log is not None:
        on_trial = TrialLog(args.trial_log, args.dataset, args.seed, graph.split_info, budget)
    sources = [p for p in args.reuse if p != args.trial_log]
    sources += [args.trial_log] if args.trial_log is not None else []
    earlier = [read_trial_log(p) if p.suffix == ".jsonl" else json.loads(p.read_text())
               for p in sources]
    for one in earlier:
        check_reusable(one, args.dataset, args.seed, graph.split_info, budget)
    reuse = merge_results(earlier) if earlier else None
    result = run_benchmark(graph, budget, families=families, seed=args.seed, reuse=reuse,
                           on_trial=on_trial)
    result = {
        "benchmark": "quality", "dataset": args.dataset, "quick": args.quick,
        **({"reused_trials_from": [str(p) for p in sources]} if reuse else {}),
        **{k: v for k, v in result.items() if k not in ("models", "grids")},
        "protocol": ("implicit feedback: every interaction is a positive (MovieLens ratings "
                     "and LastFM play counts ignored); one seeded per-user random 80/10/10 "
                     "split shared by all models; full ranking excluding train items (valid) "
                     "and train+valid items (test); tuning and early stopping on valid "
                     f"{METRIC} only; test read once per selected config after all tuning"),
        "graph": info, "split": graph.split_info, "seed": args.seed,
        "tag_graph": TAG_GRAPH, "tag_events": tag_info,
        "torch_threads": args.threads, "models": result["models"], "grids": result["grids"],
        "total_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_gb": round(peak_rss_gb(), 3),
        "loadavg_before": load_before, "loadavg_after": loadavg(),
        "machine": machine(),
    }
    print(table(result))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    if args.png:
        plot(args.png, result, f"{args.dataset}{' (quick)' if args.quick else ''}")
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
