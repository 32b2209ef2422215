"""Hyper-parameter tuning on Ray Tune: ``gnnrec tune``.

One call tunes one model family on a split graph file:

* the search space is the family's (:data:`SPACES`, plus the social and tag edge weights
  of LightGCN and XSimGCL where the graph has friendships or tags), with any key replaced
  by a YAML file (:func:`load_space`). A space maps a setting (a model constructor
  argument or a :class:`~gnnrec.gnn.train.TrainConfig` field) to a plain value or to one
  of ``{loguniform: [lo, hi]}``, ``{uniform: [lo, hi]}``, ``{randint: [lo, hi]}``
  (inclusive) or ``{choice: [...]}``; a choice of mappings sets several settings together
  (e.g. a loss with its number of negatives);
* ``trials`` configurations are tried: first the family's defaults (what ``gnnrec train
  --model M`` uses), so tuning never reports less than them, then the configurations
  earlier searches selected (:data:`PRIORS`), then random draws (seeded);
* every trial trains with the one training loop (:func:`gnnrec.gnn.train.train`), reports
  valid metrics at each evaluation (every ``eval_every`` epochs; each step of a solver
  model, iALS or EASE), and an ASHA scheduler stops the weak ones early at rungs of
  ``grace``, ``grace * 3``, ... evaluations up to ``max_evaluations``; a trial also stops
  on its own after ``patience`` evaluations without improvement;
* the experiment lives under ``storage_path`` (default ``OUT/tune``) and continues after an
  interruption with ``resume=True`` (``Tuner.restore``: finished trials are kept, a trial
  in progress starts again);
* at the end the best configuration (best valid ``metric`` at any evaluation) becomes
  ``OUT``, a normal run directory: the best trial's own run when it finished (a gradient
  model's trial trains into ``<experiment>/trial_runs/<trial id>``), else the configuration trained
  again (deterministic: it reproduces the trial; solver models are cheap to solve again),
  next to ``trials.csv`` / ``trials.json`` (one row per trial) and ``curves.png`` (valid
  ``metric`` per epoch of every trial).

Several families (:func:`tune_families`, ``gnnrec tune --model ials,ease,lightgcn`` or
``--model all``) are tuned one after another with the same settings, each into
``OUT/<family>``; the best on valid ``metric`` is linked as ``OUT/best`` and the
comparison written to ``families.csv`` / ``families.json``.

This module and :mod:`gnnrec.gnn.distributed` are the only training modules that import
``ray``; ``address`` joins a Ray cluster as ``gnnrec train --address`` does.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import ray
from ray import tune
from torch_geometric.data import HeteroData

from gnnrec.errors import GnnrecError
from gnnrec.gnn.data import IT, UU
from gnnrec.gnn.graph_file import load_graph
from gnnrec.gnn.run import Run, build_model, model_class, write_json
from gnnrec.gnn.train import TrainConfig, seed_everything, train

TRIALS_CSV, TRIALS_JSON, CURVES_PNG = "trials.csv", "trials.json", "curves.png"
FAMILIES_CSV, FAMILIES_JSON, BEST_LINK = "families.csv", "families.json", "best"
# A gradient model's trial trains into EXPERIMENT/TRIAL_RUNS/<trial id>: straight in the
# storage path, not in Ray's trial folder, whose copy to the storage path Ray may skip when
# a file changes under it (then the best trial's run was not there and had to be retrained).
TRIAL_RUNS = "trial_runs"
_TRAIN_KEYS = {f.name for f in fields(TrainConfig)}
_SOFTMAX_16 = {"loss": "softmax", "num_negatives": 16}
_SOFTMAX_64 = {"loss": "softmax", "num_negatives": 64}   # LightGCN's default
_BPR_1 = {"loss": "bpr", "num_negatives": 1}
# Full softmax (every item in the denominator; the one negative enters only the L2 term).
_FULL = {"loss": "full", "num_negatives": 1, "temperature": 1.0}

# Search spaces per family (see the module docstring for the format). Rates and
# regularisation cover orders of magnitude on a log scale; iALS's factors go up to 512. The
# graph models stop at 128 dimensions: 256 cost 4-8x the epoch time on CPU and did not beat
# 128 in earlier searches (ML-100K: 64 best; LastFM: 128 best, 256 below it).
SPACES: dict[str, dict[str, Any]] = {
    "lightgcn": {
        "embedding_dim": {"choice": [64, 128]},
        "num_layers": {"choice": [1, 2, 3, 4]},
        "lr": {"loguniform": [5e-4, 2e-2]},
        "l2": {"loguniform": [1e-5, 3e-2]},
        "objective": {"choice": [_SOFTMAX_16, _SOFTMAX_64, _FULL]},
    },
    "xsimgcl": {
        "embedding_dim": {"choice": [64, 128]},
        "num_layers": {"choice": [2, 3]},
        "lr": {"loguniform": [5e-4, 2e-2]},
        "l2": {"loguniform": [1e-6, 1e-2]},
        "eps": {"choice": [0.05, 0.1, 0.2]},
        "cl_weight": {"loguniform": [0.01, 1.0]},
        "cl_temperature": {"choice": [0.1, 0.2, 0.5]},
        "objective": {"choice": [_BPR_1, _SOFTMAX_16]},
    },
    "graphsage": {
        "embedding_dim": {"choice": [64, 128]},
        "num_layers": {"choice": [1, 2, 3]},
        "lr": {"loguniform": [5e-4, 2e-2]},
        "l2": {"loguniform": [1e-6, 1e-2]},
        "id_dropout": {"choice": [0.0, 0.2, 0.5]},
    },
    "mf": {
        "embedding_dim": {"choice": [64, 128, 256]},
        "lr": {"loguniform": [5e-4, 2e-2]},
        "l2": {"loguniform": [1e-6, 1e-2]},
    },
    "ials": {
        "factors": {"choice": [32, 64, 128, 256, 512]},
        "regularization": {"loguniform": [1e-3, 1e3]},
        "alpha": {"loguniform": [0.1, 100.0]},
    },
    "ease": {
        "regularization": {"loguniform": [1.0, 1e5]},
    },
    "pop": {},
}
# Extra dimensions where the graph has the edges they weigh: (space entry, graph needs).
_EDGE_OPTIONS = {"social_weight": ({"choice": [0.0, 0.25, 0.5, 1.0]}, UU),
                 "tag_weight": ({"choice": [0.0, 0.2, 0.5, 1.0]}, IT)}
_EDGE_FAMILIES = ("lightgcn", "xsimgcl")
# Where each search starts after the defaults: configurations earlier, longer searches
# selected on valid (experiments/README.md, "Recommendation quality"), so that a small
# trial budget starts from the known good regions of every family, baselines included.
# A key the space lacks (e.g. social_weight on a graph without friendships) is dropped.
PRIORS: dict[str, list[dict[str, Any]]] = {
    "lightgcn": [{"embedding_dim": 64, "num_layers": 3, "lr": 1e-2, "l2": 1e-2,
                  "objective": _FULL},   # ML-100K, full softmax trials on valid (issue 19)
                 # LastFM: the first round's valid selection (4 layers, friends 1, tags 0.5)
                 # with the full softmax at the ML-100K prior's lr and l2 (with its own l2,
                 # 0.0013, the full softmax overfit LastFM's valid from epoch 10). Issue
                 # 19's second round; it replaced issue 12's 128-d lr 1e-3 prior, which
                 # ASHA cut at its first rung.
                 {"embedding_dim": 64, "num_layers": 4, "lr": 1e-2, "l2": 1e-2,
                  "social_weight": 1.0, "tag_weight": 0.5, "objective": _FULL}],
    "ials": [{"factors": 64, "regularization": 10.0, "alpha": 1.0},       # ML-100K grid
             {"factors": 512, "regularization": 100.0, "alpha": 40.0}],   # LastFM grid
}
_DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")


class TuneError(GnnrecError):
    """A tuning experiment that cannot start, resume or finish."""


@dataclass
class TuneSettings:
    """What to search and how long (resources live in :class:`TuneResources`).

    ``trials``: configurations drawn (the budget); ``max_evaluations``: valid evaluations a
    trial may reach (the ASHA ``max_t``), each ``eval_every`` epochs apart (solver models
    evaluate every step); ``grace``: evaluations before ASHA may stop a trial;
    ``reduction_factor``: ASHA keeps the top 1/rf at each rung; ``patience``: a trial's own
    early stopping; ``seed``: the search's and every trial's seed.
    """

    trials: int = 16
    max_evaluations: int = 40
    eval_every: int = 5
    grace: int = 4
    reduction_factor: int = 3
    patience: int = 6
    metric: str = "recall@20"
    seed: int = 0

    def validate(self) -> None:
        for name in ("trials", "max_evaluations", "eval_every", "grace", "patience"):
            if getattr(self, name) < 1:
                raise TuneError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.reduction_factor < 2:
            raise TuneError(f"reduction_factor must be at least 2, got {self.reduction_factor}")


@dataclass(frozen=True)
class TuneResources:
    """Where trials run: CPUs (also torch / solver threads) and GPUs per trial, trials at
    once (default: as many as the cluster's CPUs allow), the Ray cluster (``address``,
    default ``RAY_ADDRESS``, else a local Ray) and the experiment folder."""

    cpus_per_trial: int = 1
    gpus_per_trial: float = 0.0
    concurrency: int | None = None
    address: str | None = None
    storage_path: str | None = None


def default_config(family: str) -> dict[str, Any]:
    """The settings ``gnnrec train --model family`` uses without flags: the model's
    constructor defaults and its ``train_defaults`` over :class:`TrainConfig`'s (a name
    both take is the model's, as in :func:`trial_settings`)."""
    import inspect

    cls = model_class(family)
    params = inspect.signature(cls.__init__).parameters
    model = {k: p.default for k, p in params.items()
             if k not in ("self", "sizes") and p.default is not inspect.Parameter.empty}
    return {**TrainConfig().to_dict(), **getattr(cls, "train_defaults", {}), **model}


def search_space(family: str, graph: HeteroData | None = None,
                 overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The family's space (module docstring), edge weights where ``graph`` has the edges,
    then ``overrides`` (a key set to ``None`` is removed)."""
    if family not in SPACES:
        raise TuneError(f"no search space for model {family!r}; known: {', '.join(SPACES)}")
    space = dict(SPACES[family])
    if family in _EDGE_FAMILIES and graph is not None:
        for name, (spec, edge_type) in _EDGE_OPTIONS.items():
            if edge_type in graph.edge_types and graph[edge_type].edge_index.size(1) > 0:
                space[name] = spec
    for key, value in (overrides or {}).items():
        if value is None:
            space.pop(key, None)
        else:
            space[key] = value
    for key, value in space.items():
        check_spec(key, value)
    return space


def check_spec(key: str, spec: Any) -> None:
    """Refuse a malformed space entry, naming it."""
    if not isinstance(spec, Mapping):
        return  # a constant
    if len(spec) != 1 or next(iter(spec)) not in _DISTRIBUTIONS:
        raise TuneError(f"search space {key!r}: expected a value or one of "
                        f"{', '.join(_DISTRIBUTIONS)} as the only key, got {dict(spec)}")
    kind, args = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise TuneError(f"search space {key!r}: choice needs a non-empty list")
    elif not (isinstance(args, list) and len(args) == 2 and args[0] <= args[1]
              and (kind != "loguniform" or args[0] > 0)):
        raise TuneError(f"search space {key!r}: {kind} needs [low, high] with low <= high"
                        + (" and low > 0" if kind == "loguniform" else ""))


def load_space(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML file mapping settings to values or distributions (overrides of the space)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TuneError(f"cannot read the search space {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise TuneError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def to_ray_space(space: Mapping[str, Any]) -> dict[str, Any]:
    """A space (module docstring) as Ray Tune's domains."""
    return {key: _to_tune(spec) for key, spec in space.items()}


def _to_tune(spec: Any) -> Any:
    if not isinstance(spec, Mapping):
        return spec
    kind, args = next(iter(spec.items()))
    if kind == "loguniform":
        return tune.loguniform(args[0], args[1])
    if kind == "uniform":
        return tune.uniform(args[0], args[1])
    if kind == "randint":
        return tune.randint(args[0], args[1] + 1)
    return tune.choice([_encode(c) for c in args])


def _encode(value: Any) -> Any:
    """A choice that sets several settings (a mapping) as Ray sees it: its JSON text. Ray
    merges a mapping in a starting point into the space's entry, which a choice refuses."""
    return json.dumps(dict(value), sort_keys=True) if isinstance(value, Mapping) else value


def _decode(value: Any) -> Any:
    """The inverse of :func:`_encode`."""
    return json.loads(value) if isinstance(value, str) and value.startswith("{") else value


def trial_settings(family: str, sampled: Mapping[str, Any],
                   settings: TuneSettings) -> tuple[dict[str, Any], TrainConfig]:
    """``(model arguments, TrainConfig)`` of one trial: the family's defaults, then the
    sampled values (a mapping value sets several settings), then the tuning budget."""
    flat: dict[str, Any] = {}
    for key, value in sampled.items():
        value = _decode(value)
        if isinstance(value, Mapping):
            flat.update(value)
        else:
            flat[key] = value.item() if hasattr(value, "item") else value
    cls = model_class(family)
    # a name both the model and TrainConfig take (EASE's solve ``precision``) is the model's
    model_keys = _constructor_args(family)
    base = {**TrainConfig().to_dict(), **getattr(cls, "train_defaults", {})}
    train_args = {k: v for k, v in {**base, **flat}.items()
                  if k in _TRAIN_KEYS and k not in model_keys}
    train_args.update(epochs=settings.max_evaluations * settings.eval_every,
                      eval_every=settings.eval_every, patience=settings.patience,
                      metric=settings.metric, seed=settings.seed)
    model_args = {k: v for k, v in flat.items() if k in model_keys or k not in _TRAIN_KEYS}
    return model_args, TrainConfig(**train_args)


def _trial(config: dict[str, Any], *, family: str, settings: TuneSettings, graph: HeteroData,
           threads: int, runs: str | None) -> None:
    """One trial (runs in a Ray worker): train and report every valid evaluation; with
    ``runs`` (a folder) into the run directory ``runs/<trial id>``."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    model_args, train_config = trial_settings(family, config, settings)
    if "num_threads" in _constructor_args(family):
        model_args.setdefault("num_threads", threads)
    seed_everything(train_config.seed, train_config.deterministic)
    model = build_model(family, graph, model_args)
    state = {"best": -math.inf, "bad": 0, "t0": time.perf_counter()}

    def report(epoch: int, metrics: dict[str, float]) -> None:
        value = metrics[settings.metric]
        if value > state["best"]:
            state["best"], state["bad"] = value, 0
        else:
            state["bad"] += 1
        tune.report({**metrics, "epoch": epoch, "best": state["best"], "bad": state["bad"],
                     "seconds": time.perf_counter() - state["t0"]})

    run = None
    if runs is not None:
        run = Run.create(Path(runs) / tune.get_context().get_trial_id(),
                         model_name=family, model=model, graph=graph, graph_path=None,
                         train_config=train_config.to_dict(), overwrite=True)
    with threadpool_limits(threads):
        train(model, graph, train_config, run=run, progress=False, report=report)


def _constructor_args(family: str) -> set[str]:
    import inspect

    return set(inspect.signature(model_class(family).__init__).parameters)


def tune_model(family: str, graph_path: str | os.PathLike[str], out: str | os.PathLike[str],
               settings: TuneSettings | None = None, resources: TuneResources | None = None, *,
               space: Mapping[str, Any] | None = None, resume: bool = False,
               overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Tune ``family`` on the split graph at ``graph_path``; the best run goes to ``out``.

    Returns a summary (best configuration and valid metrics, trial counts, seconds, the
    files written). ``space`` overrides entries of the family's space.
    """
    from gnnrec.gnn.distributed import init_ray
    from gnnrec.gnn.split import ensure_split

    settings = settings or TuneSettings()
    resources = resources or TuneResources()
    settings.validate()
    out = Path(out).resolve()
    experiment = experiment_dir(family, out, resources)
    storage, name = experiment.parent, experiment.name
    if experiment.exists() and not resume:
        if not overwrite:
            raise TuneError(f"{experiment} holds a tuning experiment: pass --resume to "
                            "continue it or --overwrite to start again")
        shutil.rmtree(experiment)
    if resume and not tune.Tuner.can_restore(str(experiment)):
        raise TuneError(f"nothing to resume in {experiment}")
    graph, applied = ensure_split(load_graph(graph_path))
    if applied:
        raise TuneError(f"{graph_path} has no split: make one with `gnnrec split` first "
                        "(tuning selects on valid)")
    param_space = to_ray_space(search_space(family, graph, space))
    _start_ray(init_ray, resources.address)
    cpus = max(1, int(resources.cpus_per_trial))
    concurrency = resources.concurrency or max(1, int(ray.cluster_resources().get("CPU", 1))
                                               // cpus)
    keep_run = bool(getattr(model_class(family), "trainable", True))
    trainable = tune.with_resources(
        tune.with_parameters(_trial, family=family, settings=settings, graph=graph,
                             threads=cpus,
                             runs=str(experiment / TRIAL_RUNS) if keep_run else None),
        {"cpu": cpus, "gpu": resources.gpus_per_trial})
    started = time.perf_counter()
    if resume:
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True,
                                   restart_errored=True, param_space=param_space)
    else:
        points = starting_points(family, param_space)
        scheduler = tune.schedulers.ASHAScheduler(
            # max_t one past the last evaluation: the trial's own epoch budget ends it, so its
            # run directory is finished (ASHA stopping at max_t would interrupt the last
            # report); the rungs below max_evaluations are the same
            time_attr="training_iteration", max_t=settings.max_evaluations + 1,
            grace_period=min(settings.grace, settings.max_evaluations),
            reduction_factor=settings.reduction_factor)
        search = tune.search.BasicVariantGenerator(
            points_to_evaluate=points[:settings.trials] or None, random_state=settings.seed)
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(metric=settings.metric, mode="max",
                                        num_samples=settings.trials, scheduler=scheduler,
                                        search_alg=search, max_concurrent_trials=concurrency,
                                        reuse_actors=True),
            run_config=tune.RunConfig(name=name, storage_path=str(storage),
                                      verbose=1 if progress else 0,
                                      failure_config=tune.FailureConfig(max_failures=1)))
    results = tuner.fit()
    seconds = time.perf_counter() - started
    table = trial_table(results, settings)
    errors = [r for r in table if r["status"] == "ERROR"]
    done = [r for r in table if r["best_" + settings.metric] is not None]
    if not done:
        raise TuneError(f"no trial finished an evaluation ({len(errors)} errors): see "
                        f"{experiment}")
    # ties go to the earliest trial, so a resumed experiment selects the same one
    best = max(sorted(done, key=lambda r: str(r["trial_id"])),
               key=lambda r: r["best_" + settings.metric])
    out.mkdir(parents=True, exist_ok=True)
    write_table(table, out)
    plot_curves(results, settings, out / CURVES_PNG, best["trial_id"])
    model_args, train_config = trial_settings(family, best["config"], settings)
    refit = (keep_run and take_trial_run(experiment / TRIAL_RUNS / str(best["trial_id"]), out,
                                           graph_path)) or \
        refit_run(family, graph, graph_path, model_args, train_config, out, progress)
    summary = {
        "family": family, "graph": str(Path(graph_path).resolve()), "trials": len(table),
        "errors": len(errors), "settings": asdict(settings),
        "space": search_space(family, graph, space), "best_trial": best["trial_id"],
        "best_config": {"model": model_args, "train": train_config.to_dict()},
        "best_valid_in_tuning": best["best_" + settings.metric],
        "refit_valid": refit, "tune_seconds": round(seconds, 1),
        "experiment": str(experiment), "run": str(out),
        "files": [str(out / n) for n in (TRIALS_CSV, TRIALS_JSON, CURVES_PNG)],
    }
    Run.open(out).update_meta(tuning=summary)
    return summary


def experiment_dir(family: str, out: str | os.PathLike[str],
                   resources: TuneResources) -> Path:
    """Where the Ray Tune experiment of ``family`` tuned into the run directory ``out``
    lives: ``<storage path>/<family>`` (default storage path ``out/tune``)."""
    return Path(resources.storage_path or Path(out) / "tune").resolve() / family


def parse_families(value: str) -> list[str]:
    """``"lightgcn"``, ``"ials,ease,lightgcn"`` or ``"all"`` (every family with a space) as
    family names, in the order given, each once."""
    names = list(SPACES) if value.strip() == "all" else \
        [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in SPACES]
    if unknown or not names:
        raise TuneError(f"unknown model {', '.join(unknown) or repr(value)}: give one of "
                        f"{', '.join(SPACES)}, several separated by commas, or all")
    return list(dict.fromkeys(names))


def family_spaces(families: list[str], data: Mapping[str, Any] | None
                  ) -> dict[str, Mapping[str, Any] | None]:
    """Each family's overrides of its space from a ``--space`` file: the file itself for
    one family; for several, a mapping of family names to their overrides."""
    if data is None:
        return dict.fromkeys(families)
    if len(families) == 1:
        return {families[0]: data}
    stray = [k for k in data if k not in families]
    if stray or not all(isinstance(v, Mapping) or v is None for v in data.values()):
        what = ", ".join(map(str, stray)) or "a value"
        raise TuneError(f"with several models the search-space file maps each model to its "
                        f"overrides (e.g. `ials: {{factors: 256}}`); {what} is not one of "
                        f"{', '.join(families)} with a mapping")
    return {f: data.get(f) for f in families}


def tune_families(families: list[str], graph_path: str | os.PathLike[str],
                  out: str | os.PathLike[str], settings: TuneSettings | None = None,
                  resources: TuneResources | None = None, *,
                  spaces: Mapping[str, Mapping[str, Any] | None] | None = None,
                  resume: bool = False, overwrite: bool = False, progress: bool = True,
                  tuned: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Tune every family of ``families`` with the same ``settings`` (the same budget) into
    ``out/<family>`` (:func:`tune_model`), then select the best on valid: ``out/best`` links
    to its run directory and ``families.csv`` / ``families.json`` compare them.

    Each family's figure is its run directory's own valid ``metric`` (the run ``out/best``
    serves); ties go to the family named first. With ``resume``, a family whose experiment
    was not started yet is tuned from the beginning. ``tuned(summary)`` is called as each
    family finishes. Returns the selection (the families' summaries under ``families``)."""
    import pandas as pd

    settings = settings or TuneSettings()
    resources = resources or TuneResources()
    settings.validate()
    out = Path(out).resolve()
    metric = settings.metric
    rows, summaries = [], {}
    for family in families:
        started = resume and tune.Tuner.can_restore(
            str(experiment_dir(family, out / family, resources)))
        summary = tune_model(family, graph_path, out / family, settings, resources,
                             space=(spaces or {}).get(family), resume=started,
                             overwrite=overwrite, progress=progress)
        summaries[family] = summary
        if tuned is not None:
            tuned(summary)
        rows.append({"family": family, "valid_" + metric: summary["refit_valid"].get(metric),
                     "best_valid_in_tuning": summary["best_valid_in_tuning"],
                     "trials": summary["trials"], "errors": summary["errors"],
                     "tune_seconds": summary["tune_seconds"], "run": family})
    scored = [r for r in rows if r["valid_" + metric] is not None]
    if not scored:
        raise TuneError(f"no family's run reports valid {metric}")
    best = max(scored, key=lambda r: r["valid_" + metric])  # max keeps the first of ties
    link = out / BEST_LINK
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise TuneError(f"{link} exists and is not the link this command writes")
    link.symlink_to(best["family"], target_is_directory=True)  # relative: OUT moves whole
    selection = {"metric": metric, "best": best["family"], "run": str(link),
                 "graph": str(Path(graph_path).resolve()), "settings": asdict(settings),
                 "table": rows, "families": summaries}
    write_json(out / FAMILIES_JSON, selection)
    pd.DataFrame(rows).to_csv(out / FAMILIES_CSV, index=False)
    return selection


def describe_families(selection: Mapping[str, Any]) -> str:
    """The families' comparison as a few terminal lines."""
    metric = selection["metric"]
    lines = [f"{'model':<10} {'valid ' + metric:>16} {'trials':>7} {'seconds':>8}"]
    for r in selection["table"]:
        value = r["valid_" + metric]
        shown = "-" if value is None else f"{value:.4f}"
        mark = "  <- best" if r["family"] == selection["best"] else ""
        lines.append(f"{r['family']:<10} {shown:>16} {r['trials']:>7} "
                     f"{r['tune_seconds']:>8.0f}{mark}")
    lines.append(f"best on valid: {selection['best']}; its run: {selection['run']} "
                 f"(test it once with: gnnrec evaluate {selection['run']} --split test)")
    return "\n".join(lines)


def starting_points(family: str, param_space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The first trials of a search over ``param_space`` (Ray's domains): the family's
    defaults, then each of its :data:`PRIORS` (the values the space can take; the others
    keep the defaults; a prior that adds nothing to them is not a trial of its own)."""
    defaults = {k: _default_point(family, k, v) for k, v in param_space.items()}
    points = [defaults] if defaults else []
    for prior in PRIORS.get(family, []):
        point = {**defaults, **{k: _encode(v) for k, v in prior.items()
                                if k in param_space and _in_space(param_space[k], v)}}
        if point not in points:
            points.append(point)
    return points


def _start_ray(init_ray: Any, address: str | None, attempts: int = 3) -> None:
    """``init_ray``, again after a local start that timed out (Ray waits 30 s for its
    raylet, which a loaded machine can exceed); a cluster address is not retried."""
    for attempt in range(attempts):
        try:
            init_ray(address)
            return
        except Exception as exc:  # Ray raises a bare Exception for this
            if address or "timed out during startup" not in str(exc) or attempt == attempts - 1:
                raise
            ray.shutdown()


def _in_space(space_value: Any, value: Any) -> bool:
    """Whether ``value`` is one the space entry can take (a constant: that value)."""
    if not isinstance(space_value, tune.search.sample.Domain):
        return bool(space_value == value)
    if isinstance(space_value, tune.search.sample.Categorical):
        return _encode(value) in space_value.categories
    if isinstance(space_value, tune.search.sample.Integer):  # upper bound exclusive
        return space_value.lower <= value < space_value.upper
    return bool(space_value.lower <= value <= space_value.upper)


def _default_point(family: str, key: str, space_value: Any) -> Any:
    """The family's default for a searched key (the first trial), as a value of the space."""
    if not isinstance(space_value, tune.search.sample.Domain):
        return space_value
    defaults = default_config(family)
    if key == "objective":
        return next((c for c in space_value.categories
                     if all(defaults.get(k) == v for k, v in _decode(c).items())),
                    space_value.categories[0])
    value = defaults.get(key)
    if isinstance(space_value, tune.search.sample.Categorical):
        return value if value in space_value.categories else space_value.categories[0]
    return value if value is not None else space_value.sample()


def trial_table(results: Any, settings: TuneSettings) -> list[dict[str, Any]]:
    """One row per trial: id, status, configuration, best and last valid metrics, epochs,
    evaluations, why it stopped and seconds."""
    rows = []
    metric = settings.metric
    for result in results:
        hist = result.metrics_dataframe
        rows_hist = [] if hist is None else hist.to_dict("records")
        trial_id = (result.metrics or {}).get("trial_id") or Path(str(result.path)).name
        row: dict[str, Any] = {"trial_id": trial_id, "path": str(result.path),
                               "status": "ERROR" if result.error else "TERMINATED",
                               "config": _plain(result.config)}
        if rows_hist:
            best = max(rows_hist, key=lambda r: r[metric])
            last = rows_hist[-1]
            stopped = ("patience" if last["bad"] >= settings.patience else
                       "max_evaluations" if len(rows_hist) >= settings.max_evaluations
                       else "asha" if not result.error else "error")
            row.update({f"best_{metric}": best[metric], "best_epoch": int(best["epoch"]),
                        **{f"best_{k}": best[k] for k in ("ndcg@20", "recall@10")
                           if k in best and k != metric},
                        "evaluations": len(rows_hist), "last_epoch": int(last["epoch"]),
                        "stopped": stopped, "seconds": round(float(last["seconds"]), 1),
                        "curve": [[int(r["epoch"]), float(r[metric])] for r in rows_hist]})
        else:
            row.update({f"best_{metric}": None, "evaluations": 0, "stopped": "error"})
        rows.append(row)
    return rows


def _plain(value: Any) -> Any:
    value = _decode(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def write_table(table: list[dict[str, Any]], out: Path) -> None:
    """``trials.json`` (every field) and ``trials.csv`` (one column per setting)."""
    import pandas as pd

    write_json(out / TRIALS_JSON, table)
    flat = []
    for row in table:
        config = {}
        for key, value in row["config"].items():
            if isinstance(value, Mapping):
                config.update(value)
            else:
                config[key] = value
        flat.append({k: v for k, v in row.items() if k not in ("config", "curve", "path")}
                    | config)
    pd.DataFrame(flat).to_csv(out / TRIALS_CSV, index=False)


def plot_curves(results: Any, settings: TuneSettings, path: Path, best_trial: str) -> None:
    """Valid ``metric`` per epoch of every trial; the best one drawn thick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in trial_table(results, settings):
        if not row.get("curve"):
            continue
        epochs, values = zip(*row["curve"], strict=True)
        best = row["trial_id"] == best_trial
        ax.plot(epochs, values, lw=2.5 if best else 0.8, alpha=1.0 if best else 0.6,
                color="C3" if best else "C0", label="best" if best else None)
    ax.set_xlabel("epoch (solver models: step)")
    ax.set_ylabel(f"valid {settings.metric}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def take_trial_run(trial_run: Path, out: Path, graph_path: str | os.PathLike[str]
                   ) -> dict[str, float] | None:
    """Copy a trial's finished run directory to ``out`` (its valid metrics), or None when
    it did not finish (ASHA stopped it, or it failed): then the caller trains it again."""
    try:
        meta = Run.open(trial_run).meta()
    except GnnrecError:
        return None
    if meta.get("status") != "finished":
        return None
    out.mkdir(parents=True, exist_ok=True)
    for path in trial_run.iterdir():
        if path.is_file():
            shutil.copy2(path, out / path.name)
    Run.open(out).update_meta(graph={**meta["graph"], "path": str(Path(graph_path).resolve())},
                              copied_from_trial=str(trial_run))
    return dict(meta["best_valid"])


def refit_run(family: str, graph: HeteroData, graph_path: str | os.PathLike[str],
              model_args: dict[str, Any], config: TrainConfig, out: Path,
              progress: bool) -> dict[str, float]:
    """Train the selected configuration into the run directory ``out`` (valid metrics)."""
    seed_everything(config.seed, config.deterministic)
    model = build_model(family, graph, model_args)
    run = Run.create(out, model_name=family, model=model, graph=graph, graph_path=graph_path,
                     train_config=config.to_dict(), overwrite=True)
    return train(model, graph, config, run=run, progress=progress).best_valid


def describe(summary: Mapping[str, Any]) -> str:
    """One line for the terminal."""
    metric = summary["settings"]["metric"]
    return (f"{summary['family']}: {summary['trials']} trials in {summary['tune_seconds']:.0f} s, "
            f"best valid {metric} {summary['best_valid_in_tuning']:.4f} "
            f"(refit {summary['refit_valid'].get(metric, float('nan')):.4f}) with "
            f"{json.dumps(summary['best_config']['model'])}; run in {summary['run']}")
