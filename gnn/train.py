"""The training loop: BPR on shuffled train edges, Adam, early stopping on valid recall@20.

One epoch visits every train ``(user, positive)`` edge once in a seeded random order, in
mini-batches of ``batch_size``, with ``num_negatives`` sampled negatives per positive
(never a train item of the user). The loss is ``bpr + l2 * reg`` where
``model.bpr_loss(users, pos, neg) -> (bpr, reg)`` returns the mean BPR loss and the
unscaled L2 term of the batch's ego embeddings (``loss="softmax"``: sampled softmax of each
positive against its negatives instead of BPR, scores divided by ``temperature``). Every
``eval_every`` epochs (and at the last one) the model is scored on valid; the best epoch by
``metric`` is kept (:class:`EarlyStopping`, shared with the mini-batch loop), and training
stops after ``patience`` evaluations without improvement. All randomness after model
construction comes from generators seeded by ``seed`` (the global torch RNG state, which
dropout uses, is checkpointed too), so a run is reproducible on CPU and a resumed run
(``resume=True``, from ``last.pt``) ends where an uninterrupted one would: bit for bit on
CPU with any number of threads, because :func:`seed_everything` selects torch's
deterministic kernels.
Models without trainable parameters (``trainable = False``, e.g. popularity) are
evaluated, not trained. Solver models (``solver = True``: iALS, EASE) are not trained by
gradients either: each epoch is one ``model.solve_step()`` (an ALS sweep; EASE's closed
form, ``max_steps = 1``), evaluated on valid every ``eval_every`` epochs, with the same
early stopping, run directory and resume as the gradient models.
``report(epoch, valid_metrics)``, when given, is called after every valid evaluation (the
tuner's hook).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData
from tqdm.auto import tqdm

from gnnrec.errors import GnnrecError
from gnnrec.gnn.data import UI
from gnnrec.gnn.evaluate import Evaluator
from gnnrec.gnn.models.base import LOSSES
from gnnrec.gnn.negative import NegativeSampler
from gnnrec.gnn.run import Run, RunError


class TrainingError(GnnrecError):
    """Training cannot go on: diverged loss, bad settings, a resume that does not match."""


@dataclass
class TrainConfig:
    """Optimisation settings (model hyper-parameters live in the model's constructor)."""

    epochs: int = 200
    batch_size: int = 2048
    lr: float = 1e-3
    l2: float = 1e-4  # multiplies the model's L2 term on the batch's ego embeddings
    num_negatives: int = 1
    negatives: Literal["uniform", "popularity"] = "uniform"
    loss: Literal["bpr", "softmax"] = "bpr"  # softmax: sampled softmax over the negatives
    temperature: float = 1.0  # divides the scores in the softmax loss
    patience: int = 10  # evaluations without improvement before stopping
    eval_every: int = 1  # epochs between valid evaluations
    metric: str = "recall@20"
    eval_batch_size: int | None = None
    seed: int = 0
    device: str = "auto"  # "auto" = cuda when available, else cpu
    # torch's deterministic kernels (see seed_everything); False trades reproducibility
    # for the faster non-deterministic scatter / index-add kernels of a GPU.
    deterministic: bool = True

    # Settings that may change when resuming a run (the rest must match).
    RESUMABLE = ("epochs", "patience", "eval_every", "device", "eval_batch_size",
                 "deterministic")

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "num_negatives", "patience", "eval_every"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.l2 < 0:
            raise TrainingError(f"lr must be > 0 and l2 >= 0 (got lr={self.lr}, l2={self.l2})")
        if self.negatives not in ("uniform", "popularity"):
            raise TrainingError(f"negatives must be uniform or popularity, not {self.negatives!r}")
        if self.loss not in LOSSES:
            raise TrainingError(f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if not self.temperature > 0:
            raise TrainingError(f"temperature must be > 0, got {self.temperature}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class TrainResult:
    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = "max_epochs"  # "max_epochs" | "early_stopping" | "no_parameters"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"--device {name}: no CUDA device is available here")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed torch (CPU and CUDA) and numpy; call before building the model.

    ``deterministic`` also switches torch to its deterministic kernels
    (``torch.use_deterministic_algorithms``, warn-only so that a CUDA op without one
    warns instead of failing). On CPU this makes multi-threaded runs bit-reproducible:
    without it the parallel scatter / index-add kernels of message passing sum in a
    varying order, and a 2-thread GraphSAGE run on ML-100K moved its best valid
    recall@20 by up to 4.5 % between identical runs. Measured cost on 2 CPU threads:
    none beyond the noise (LightGCN and GraphSAGE epochs on ML-100K).
    """
    torch.manual_seed(seed)
    np.random.seed(seed)
    if deterministic:  # cuBLAS needs this before CUDA starts to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def _rng_state(shuffle: torch.Generator, sampler: NegativeSampler) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state(),
             "sampler": sampler.state_dict()["generator"]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any], shuffle: torch.Generator, sampler: NegativeSampler) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    sampler.load_state_dict({"generator": state["sampler"]})
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class EarlyStopping:
    """Best-epoch bookkeeping shared by the training loops (full-graph and mini-batch).

    Holds the per-epoch ``history``, the best ``metric`` so far, its epoch and weights, and
    the evaluations without improvement (``bad``). :meth:`resume` continues from a run's
    ``last.pt``; :meth:`end_epoch` records an epoch and, on evaluation epochs, scores
    valid, keeps the best weights (``model.pt``) and writes ``last.pt``; :meth:`finish`
    loads the best weights and writes the final meta. The Ray Train loop, which keeps its
    checkpoints in Ray Train, uses the lower-level :meth:`observe`, :meth:`state` and
    :meth:`load_state`.
    """

    def __init__(self, config: TrainConfig,
                 report: Callable[[int, dict[str, float]], None] | None = None) -> None:
        self.config = config
        self.report = report
        self.history: list[dict[str, Any]] = []
        self.best_metric, self.best_epoch, self.bad = -math.inf, 0, 0
        self.best_state: dict[str, Tensor] | None = None

    @property
    def should_stop(self) -> bool:
        return self.bad >= self.config.patience

    def evaluates(self, epoch: int) -> bool:
        """Whether ``epoch`` scores valid: every ``eval_every`` epochs and the last one."""
        return epoch % self.config.eval_every == 0 or epoch == self.config.epochs

    def resume(self, run: Run | None, model: nn.Module,
               optimizer: torch.optim.Optimizer | None) -> tuple[dict[str, Any], int]:
        """Load ``run``'s ``last.pt`` into ``model``, ``optimizer`` and this bookkeeping.

        Returns the checkpoint (its ``rng`` entry is the caller's to restore) and the epoch
        to start from (past the last one when the run had already stopped early).
        """
        ckpt = run.load_last() if run is not None else None
        if ckpt is None:
            raise TrainingError("nothing to resume: the run has no last.pt yet")
        model.load_state_dict(ckpt["model"])
        if optimizer is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
        best = run.load_model_state() if ckpt["best_epoch"] else None  # type: ignore[union-attr]
        return ckpt, self.load_state(ckpt, best)

    def load_state(self, ckpt: dict[str, Any], best_state: dict[str, Tensor] | None) -> int:
        """Take the bookkeeping fields of a checkpoint (see :meth:`state`) and the best
        weights; returns the epoch to start from (past the last one when the run had
        already stopped early)."""
        self.history = list(ckpt["history"])
        self.best_metric, self.best_epoch = ckpt["best_metric"], ckpt["best_epoch"]
        self.bad, self.best_state = ckpt["bad"], best_state
        return self.config.epochs + 1 if self.should_stop else int(ckpt["epoch"]) + 1

    def state(self) -> dict[str, Any]:
        """The bookkeeping fields a checkpoint stores (:meth:`load_state` reads them)."""
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch, "bad": self.bad,
                "history": self.history, "train_config": self.config.to_dict()}

    def observe(self, epoch: int, value: float, model: nn.Module | None,
                run: Run | None) -> None:
        """A valid evaluation of ``metric`` at ``epoch``: on improvement keep ``model``'s
        weights (when given) and save them as ``run``'s ``model.pt``."""
        if value > self.best_metric:
            self.best_metric, self.best_epoch, self.bad = value, epoch, 0
            if model is not None:
                self.best_state = cpu_state(model)
                if run is not None:
                    run.save_model(self.best_state)
        else:
            self.bad += 1

    def end_epoch(self, record: dict[str, Any], evaluate: Callable[[], dict[str, float]],
                  model: nn.Module, optimizer: torch.optim.Optimizer | None,
                  rng_state: Callable[[], dict[str, Any]], run: Run | None, bar: Any) -> bool:
        """Record an epoch (``record`` has ``epoch`` and ``loss``); on an evaluation epoch,
        score valid with ``evaluate()``, keep the best weights and write ``last.pt`` (with
        ``rng_state()``) and the progress meta. Returns True when training should stop."""
        epoch, loss = record["epoch"], record["loss"]
        self.history.append(record)
        if not self.evaluates(epoch):
            bar.set_postfix(loss=f"{loss:.4f}")
            return False
        metric = self.config.metric
        record["valid"] = metrics = evaluate()
        self.observe(epoch, metrics[metric], model, run)
        if run is not None:
            run.save_last({"epoch": epoch, "model": cpu_state(model),
                           "optimizer": optimizer.state_dict() if optimizer else {},
                           "rng": rng_state(),
                           **self.state()})
            run.update_meta(history=self.history, best_epoch=self.best_epoch,
                            best_valid=valid_of(self.history, self.best_epoch))
        bar.set_postfix({"loss": f"{loss:.4f}", metric: f"{metrics[metric]:.4f}"})
        if self.report is not None:
            self.report(epoch, metrics)
        return self.should_stop

    def finish(self, model: nn.Module, run: Run | None, stopped: str) -> TrainResult:
        if self.best_state is None:
            raise TrainingError("no evaluation happened: no best model to keep")
        model.load_state_dict(self.best_state)
        model.eval()
        best_valid = valid_of(self.history, self.best_epoch)
        if run is not None:
            run.update_meta(status="finished", stopped=stopped, history=self.history,
                            best_epoch=self.best_epoch, best_valid=best_valid,
                            metrics={"valid": best_valid})
        return TrainResult(self.best_epoch, best_valid, self.history, stopped)


def train(model: nn.Module, graph: HeteroData, config: TrainConfig, *, run: Run | None = None,
          resume: bool = False, progress: bool = True,
          report: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train ``model`` (built from ``train_subgraph(graph)``) on ``graph``'s train edges.

    ``graph`` must carry a split. With ``run``, the best model, the resume checkpoint and
    the metadata are written there after every evaluation; ``resume`` continues from its
    ``last.pt``. On return the model holds the best weights (in eval mode).
    """
    config.validate()
    device = resolve_device(config.device)
    ui = graph[UI]
    mask = ui.split == 0
    users, items = ui.edge_index[0, mask], ui.edge_index[1, mask]
    num_users, num_items = int(graph["user"].num_nodes), int(graph["item"].num_nodes)
    model.to(device)
    evaluator = Evaluator(graph, "valid", batch_size=config.eval_batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    if not getattr(model, "trainable", True):
        params = []

    def validate_model() -> dict[str, float]:
        model.eval()
        metrics = evaluator(model.score, device=device)  # type: ignore[arg-type]
        model.train()
        return metrics

    if getattr(model, "solver", False):
        return _solve(model, config, validate_model, run, resume, progress, report)
    if not params:  # e.g. popularity: nothing to optimise
        metrics = validate_model()
        model.eval()
        history = [{"epoch": 0, "valid": metrics}]
        if run is not None:
            run.save_model(cpu_state(model))
            run.update_meta(status="finished", history=history, best_epoch=0, best_valid=metrics,
                            metrics={"valid": metrics})
        return TrainResult(0, metrics, history, "no_parameters")
    if config.metric not in validate_metric_keys(evaluator):
        raise TrainingError(f"metric {config.metric!r} is not computed; use e.g. recall@20")

    optimizer = torch.optim.Adam(params, lr=config.lr)
    sampler = NegativeSampler(users, items, num_users, num_items, seed=config.seed + 1,
                              popularity=config.negatives == "popularity")
    shuffle = torch.Generator().manual_seed(config.seed)
    stopping, start = EarlyStopping(config, report), 1
    if resume:
        ckpt, start = stopping.resume(run, model, optimizer)
        _restore_rng(ckpt["rng"], shuffle, sampler)
    if run is not None:
        run.update_meta(status="running", train_config=config.to_dict())

    model.train()
    n, bs, k = users.numel(), config.batch_size, config.num_negatives
    stopped = "max_epochs"
    bar = tqdm(range(start, config.epochs + 1), desc="train", unit="epoch", disable=not progress,
               initial=start - 1, total=config.epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=shuffle)
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        for b in range(0, n, bs):
            idx = perm[b : b + bs]
            u, p = users[idx], items[idx]
            neg = sampler.sample(u, k)  # [B, K]
            bpr, reg = model.bpr_loss(u.to(device), p.to(device), neg.to(device),  # type: ignore[operator]
                                      config.loss, config.temperature)
            loss = bpr + config.l2 * reg
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack([bpr.detach(), torch.as_tensor(reg, device=device).detach()]
                                ).double() * idx.numel()
        bpr_mean, reg_mean = (sums / max(n, 1)).tolist()
        loss_mean = bpr_mean + config.l2 * reg_mean
        if not math.isfinite(loss_mean):
            raise TrainingError(
                f"training diverged at epoch {epoch}: the loss is {loss_mean} (bpr {bpr_mean}, "
                f"reg {reg_mean}); lower --lr or check the model")
        record: dict[str, Any] = {"epoch": epoch, "loss": loss_mean, "bpr": bpr_mean,
                                  "reg": reg_mean, "seconds": round(time.perf_counter() - t0, 4)}
        if stopping.end_epoch(record, validate_model, model, optimizer,
                              lambda: _rng_state(shuffle, sampler), run, bar):
            stopped = "early_stopping"
            break
    bar.close()
    return stopping.finish(model, run, stopped)


def _solve(model: nn.Module, config: TrainConfig, validate_model: Callable[[], dict[str, float]],
           run: Run | None, resume: bool, progress: bool,
           report: Callable[[int, dict[str, float]], None] | None) -> TrainResult:
    """The epochs of a solver model: one ``solve_step()`` each, valid every ``eval_every``
    steps and at the last one (EASE's ``max_steps = 1``: that one step)."""
    max_steps = getattr(model, "max_steps", None)
    epochs = min(config.epochs, max_steps) if max_steps else config.epochs
    steps = replace(config, epochs=epochs)
    stopping, start = EarlyStopping(steps, report), 1
    if resume:
        ckpt, start = stopping.resume(run, model, None)
        torch.set_rng_state(ckpt["rng"]["torch"])
    if run is not None:
        run.update_meta(status="running", train_config=config.to_dict())
    stopped = "max_epochs"
    bar = tqdm(range(start, epochs + 1), desc="solve", unit="step", disable=not progress,
               initial=start - 1, total=epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        model.solve_step()  # type: ignore[operator]
        record = {"epoch": epoch, "loss": math.nan, "seconds": round(time.perf_counter() - t0, 4)}
        if stopping.end_epoch(record, validate_model, model, None,
                              lambda: {"torch": torch.get_rng_state()}, run, bar):
            stopped = "early_stopping"
            break
    bar.close()
    return stopping.finish(model, run, stopped)


def valid_of(history: list[dict[str, Any]], epoch: int) -> dict[str, float]:
    """The valid metrics recorded for ``epoch`` ({} when it was not evaluated)."""
    return next((r["valid"] for r in history if r["epoch"] == epoch and "valid" in r), {})


def validate_metric_keys(evaluator: Evaluator) -> set[str]:
    names = ("recall", "ndcg", "precision", "hit", "mrr", "coverage", "novelty")
    return {f"{m}@{k}" for m in names for k in evaluator.ks}


def check_resumable(run: Run, model_name: str, model_config: dict[str, Any],
                    config: TrainConfig, graph_fingerprint: str) -> None:
    """Refuse to resume a run with another model, graph or fixed training setting."""
    meta = run.meta()
    if meta["model"]["name"] != model_name or meta["model"]["config"] != model_config:
        raise RunError(f"{run.path} holds {meta['model']['name']} {meta['model']['config']}; "
                       f"cannot resume it as {model_name} {model_config}")
    if meta["graph"]["fingerprint"] != graph_fingerprint:
        raise RunError(f"{run.path} was trained on another graph or split: resume it with the "
                       f"graph file {meta['graph'].get('path')}")
    old = TrainConfig.from_dict(meta["train_config"]).to_dict()
    changed = [k for k, v in config.to_dict().items()
               if k not in TrainConfig.RESUMABLE and old.get(k) != v]
    if changed:
        raise RunError(f"cannot change {', '.join(changed)} when resuming {run.path} "
                       f"(only {', '.join(TrainConfig.RESUMABLE)} may change)")
