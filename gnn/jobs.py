"""What the ``gnnrec split | train | evaluate | recommend | synth`` commands do.

``gnnrec.gnn.cli`` only parses arguments and prints; the work is here, callable from
Python with the same results. Heavy imports happen inside the functions.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gnnrec.errors import GnnrecError


def check_model_args(model_name: str, hyper: dict[str, Any]) -> None:
    """Refuse constructor arguments the model does not take (named as CLI flags)."""
    from gnnrec.gnn.run import model_class

    cls = model_class(model_name)
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(hyper) - set(params))
    if unknown:
        flags = ", ".join("--" + u.replace("_", "-") for u in unknown)
        raise GnnrecError(f"{flags} does not apply to model {model_name} ({cls.__name__})")


@dataclass
class TrainJob:
    """One ``gnnrec train``: what was given (``None`` / empty = the default, or the
    resumed run's value).

    Args:
        out: the run directory. model, graph: required unless ``resume``.
        hyper: model constructor arguments; train: :class:`TrainConfig` fields.
        minibatch: train on sampled batches; sampling: ``num_neighbors``, ``sampler``,
            ``sampler_workers``, ``ahead`` (:class:`MiniBatchConfig` fields).
        sampler_resources: custom Ray resources per sampler actor (``--sampler ray``).
        ray_train: :class:`RayTrainParams` fields for a Ray Train job (None: one process).
        address: the Ray cluster (Ray sampler actors, Ray Train).
        final_from: a finished run trained on train with valid early stopping: train its
            model and settings again on train + valid for its best epoch count (a final
            fit; ``train`` and ``hyper`` still override).
    """

    out: str
    model: str | None = None
    graph: str | None = None
    hyper: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    overwrite: bool = False
    minibatch: bool = False
    sampling: dict[str, Any] = field(default_factory=dict)
    sampler_resources: dict[str, float] | None = None
    ray_train: dict[str, Any] | None = None
    address: str | None = None
    progress: bool = True
    final_from: str | None = None


def run_train(job: TrainJob) -> tuple[str, Any, Any]:
    """Train (or resume) the run ``job.out``; returns ``(model name, result, config)``."""
    from gnnrec.gnn.data import fingerprint
    from gnnrec.gnn.graph_file import load_graph
    from gnnrec.gnn.run import Run, build_model, model_class
    from gnnrec.gnn.split import ensure_split, merge_valid
    from gnnrec.gnn.train import TrainConfig, check_resumable, seed_everything
    from gnnrec.gnn.views import TrainView

    if job.resume:
        run = Run.open(job.out)
        meta = run.meta()
        model_name = meta["model"]["name"]
        if job.model and job.model != model_name:
            raise GnnrecError(f"{job.out} holds a {model_name} run, not {job.model}")
        check_model_args(model_name, job.hyper)
        hyper = {**meta["model"]["config"], **job.hyper}
        graph_path = job.graph or meta["graph"]["path"]
        config = TrainConfig.from_dict({**meta["train_config"], **job.train})
    elif job.final_from:
        source = Run.open(job.final_from).meta()
        model_name, graph_path, hyper, config = _final_settings(job, source)
    else:
        if not job.model or not job.graph:
            raise GnnrecError("gnnrec train needs --model and --graph (or --resume)")
        model_name, graph_path = job.model, job.graph
        check_model_args(model_name, job.hyper)
        hyper = dict(job.hyper)
        defaults = getattr(model_class(model_name), "train_defaults", {})
        config = TrainConfig(**{**defaults, **job.train})
        if config.final and "epochs" not in job.train:
            raise GnnrecError("a final fit on train+valid trains exactly --epochs epochs (no "
                              "validation stops it): give the epoch count valid chose, or "
                              "use --final-from RUN")
    graph, applied = ensure_split(load_graph(graph_path))
    if applied:
        print(f"{graph_path} has no split: using the default random split (seed 0, 80/10/10); "
              "make it explicit with `gnnrec split`", file=sys.stderr)
    if job.final_from and fingerprint(graph) != source["graph"]["fingerprint"]:
        raise GnnrecError(f"{job.final_from} was trained on another graph or split than "
                          f"{graph_path}: a final fit must keep the split valid chose on")
    if config.final:
        graph = merge_valid(graph)
    config.validate()
    view = TrainView.from_graph(graph)  # the one train view of this job
    seed_everything(config.seed, config.deterministic)
    model = build_model(model_name, view, hyper)
    if job.resume:
        check_resumable(run, model_name, model.config(), config, fingerprint(graph))  # type: ignore[operator]
    else:
        run = Run.create(job.out, model_name=model_name, model=model, graph=graph,
                         graph_path=graph_path, train_config=config.to_dict(),
                         overwrite=job.overwrite)
        run.update_meta(graph={**run.meta()["graph"], "split_applied": applied})
    return model_name, _fit(job, model, view, config, run), config


def _final_settings(job: TrainJob, meta: dict[str, Any]) -> tuple[str, str, dict[str, Any],
                                                                  Any]:
    """``(model name, graph path, constructor args, TrainConfig)`` of a final fit of the
    run ``job.final_from`` (``meta``: its meta): its model and settings, ``fit_on``
    train+valid, ``epochs`` its best epoch (what valid chose), the job's flags over them."""
    from gnnrec.gnn.train import TrainConfig

    model_name = meta["model"]["name"]
    if job.model and job.model != model_name:
        raise GnnrecError(f"{job.final_from} holds a {model_name} run, not {job.model}")
    source = TrainConfig.from_dict(meta["train_config"])
    if meta.get("status") != "finished" or source.final:
        raise GnnrecError(f"--final-from needs a finished run trained on train with valid "
                          f"early stopping; {job.final_from} is "
                          f"{'a final fit' if source.final else meta.get('status')}")
    check_model_args(model_name, job.hyper)
    hyper = {**meta["model"]["config"], **job.hyper}
    config = TrainConfig.from_dict({**source.to_dict(), "epochs": max(1, meta["best_epoch"]),
                                    **job.train, "fit_on": "train+valid"})
    return model_name, job.graph or meta["graph"]["path"], hyper, config


def _fit(job: TrainJob, model: Any, view: Any, config: Any, run: Any) -> Any:
    """Full-graph, mini-batch (``minibatch``) or Ray Train (``ray_train``) training."""
    from gnnrec.gnn.train import Session, fit

    previous = run.meta().get("minibatch") if job.resume else None
    mb = None
    if job.minibatch or previous or job.sampling:
        from gnnrec.gnn.minibatch import MiniBatchConfig

        layers = int(getattr(model, "num_layers", 2))
        mb = MiniBatchConfig(**{"num_neighbors": [10] + [5] * (layers - 1),
                                **(previous or {}), **job.sampling})
    if job.ray_train is not None:
        from gnnrec.gnn.distributed import RayTrainParams, train_distributed

        params = RayTrainParams(**job.ray_train, address=job.address)
        return train_distributed(model, view, config, params, run=run, minibatch=mb,
                                 resume=job.resume)
    if mb is None:
        return fit(model, view, config,
                   session=Session(run, resume=job.resume, progress=job.progress))
    from gnnrec.gnn.minibatch import link_sampler, train_minibatch

    if mb.sampler == "inprocess":
        return train_minibatch(model, view, config, mb, run=run, resume=job.resume,
                               progress=job.progress)
    from gnnrec.gnn.distributed import ray_batches

    mb.validate(model)
    sampler = link_sampler(view, model, config, mb)
    with ray_batches(sampler, mb.sampler_workers, mb.prefetch, job.address,
                     job.sampler_resources) as batches:
        return train_minibatch(model, view, config, mb, run=run, resume=job.resume,
                               progress=job.progress, batches=batches)


def split_graph(graph: str, kind: str, *, seed: int, fractions: tuple[float, float, float],
                min_interactions: int, out: str | None, write_graph: bool,
                recbole_dir: str | None = None, name: str | None = None) -> dict[str, Any]:
    """``gnnrec split``: the split graph written to ``out`` (default: in place) and/or
    RecBole atomic files; returns the summary printed."""
    from gnnrec.gnn.graph_file import load_graph, save_graph
    from gnnrec.gnn.split import apply_split, write_recbole

    data = apply_split(load_graph(graph), kind, seed=seed,  # type: ignore[arg-type]
                       fractions=fractions, min_interactions=min_interactions)
    summary: dict[str, Any] = {"split_info": data.split_info}
    if write_graph or out:
        target = out or graph
        save_graph(data, target)
        summary["out"] = str(target)
    if recbole_dir is not None:
        files = write_recbole(data, recbole_dir, name or Path(graph).stem)
        summary["recbole"] = [str(p) for p in files]
    return summary


def evaluate_run(run: str, split: str, *, device: str = "auto",
                 batch_size: int | None = None) -> dict[str, float]:
    """Full-ranking metrics of a run on ``split`` (also recorded in its meta), from the run
    directory alone: its final embeddings and its split interactions."""
    from gnnrec.gnn.evaluate import dot_scores, evaluate
    from gnnrec.gnn.run import Run
    from gnnrec.gnn.train import resolve_device

    dev = resolve_device(device)
    opened = Run.open(run)
    if split == "valid" and opened.meta()["train_config"].get("fit_on") == "train+valid":
        raise GnnrecError(f"{run} is a final fit: it trained on valid, so valid cannot "
                          "measure it (evaluate its --final-from run on valid, this one on test)")
    user, item = (e.to(dev) for e in opened.embeddings())
    metrics = evaluate(dot_scores(user, item), opened.graph().interactions,
                       split, batch_size=batch_size, device=dev)  # type: ignore[arg-type]
    opened.update_meta(metrics={split: metrics})
    return metrics


def recommender_of_run(run: str, *, device: str = "cpu") -> tuple[Any, Any, dict[str, Any]]:
    """``(TopKRecommender, model, meta)`` of a run directory (every known interaction
    excluded; the model rebuilt from its checkpoint)."""
    from gnnrec.gnn.recommend import TopKRecommender
    from gnnrec.gnn.run import Run
    from gnnrec.gnn.train import resolve_device

    dev = resolve_device(device)
    opened = Run.open(run)
    return TopKRecommender.from_run(opened, device=dev), opened.model(), opened.meta()


def synth(out: str, *, users: int, items: int, tags: int, communities: int,
          mean_interactions: float, friends: float, seed: int, split: str) -> dict[str, Any]:
    """``gnnrec synth``: a seeded synthetic graph file; returns the summary printed."""
    from gnnrec.gnn.generators import synthetic_graph
    from gnnrec.gnn.graph_file import save_graph
    from gnnrec.gnn.split import apply_split

    data = synthetic_graph(users, items, num_tags=tags, num_communities=communities,
                           mean_interactions=mean_interactions, friends_per_user=friends,
                           seed=seed)
    if split != "none":
        data = apply_split(data, split, seed=seed)  # type: ignore[arg-type]
    save_graph(data, out)
    ui = data["user", "interacts", "item"]
    return {"out": out, "users": data["user"].num_nodes, "items": data["item"].num_nodes,
            "interactions": ui.edge_index.size(1),
            "friendships": data["user", "friend", "user"].edge_index.size(1) // 2,
            "split": getattr(data, "split_info", None)}
