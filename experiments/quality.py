"""Recommendation quality on the product path: every family tuned by ``gnnrec tune`` with the
same budget, the best of each refit on three splits, test read once.

    python -m experiments.quality --dataset ml-100k --out runs/quality \\
        --json experiments/results/quality_ml-100k.json \\
        --png experiments/results/quality_ml-100k.png

Protocol (DESIGN.md, "Evaluation protocol"):

1. The graph comes through the product: ingest into Neo4j, ``gnnrec export``
   (:func:`experiments.graphs.product_graph`, cached by content), then the per-user random
   80/10/10 split of ``gnnrec split --seed S`` for S = 0, 1, 2 (files under ``OUT/data``).
   Implicit feedback: every interaction is a positive (ratings and play counts are not
   used: iALS's confidence is binary).
2. Every family in ``FAMILIES`` (popularity aside, which has nothing to tune) is tuned on
   seed 0 by :func:`gnnrec.gnn.tune.tune_model` (what ``gnnrec tune`` runs) with the SAME
   budget (:class:`Budget`: trials, evaluations, ASHA rungs, patience): random search over
   the family's space in ``gnnrec.gnn.tune.SPACES`` (the defaults first), ASHA on valid
   recall@20, the best configuration refit into ``OUT/<dataset>/seed0/<family>`` (a normal
   run directory). The experiments resume where they stopped (``Tuner.restore``).
3. Selection on seed 0's VALID only: the best graph model is the graph family with the best
   valid recall@20. Then every family's selected configuration (no new search) is trained
   on seeds 1 and 2 (``OUT/<dataset>/seed<S>/<family>``), early stopping on that split's
   valid. A rerun reuses every finished run whose configuration and split match, so a
   finished tuning is never searched again (``--families`` adds the missing fits).
4. Test is read once per run, after all tuning and selection. Reported per seed and as the
   mean over the three seeds, for every graph family: its test recall@20 and NDCG@20 over
   the better of tuned iALS and tuned EASE (per seed: the better on that seed's test; for
   the mean: the better mean), with 95 % paired bootstrap intervals over the test users,
   per seed (:func:`paired_bootstrap`) and for the ratio of the means over the seeds
   (users resampled within each seed). The goal is the best graph model's ratio of means.

``--quick`` shrinks the budget for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from experiments.common import loadavg, machine, peak_rss_gb, write_json
from experiments.graphs import GraphSource, add_graph_arguments, product_graph
from gnnrec.gnn.tune import TuneResources, TuneSettings

METRIC = "recall@20"
TABLE_METRICS = ("recall@20", "ndcg@20", "precision@20", "hit@20", "mrr@20", "coverage@20",
                 "novelty@20", "recall@10", "ndcg@10")
GOAL_METRICS = ("recall@20", "ndcg@20")
GRAPH_FAMILIES = ("lightgcn", "xsimgcl", "graphsage")
BASELINES = ("ials", "ease")
FAMILIES = ("pop", *BASELINES, *GRAPH_FAMILIES)
LABELS = {"pop": "Popularity", "ials": "iALS (implicit)", "ease": "EASE",
          "lightgcn": "LightGCN", "xsimgcl": "XSimGCL", "graphsage": "GraphSAGE"}
SEEDS = (0, 1, 2)
GOAL = 1.03
# Per-dataset changes to the families' search spaces (recorded in the result). LastFM's
# EASE solves 15k x 15k in float32: half the memory of float64 (1.8 GiB instead of
# 2.7 per trial, two trials at once on a shared 24 GiB machine) and about twice as fast.
SPACE_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "lastfm": {"ease": {"precision": "float32"}},
}


@dataclass
class Budget:
    """The tuning budget every family gets (see :class:`gnnrec.gnn.tune.TuneSettings`).

    Sized so that a dataset's whole benchmark finishes within about an hour on a shared
    2-core machine: 6 configurations, up to 12 evaluations of 5 epochs (60 epochs; an
    iALS step counts as an epoch), ASHA rungs at 1, 3 and 9 evaluations keeping the top
    third, a trial's own patience of 3 evaluations.
    """

    trials: int = 6
    max_evaluations: int = 12
    eval_every: int = 5
    grace: int = 1
    reduction_factor: int = 3
    patience: int = 3

    @classmethod
    def quick(cls) -> Budget:
        return cls(trials=2, max_evaluations=2, eval_every=1, grace=1, patience=1)

    def settings(self, seed: int = 0) -> TuneSettings:
        return TuneSettings(**asdict(self), metric=METRIC, seed=seed)


def split_files(graph: HeteroData, dataset: str, folder: Path,
                seeds: tuple[int, ...] = SEEDS) -> dict[int, Path]:
    """The graph with the random split of each seed (``gnnrec split --seed S``), as files."""
    from gnnrec.gnn.data import fingerprint
    from gnnrec.gnn.graph_file import load_graph, save_graph
    from gnnrec.gnn.split import apply_split

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for seed in seeds:
        path = folder / f"{dataset}_s{seed}.pt"
        split = apply_split(graph, "random", seed=seed)
        if not path.is_file() or fingerprint(load_graph(path)) != fingerprint(split):
            save_graph(split, path)
        out[seed] = path
    return out


def tune_family(family: str, graph_path: Path, out: Path, budget: Budget,
                resources: TuneResources, progress: bool,
                space: dict[str, Any] | None = None) -> dict[str, Any]:
    """Tune ``family`` on ``graph_path`` into the run ``out`` (resumes an earlier start; a
    finished tuning is taken as it is, never searched again)."""
    from gnnrec.gnn.data import fingerprint
    from gnnrec.gnn.graph_file import load_graph
    from gnnrec.gnn.run import Run
    from gnnrec.gnn.tune import tune_model

    meta = out / "meta.json"
    if meta.is_file():
        done = Run.open(out).meta()
        if done.get("status") == "finished" and "tuning" in done:
            if done["graph"]["fingerprint"] != fingerprint(load_graph(graph_path)):
                raise SystemExit(f"{out} was tuned on another graph or split than "
                                 f"{graph_path}: use another --out")
            return done["tuning"]
    experiment = out / "tune" / family
    return tune_model(family, graph_path, out, budget.settings(), resources, space=space,
                      resume=experiment.is_dir(), progress=progress)


def fit_selected(family: str, config: dict[str, Any], graph_path: Path, out: Path,
                 progress: bool) -> dict[str, Any]:
    """Train a selected configuration on another split into the run ``out`` (or take the
    finished run already there, when it holds the same configuration)."""
    from gnnrec.gnn.data import fingerprint
    from gnnrec.gnn.graph_file import load_graph
    from gnnrec.gnn.run import Run
    from gnnrec.gnn.train import TrainConfig
    from gnnrec.gnn.tune import refit_run

    train_config = TrainConfig.from_dict(config["train"])
    graph = load_graph(graph_path)
    if (out / "meta.json").is_file():
        meta = Run.open(out).meta()
        if (meta.get("status") == "finished" and meta["model"]["config"] == {
                **meta["model"]["config"], **config["model"]}
                # read through TrainConfig: a run older than a setting has its default
                and TrainConfig.from_dict(meta["train_config"]) == train_config
                and meta["graph"]["fingerprint"] == fingerprint(graph)):
            return {"valid": meta["best_valid"], "seconds": meta.get("fit_seconds")}
    t0 = time.perf_counter()
    valid = refit_run(family, graph, graph_path, dict(config["model"]), train_config, out,
                      progress)
    seconds = round(time.perf_counter() - t0, 1)
    Run.open(out).update_meta(fit_seconds=seconds)
    return {"valid": valid, "seconds": seconds}


def test_read(run: Path) -> tuple[dict[str, float], Tensor, dict[str, Tensor]]:
    """The run's test metrics, its evaluated users and their per-user metrics (one read)."""
    from gnnrec.gnn.evaluate import Evaluator, dot_scores
    from gnnrec.gnn.run import Run

    opened = Run.open(run)  # the run directory alone: its embeddings and split interactions
    metrics, users, per_user = Evaluator(opened.graph().interactions, "test").per_user(
        dot_scores(*opened.embeddings()))
    opened.update_meta(metrics={"test": metrics})
    return metrics, users, per_user


def paired_bootstrap(ours: Tensor, baseline: Tensor, *, resamples: int = 2000,
                     seed: int = 0) -> dict[str, float]:
    """95 % interval of ``mean(ours) / mean(baseline)`` over the test users.

    ``ours`` and ``baseline`` Float64[U] hold the two models' values for the same users in
    the same order; each resample draws U users with replacement and takes the ratio of
    the two means on that draw (paired: both models see the same users). The interval says
    how much of a test ratio is the particular sample of test users.
    """
    return seeds_bootstrap([(ours, baseline)], resamples=resamples, seed=seed)


def seeds_bootstrap(pairs: list[tuple[Tensor, Tensor]], *, resamples: int = 2000,
                    seed: int = 0) -> dict[str, float]:
    """95 % interval of the ratio of the means over splits: ``mean_s(mean(ours_s)) /
    mean_s(mean(baseline_s))`` for ``pairs`` ``(ours_s, baseline_s)`` of per-user values
    (Float64[U_s], the same users in the same order within a pair). Each resample draws
    the users of every split with replacement, independently per split, paired within it
    (one split: :func:`paired_bootstrap`)."""
    if not pairs:
        raise ValueError("need at least one pair of per-user vectors")
    gen = torch.Generator().manual_seed(seed)
    ours_sum = base_sum = torch.zeros(resamples, dtype=torch.float64)
    for ours, baseline in pairs:
        if ours.shape != baseline.shape or ours.numel() == 0:
            raise ValueError(f"need two equal non-empty per-user vectors, got "
                             f"{list(ours.shape)} and {list(baseline.shape)}")
        idx = torch.randint(0, ours.numel(), (resamples, ours.numel()), generator=gen)
        ours_sum = ours_sum + ours.double()[idx].mean(1)
        base_sum = base_sum + baseline.double()[idx].mean(1)
    ratios = ours_sum / base_sum.clamp(min=1e-12)
    lo, hi = torch.quantile(ratios, torch.tensor([0.025, 0.975], dtype=ratios.dtype)).tolist()
    return {"low": lo, "high": hi, "resamples": resamples,
            f"share_ge_{GOAL}": float((ratios >= GOAL).double().mean())}


def compare(best: str, tests: dict[str, dict[str, float]],
            per_user: dict[str, dict[str, Tensor]]) -> dict[str, Any]:
    """One seed: ``best``'s test metrics over the better of the baselines, per goal metric,
    with the paired bootstrap interval against that baseline."""
    out: dict[str, Any] = {}
    for m in GOAL_METRICS:
        base = max(BASELINES, key=lambda b: tests[b][m])
        out[m] = {"baseline": base, "ratio": tests[best][m] / tests[base][m],
                  "ci95": paired_bootstrap(per_user[best][m], per_user[base][m])}
    return out


def compare_over_seeds(family: str, per_seed: list[dict[str, Any]],
                       per_user: list[dict[str, dict[str, Tensor]]],
                       mean: dict[str, dict[str, float]]) -> dict[str, Any]:
    """``family``'s mean test metrics over the better baseline's (the better mean), per
    goal metric: the ratio of the means, its interval (:func:`seeds_bootstrap`) and each
    seed's ratio and interval against that seed's better baseline (:func:`compare`)."""
    out: dict[str, Any] = {}
    per = [compare(family, s["test"], users) for s, users in zip(per_seed, per_user,
                                                                   strict=True)]
    for m in GOAL_METRICS:
        base = max(BASELINES, key=lambda b: mean[b][m])
        out[m] = {"baseline": base, "ratio_of_means": mean[family][m] / mean[base][m],
                  "ci95": seeds_bootstrap([(users[family][m], users[base][m])
                                           for users in per_user]),
                  "per_seed": [p[m] for p in per]}
    return out


def run_benchmark(dataset: str, graph: HeteroData, out: Path, budget: Budget,
                  resources: TuneResources,
                  *, families: tuple[str, ...] = FAMILIES, seeds: tuple[int, ...] = SEEDS,
                  progress: bool = False, log: Any = print,
                  final_fit: bool = False) -> dict[str, Any]:
    """Tune on seed 0, select on valid, fit the selections on the other seeds, read test;
    ``final_fit``: then also every run again on train + valid (:func:`final_fit_run`)."""
    paths = split_files(graph, dataset, out / "data", seeds)
    root = out / dataset
    tuned: dict[str, dict[str, Any]] = {}
    for family in families:
        log(f"{dataset}: tuning {family} ({budget.trials} trials)")
        if family == "pop":  # nothing to tune: one fit
            config = {"model": {}, "train": _pop_train_config()}
            fit = fit_selected("pop", config, paths[seeds[0]], root / f"seed{seeds[0]}" / "pop",
                               progress)
            tuned[family] = {"best_config": config, "best_valid_in_tuning": fit["valid"][METRIC],
                             "refit_valid": fit["valid"], "tune_seconds": 0.0, "trials": 1}
        else:
            tuned[family] = tune_family(family, paths[seeds[0]],
                                        root / f"seed{seeds[0]}" / family, budget, resources,
                                        progress, SPACE_OVERRIDES.get(dataset, {}).get(family))
        log(f"  {family}: valid {METRIC} {tuned[family]['best_valid_in_tuning']:.4f} "
            f"({tuned[family]['tune_seconds']:.0f} s)")
    graph_families = [f for f in families if f in GRAPH_FAMILIES]
    best = (max(graph_families, key=lambda f: tuned[f]["refit_valid"][METRIC])
            if graph_families else None)  # baselines only: nothing to select or compare
    log(f"{dataset}: best graph model on valid: {best}")
    # Every family's selected configuration on the other seeds (no new search).
    fits: dict[int, dict[str, Any]] = {}
    for seed in seeds[1:]:
        fits[seed] = {}
        for family in families:
            fits[seed][family] = fit_selected(family, tuned[family]["best_config"], paths[seed],
                                              root / f"seed{seed}" / family, progress)
            log(f"  seed {seed} {family}: valid {fits[seed][family]['valid'][METRIC]:.4f}")
    # Test, once per run, after all selection.
    valids = {seed: {f: (tuned[f]["refit_valid"] if seed == seeds[0] else
                         fits[seed][f]["valid"]) for f in families} for seed in seeds}
    per_seed, mean, versus = read_tests(root, seeds, families, best, valids)
    result: dict[str, Any] = {
        "best_graph_model": best, "selected_by": f"valid {METRIC} on split seed {seeds[0]}",
        "families": {f: {"label": LABELS[f], "trials": tuned[f]["trials"],
                         "tune_seconds": tuned[f]["tune_seconds"],
                         "best_config": tuned[f]["best_config"],
                         "valid_in_tuning": tuned[f]["best_valid_in_tuning"],
                         "refit_valid": tuned[f]["refit_valid"],
                         "test_seed0": per_seed[0]["test"][f],
                         "fit_seconds_other_seeds": [fits[s][f]["seconds"] for s in seeds[1:]
                                                     if f in fits[s]],
                         "test_mean": mean[f],
                         **({"versus_baselines": versus[f]} if f in versus else {})}
                     for f in families},
        "per_seed": per_seed, "test_mean": mean,
    }
    if versus:
        result["goal"] = goal(versus[best])
    if final_fit:  # every run again on train + valid for its best epoch count, test once
        log(f"{dataset}: final fits on train + valid")
        epochs = {seed: {f: final_fit_run(root / f"seed{seed}" / f, progress)
                         for f in families} for seed in seeds}
        per_seed, mean, versus = read_tests(root, seeds, families, best, None, FINAL_SUFFIX)
        for entry in per_seed:
            entry["epochs"] = epochs[entry["seed"]]
        result["final_fit"] = {
            "protocol": ("each seed's selected run trained again on train + valid for its "
                         "best epoch count (gnnrec train --final-from RUN), test read once"),
            "per_seed": per_seed, "test_mean": mean, "versus_baselines": versus,
            **({"goal": goal(versus[best])} if versus else {})}
    return result


FINAL_SUFFIX = "-final"


def final_fit_run(run: Path, progress: bool) -> int:
    """Train ``run`` again on train + valid into ``run-final`` (``gnnrec train --final-from
    run``), or take the finished final fit already there; returns its epoch count."""
    from gnnrec.gnn.jobs import TrainJob, run_train
    from gnnrec.gnn.run import Run

    out = run.with_name(run.name + FINAL_SUFFIX)
    if (out / "meta.json").is_file() and (meta := Run.open(out).meta()).get("status") == "finished":
        return int(meta["best_epoch"])
    _, result, _ = run_train(TrainJob(out=str(out), final_from=str(run), overwrite=True,
                                      progress=progress))
    return int(result.best_epoch)


def read_tests(root: Path, seeds: tuple[int, ...], families: tuple[str, ...],
               best: str | None, valids: dict[int, dict[str, Any]] | None,
               suffix: str = "") -> tuple[list[dict[str, Any]], dict[str, dict[str, float]],
                                          dict[str, Any]]:
    """Test, read once per run ``root/seed<S>/<family><suffix>``: ``(per seed entries, mean
    test metrics per family, each graph family's comparison over the seeds)``."""
    per_seed, per_users = [], []
    for seed in seeds:
        tests, per_user = {}, {}
        for family in families:
            metrics, _, users_metrics = test_read(root / f"seed{seed}" / f"{family}{suffix}")
            tests[family], per_user[family] = metrics, users_metrics
        entry: dict[str, Any] = {"seed": seed, **({"valid": valids[seed]} if valids else {}),
                                 "test": tests}
        if best is not None and all(b in families for b in BASELINES):
            entry["versus_baselines"] = compare(best, tests, per_user)
        per_seed.append(entry)
        per_users.append(per_user)
    mean = {f: {m: sum(s["test"][f][m] for s in per_seed) / len(per_seed)
                for m in TABLE_METRICS} for f in families}
    graph_families = [f for f in families if f in GRAPH_FAMILIES]
    versus = ({f: compare_over_seeds(f, per_seed, per_users, mean) for f in graph_families}
              if all(b in families for b in BASELINES) else {})
    return per_seed, mean, versus


def goal(ratios: dict[str, Any]) -> dict[str, Any]:
    return {"ratio": GOAL, "metrics": ratios,
            "met": all(r["ratio_of_means"] >= GOAL for r in ratios.values())}


def _pop_train_config() -> dict[str, Any]:
    from gnnrec.gnn.train import TrainConfig

    return TrainConfig().to_dict()


def selected(family: str, config: dict[str, Any]) -> str:
    """A selected configuration in a few words (the table's second column)."""
    model, train = config["model"], config["train"]
    if family == "pop":
        return ""
    if family == "ials":
        return (f"{model['factors']} factors, reg {model['regularization']:.3g}, "
                f"alpha {model['alpha']:.3g}")
    if family == "ease":
        return f"λ {model['regularization']:.3g}"
    loss = ("full softmax" if train["loss"] == "full" else
            f"{train['loss']}/{train['num_negatives']}")
    if train["loss"] != "bpr" and train.get("temperature", 1.0) != 1.0:
        loss += f" t {train['temperature']:g}"
    words = [f"{model.get('embedding_dim', 64)}-d", f"{model.get('num_layers')} layers",
             loss, f"lr {train['lr']:.2g}", f"l2 {train['l2']:.2g}"]
    if family == "xsimgcl":
        words += [f"eps {model['eps']:g}", f"cl {model['cl_weight']:.2g}",
                  f"τ {model['cl_temperature']:g}"]
    if family == "graphsage":
        words.append(f"id dropout {model['id_dropout']:g}")
    words += [f"{name} {model[key]:g}" for key, name in (("social_weight", "friends"),
                                                       ("tag_weight", "tags"))
              if model.get(key)]
    return ", ".join(words)


def table(result: dict[str, Any]) -> str:
    """A markdown table of the families (mean test over the seeds) and the goal ratios."""
    seeds = [s["seed"] for s in result["per_seed"]]
    n = len(seeds)
    lines = ["| model | selected on valid (seed 0) | valid R@20 | test R@20 (seed 0) | "
             f"test R@20 (mean of {n}) | test N@20 (mean of {n}) | R@20 / better baseline "
             f"(mean of {n}) [95 % CI] | N@20 / better baseline [95 % CI] | coverage@20 | "
             "tuning |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for family, r in result["families"].items():
        t0, t = r["test_seed0"], r["test_mean"]
        name = f"**{r['label']}**" if family == result["best_graph_model"] else r["label"]
        means = (f"{t['recall@20']:.4f} | {t['ndcg@20']:.4f}" if t else "– | –")
        ratios = _ratios(r.get("versus_baselines"))
        tuning = (f"{r['trials']} trials, {r['tune_seconds'] / 60:.0f} min" if family != "pop"
                  else "–")
        lines.append(f"| {name} | {selected(family, r['best_config'])} | "
                     f"{r['refit_valid'][METRIC]:.4f} | {t0['recall@20']:.4f} | {means} | "
                     f"{ratios} | {t0['coverage@20']:.3f} | {tuning} |")
    lines.append(f"\n(mean: over split seeds {', '.join(map(str, seeds))}; better baseline: "
                 "the better mean of tuned iALS and EASE)")
    if "goal" in result:
        for m, g in result["goal"]["metrics"].items():
            per = "; ".join(f"seed {s['seed']}: x{p['ratio']:.3f} [{p['ci95']['low']:.3f}, "
                            f"{p['ci95']['high']:.3f}] vs {p['baseline']}"
                            for s, p in zip(result["per_seed"], g["per_seed"], strict=True))
            ci = (f" [{g['ci95']['low']:.3f}, {g['ci95']['high']:.3f}]" if "ci95" in g
                  else "")
            lines.append(f"{m}: {result['best_graph_model']} / {g['baseline']} = "
                         f"x{g['ratio_of_means']:.3f}{ci} (mean over seeds); {per}")
    if "final_fit" in result:
        final = result["final_fit"]
        lines += ["", f"Final fit on train + valid ({final['protocol']}):", "",
                  f"| model | test R@20 (mean of {n}) | test N@20 (mean of {n}) | R@20 / better "
                  "baseline [95 % CI] | N@20 / better baseline [95 % CI] |",
                  "|---|---:|---:|---:|---:|"]
        for family, t in final["test_mean"].items():
            lines.append(f"| {LABELS[family]} | {t['recall@20']:.4f} | {t['ndcg@20']:.4f} | "
                         f"{_ratios(final['versus_baselines'].get(family))} |")
    return "\n".join(lines)


def _ratios(versus: dict[str, Any] | None) -> str:
    """The goal metrics' ratios of means with their intervals, as two table cells."""
    if not versus:
        return "– | –"
    return " | ".join(
        f"×{v['ratio_of_means']:.3f} [{v['ci95']['low']:.3f}, {v['ci95']['high']:.3f}]"
        if "ci95" in v else f"×{v['ratio_of_means']:.3f}"
        for v in (versus[m] for m in GOAL_METRICS))


def plot(path: Path, result: dict[str, Any], title: str) -> None:
    """Test recall@20 and NDCG@20 per family: the mean over the seeds, one dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(result["test_mean"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, m in zip(axes, GOAL_METRICS, strict=True):
        means = [result["test_mean"][f][m] for f in families]
        colors = ["C3" if f == result["best_graph_model"] else
                  "C1" if f in BASELINES else "C0" for f in families]
        ax.bar(range(len(families)), means, color=colors, alpha=0.7)
        for seed in result["per_seed"]:
            ax.plot(range(len(families)), [seed["test"][f][m] for f in families], "k.", ms=4)
        ax.set_xticks(range(len(families)), [LABELS[f] for f in families], rotation=30,
                      ha="right")
        ax.set_ylabel(f"test {m}")
        lo = min(v for v in means if v > 0)
        ax.set_ylim(lo * 0.8, max(means) * 1.05)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--out", type=Path, default=Path("runs/quality"),
                   help="split files, tuning experiments and run directories (resumable)")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)),
                   help="split seeds, the first one tunes and selects (default 0,1,2)")
    p.add_argument("--quick", action="store_true", help="a tiny budget (smoke run)")
    p.add_argument("--trials", type=int, help="override the budget's trials per family")
    p.add_argument("--max-evaluations", type=int, help="override the budget's ASHA max_t")
    p.add_argument("--concurrency", type=int, help="trials at once (default: CPUs)")
    p.add_argument("--address", help="Ray cluster (default: a local Ray)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the refits")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--final-fit", action="store_true",
                   help="also train every selected run again on train + valid for its best "
                        "epoch count and read test on those (reported beside the others)")
    p.add_argument("--json", type=Path)
    p.add_argument("--png", type=Path)
    p.add_argument("--table", type=Path, metavar="JSON",
                   help="print the markdown table of a result file and exit")
    add_graph_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.table:
        print(table(json.loads(args.table.read_text(encoding="utf-8"))))
        return 0
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    torch.set_num_threads(args.threads)
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    if unknown := set(families) - set(FAMILIES):
        raise SystemExit(f"unknown families {sorted(unknown)}; choose from {FAMILIES}")
    budget = Budget.quick() if args.quick else Budget()
    if args.trials:
        budget.trials = args.trials
    if args.max_evaluations:
        budget.max_evaluations = args.max_evaluations
    started, load_before = time.perf_counter(), loadavg()
    graph, info = product_graph(args.dataset, GraphSource.from_args(args))
    resources = TuneResources(concurrency=args.concurrency, address=args.address)
    seeds = tuple(int(x) for x in args.seeds.split(",") if x.strip())
    result = run_benchmark(args.dataset, graph, args.out, budget, resources,
                           families=families, seeds=seeds, progress=args.progress,
                           final_fit=args.final_fit)
    result = {
        "benchmark": "quality", "dataset": args.dataset, "quick": args.quick,
        "protocol": ("product path (ingest -> Neo4j -> gnnrec export -> gnnrec split); implicit "
                     "feedback; every family tuned by gnnrec tune (Ray Tune, ASHA on valid "
                     f"{METRIC}) with the same budget on split seed {seeds[0]}; best graph "
                     f"model selected on seed {seeds[0]} valid; every family's selected "
                     f"configuration trained on seeds {list(seeds[1:])}; test read once per "
                     "run after all selection"),
        "budget": asdict(budget), "space_overrides": SPACE_OVERRIDES.get(args.dataset, {}),
        **result, "graph": info,
        "total_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_gb": round(peak_rss_gb(), 3),
        "loadavg_before": load_before, "loadavg_after": loadavg(), "machine": machine(),
    }
    print(table(result))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    if args.png:
        plot(args.png, result, args.dataset)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
