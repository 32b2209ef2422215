"""The training loop: one :func:`fit` for full-graph, mini-batch and each Ray Train worker.

::

    for epoch in range(start, epochs + 1):
        for inputs, users, pos, neg in batches(epoch):      # full graph, or sampled blocks
            bpr, reg = ranking_loss(model(inputs), users, pos, neg)   # RankingStep
            Adam step on bpr + l2 * reg
        every eval_every epochs (and the last): score valid, keep the best weights,
        checkpoint, stop after `patience` evaluations without improvement

The batches decide what a step sees (:mod:`gnnrec.gnn.batches`): ``FullBatches`` visits
every train ``(user, positive)`` edge once per epoch in a seeded random order, with
``num_negatives`` sampled negatives per positive (never a train item of the user), and
passes the model's full-graph inputs; ``SampledBatches`` passes the block of each
sampled subgraph (mini-batch training). ``bpr`` is the mean BPR loss and ``reg`` the
unscaled L2 term of the batch's ego embeddings (``loss="softmax"``: sampled softmax of
each positive against its negatives instead of BPR, scores divided by ``temperature``;
``loss="full"``: softmax of each positive against every item, full-graph training only).
A :class:`Session` decides where the loop starts from and what it writes: a run directory
(``model.pt`` on improvement, ``last.pt`` and meta at each evaluation) here, Ray Train's
checkpoints in ``gnnrec.gnn.distributed`` (which also wraps the step in DDP and
evaluates on rank 0). A model without trainable parameters takes no step: its
``solve(view, epoch)`` runs instead (closed form, ALS sweeps) until it reports
``converged``, evaluated on valid every ``eval_every`` epochs like the trained models (so an
iALS trial of the tuner gets the same epoch budget and ASHA rungs); a model with neither is
evaluated once.

All randomness after model construction comes from generators seeded by ``seed`` (the
global torch RNG state, which dropout uses, is checkpointed too), so a run is
reproducible on CPU and a resumed run (``last.pt``) ends where an uninterrupted one would:
bit for bit on CPU with any number of threads, because :func:`seed_everything` selects
torch's deterministic kernels.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData
from tqdm.auto import tqdm

from gnnrec.errors import GnnrecError
from gnnrec.gnn.allocator import bound_onednn_caches
from gnnrec.gnn.data import VALID
from gnnrec.gnn.evaluate import Evaluator, dot_scores
from gnnrec.gnn.metrics import CATALOGUE_METRICS, USER_METRICS
from gnnrec.gnn.models.base import LOSSES
from gnnrec.gnn.run import Run, RunError
from gnnrec.gnn.views import TrainView

Step = tuple[Any, Tensor, Tensor, Tensor]  # (model inputs, users, positives, negatives)
# (the model's full-graph inputs, device) -> a batch source: epoch -> that epoch's steps
Batches = Callable[[Any, torch.device], Callable[[int], Iterable[Step]]]


PRECISIONS = ("fp32", "bf16")
FIT_ON = ("train", "train+valid")
# What a final fit (fit_on train+valid) "validates" at each checkpoint: the epochs trained,
# so that the last epoch is always the best and nothing stops early.
EPOCHS_TRAINED = "epochs_trained"


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
    # softmax: sampled softmax over the negatives; full: softmax over every item
    loss: Literal["bpr", "softmax", "full"] = "bpr"
    temperature: float = 1.0  # divides the scores in the softmax losses
    patience: int = 10  # evaluations without improvement before stopping
    eval_every: int = 1  # epochs between valid evaluations
    metric: str = "recall@20"
    eval_batch_size: int | None = None
    # valid users scored at each evaluation: a seeded sample of this many (None: every
    # valid user). For graphs where ranking every item for every user takes too long.
    eval_users: int | None = None
    seed: int = 0
    device: str = "auto"  # "auto" = cuda when available, else cpu
    # torch's deterministic kernels (see seed_everything); False trades reproducibility
    # for the faster non-deterministic scatter / index-add kernels of a GPU.
    deterministic: bool = True
    # bf16: a training step's forward runs under torch.autocast(bfloat16) (matrix products
    # in bf16; GraphSAGE's layers entirely), the loss, the weights, their gradients, Adam
    # and evaluation stay float32 (see RankingStep, which also turns off oneDNN's
    # per-shape caches: with them a bf16 epoch's memory grew at every step).
    precision: Literal["fp32", "bf16"] = "fp32"
    # train+valid: a final fit on the train and valid interactions for exactly ``epochs``
    # epochs, once valid has chosen the settings and the epoch count: no valid evaluation,
    # no early stopping, the last epoch's weights are the model (the caller merges valid
    # into train: gnnrec.gnn.split.merge_valid, which `gnnrec train` applies).
    fit_on: Literal["train", "train+valid"] = "train"

    # Settings that may change when resuming a run (the rest must match).
    RESUMABLE = ("epochs", "patience", "eval_every", "device", "eval_batch_size",
                 "deterministic", "precision")

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
        if self.precision not in PRECISIONS:
            raise TrainingError(f"precision must be one of {', '.join(PRECISIONS)}, "
                                f"not {self.precision!r}")
        if self.eval_users is not None and self.eval_users < 1:
            raise TrainingError(f"eval_users must be at least 1, got {self.eval_users}")
        if self.fit_on not in FIT_ON:
            raise TrainingError(f"fit_on must be one of {', '.join(FIT_ON)}, not {self.fit_on!r}")

    @property
    def final(self) -> bool:
        """A final fit on train + valid (no validation; see ``fit_on``)."""
        return self.fit_on == "train+valid"

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
    # "max_epochs" | "early_stopping" | "converged" (a solved model) | "no_parameters"
    stopped: str = "max_epochs"


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
    # Deterministic mode also fills every new uninitialised tensor with NaN (a guard for
    # reads of uninitialised memory, not part of the reproducibility): measured as the
    # largest single cost of a 10M-interaction mini-batch GraphSAGE step (embedding_bag
    # and sparse conversions allocate hundreds of large buffers per step). Off.
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]


def cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def rng_state(batches: Any = None) -> dict[str, Any]:
    """The RNG states a checkpoint keeps: torch's (and CUDA's) and the batches' own."""
    state = {"torch": torch.get_rng_state(), **(batches.state_dict() if batches else {})}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


class RankingStep(nn.Module):
    """``forward(inputs, users, pos, neg) -> (loss, l2)``: the model's forward on its
    inputs (the full graph's or a sampled block's), then the model's ``loss`` (the ranking
    loss, plus the model's own terms) on the rows ``users`` / ``pos`` (Long[B]) and ``neg``
    (Long[B, K]) index. This is the module DDP wraps: its only parameters are the model's.

    ``precision="bf16"``: the forward runs under ``torch.autocast`` in bfloat16 on the
    parameters' device, and its float outputs come back as float32 for the loss (mixed
    precision: float32 weights, gradients and optimiser; bf16 products in between)."""

    def __init__(self, model: nn.Module, loss: str = "bpr", temperature: float = 1.0,
                 precision: str = "fp32") -> None:
        super().__init__()
        self.model, self.loss, self.temperature = model, loss, temperature
        self.precision = precision
        if precision == "bf16":  # its products go through oneDNN: no per-shape caches
            bound_onednn_caches()

    def forward(self, inputs: Any, users: Tensor, pos: Tensor,
                neg: Tensor) -> tuple[Tensor, Tensor]:
        if self.precision == "fp32":
            out = self.model(inputs)
        else:
            device = next(self.model.parameters()).device.type
            with torch.autocast(device, dtype=torch.bfloat16):
                out = self.model(inputs)
            out = _float32(out)
        return self.model.loss(out, users, pos,  # type: ignore[operator]
                               neg.view(neg.size(0), -1), self.loss, self.temperature)


def _float32(value: Any) -> Any:
    """``value`` (a tensor, or a tuple, named tuple or dict of them) with its
    lower-precision float tensors as float32."""
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _float32(v) for k, v in value.items()}
    if isinstance(value, tuple):
        items = [_float32(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    return value


class Adam(torch.optim.Adam):
    """torch's Adam (fused kernel where it applies) that also takes row-sparse gradients.

    A sampled step touches only its block's rows of an embedding table; an embedding
    gathered with ``sparse=True`` (:attr:`Recommender.sparse_grads`) gets a sparse COO
    gradient of those rows instead of a dense one the size of the table (768 MB for 3M
    64-d nodes). Such a parameter gets the **dense** Adam update all the same (not lazy
    Adam): every row's moments decay, the touched rows add their gradient, and every row
    moves, as if the untouched rows had a zero gradient::

        m = b1 m;  m[rows] += (1 - b1) g          v = b2 v;  v[rows] += (1 - b2) g^2
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    in place and by chunks of rows (no temporary the size of the table). Dense
    gradients go to torch's step. The state (``step``, ``exp_avg``, ``exp_avg_sq``) has
    torch's keys and layout, so checkpoints load in either.
    """

    CHUNK_ROWS = 1 << 16

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        sparse: list[tuple[dict[str, Any], Tensor, Tensor]] = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    sparse.append((group, p, p.grad))
                    p.grad = None  # torch's step skips it
        loss = super().step(closure)
        for group, p, grad in sparse:
            self._sparse_step(group, p, grad)
            p.grad = grad
        return loss

    def _sparse_step(self, group: dict[str, Any], p: Tensor, grad: Tensor) -> None:
        if group["amsgrad"] or group["weight_decay"] or group["maximize"]:
            raise ValueError("row-sparse gradients take plain Adam only")
        beta1, beta2 = group["betas"]
        state = self.state[p]
        if not state:
            fused = bool(group.get("fused"))
            state["step"] = torch.zeros((), dtype=torch.float32 if fused else
                                        torch.get_default_dtype(), device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        t = float(state["step"])
        m, v = state["exp_avg"], state["exp_avg_sq"]
        grad = grad.coalesce()  # one row per index: v takes the square of the summed row
        rows, g = grad.indices()[0], grad.values()
        m.mul_(beta1).index_add_(0, rows, g, alpha=1 - beta1)
        v.mul_(beta2).index_add_(0, rows, g * g, alpha=1 - beta2)
        step_size = float(group["lr"]) / (1 - beta1 ** t)
        bias2_sqrt = math.sqrt(1 - beta2 ** t)
        for a in range(0, p.size(0), self.CHUNK_ROWS):
            b = a + self.CHUNK_ROWS
            denom = v[a:b].sqrt().div_(bias2_sqrt).add_(group["eps"])
            p[a:b].addcdiv_(m[a:b], denom, value=-step_size)


def adam(params: Iterable[Tensor], lr: float) -> Adam:
    """The optimiser of gradient training: :class:`Adam`, by torch's fused kernel on CPU
    and CUDA parameters (one pass over each tensor: 8x the default's speed on 38M CPU
    parameters, the same update up to float rounding), row-sparse gradients by chunks."""
    params = list(params)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                 for p in params)
    return Adam(params, lr=lr, fused=fused or None)


def run_epoch(step: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Step],
              l2: float, *, max_batches: int | None = None) -> dict[str, float]:
    """One pass over ``batches``: (bpr, reg, loss means weighted by batch size, batches)."""
    sums: Tensor | None = None  # on the loss's device: no synchronisation per step
    count = seen = 0
    for inputs, users, pos, neg in batches:
        bpr, reg = step(inputs, users, pos, neg)
        loss = bpr + l2 * reg
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # no gradient held through the next forward
        b = int(users.numel())
        part = torch.stack([bpr.detach(), reg.detach()]).double() * b
        sums = part if sums is None else sums + part
        del inputs, users, pos, neg, bpr, reg, loss  # a block is freed before the next one
        count, seen = count + b, seen + 1
        if max_batches is not None and seen >= max_batches:
            break
    total = sums.cpu() if sums is not None else torch.zeros(2, dtype=torch.float64)
    bpr_mean, reg_mean = (total / max(count, 1)).tolist()
    return {"bpr": bpr_mean, "reg": reg_mean, "loss": bpr_mean + l2 * reg_mean,
            "batches": seen, "positives": count}


class EarlyStopping:
    """Best-epoch bookkeeping: the per-epoch ``history``, the best ``metric`` so far, its
    epoch and weights, and the evaluations without improvement (``bad``)."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.history: list[dict[str, Any]] = []
        self.best_metric, self.best_epoch, self.bad = -math.inf, 0, 0
        self.best_state: dict[str, Tensor] | None = None

    @property
    def should_stop(self) -> bool:
        return self.bad >= self.config.patience

    def evaluates(self, epoch: int) -> bool:
        """Whether ``epoch`` scores valid: every ``eval_every`` epochs and the last one."""
        return epoch % self.config.eval_every == 0 or epoch == self.config.epochs

    def observe(self, epoch: int, value: float, model: nn.Module | None) -> None:
        """A valid evaluation of ``metric`` at ``epoch``: on improvement keep ``model``'s
        weights (when given)."""
        if value > self.best_metric:
            self.best_metric, self.best_epoch, self.bad = value, epoch, 0
            if model is not None:
                self.best_state = cpu_state(model)
        else:
            self.bad += 1

    def state(self) -> dict[str, Any]:
        """The bookkeeping fields a checkpoint stores (:meth:`load_state` reads them)."""
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch, "bad": self.bad,
                "history": self.history, "train_config": self.config.to_dict()}

    def load_state(self, ckpt: dict[str, Any], best_state: dict[str, Tensor] | None) -> int:
        """Take the bookkeeping fields of a checkpoint and the best weights; returns the
        epoch to start from (past the last one when the run had already stopped early)."""
        self.history = list(ckpt["history"])
        self.best_metric, self.best_epoch = ckpt["best_metric"], ckpt["best_epoch"]
        self.bad, self.best_state = ckpt["bad"], best_state
        return self.config.epochs + 1 if self.should_stop else int(ckpt["epoch"]) + 1


class Session:
    """Where :func:`fit` starts from and what it writes: a run directory, or nothing.

    ``resume`` continues the run from its ``last.pt``. A Ray Train worker uses
    ``gnnrec.gnn.distributed.WorkerSession`` instead (DDP, rank-0 evaluation, checkpoints
    reported to Ray Train).
    """

    desc = "train"
    where = ""  # names the process in error messages (a Ray Train worker: its rank)
    extra: dict[str, Any] = {}  # noqa: RUF012 - fields added to every history record

    def __init__(self, run: Run | None = None, *, resume: bool = False,
                 progress: bool = True) -> None:
        self.run, self.resume, self.progress = run, resume, progress
        self.keeps_best = True

    def device(self, config: TrainConfig) -> torch.device:
        return resolve_device(config.device)

    def wrap(self, step: nn.Module) -> nn.Module:
        """The step the loop calls. Here a block's embedding gradients are row-sparse
        (:attr:`Recommender.sparse_grads`, applied by :class:`Adam`; full-graph steps
        read whole tables and stay dense); DDP's ``WorkerSession`` keeps them dense."""
        model = getattr(step, "model", None)
        if model is not None and hasattr(model, "sparse_grads"):
            model.sparse_grads = True
        return step

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer | None,
              stopping: EarlyStopping, batches: Any, config: TrainConfig) -> int:
        """Resume (model, optimiser, bookkeeping, RNGs) when asked; the first epoch."""
        first = 1
        if self.resume:
            ckpt = self.run.load_last() if self.run is not None else None
            if ckpt is None:
                raise TrainingError("nothing to resume: the run has no last.pt yet")
            model.load_state_dict(ckpt["model"])
            if optimizer is not None:
                optimizer.load_state_dict(ckpt["optimizer"])
            best = self.run.load_model_state() if ckpt["best_epoch"] else None  # type: ignore[union-attr]
            first = stopping.load_state(ckpt, best)
            torch.set_rng_state(ckpt["rng"]["torch"])
            if batches is not None:
                batches.load_state_dict(ckpt["rng"])
            if "cuda" in ckpt["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        if self.run is not None:
            self.run.update_meta(status="running", train_config=config.to_dict())
        return first

    def begin_epoch(self, epoch: int) -> None:
        pass

    def validate(self, evaluate: Callable[[], dict[str, float]],
                 metric: str) -> tuple[float, dict[str, float] | None]:
        metrics = evaluate()
        return metrics[metric], metrics

    def checkpoint(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                   stopping: EarlyStopping, stopped: str, rng: dict[str, Any],
                   embeddings: tuple[Tensor, Tensor] | None = None) -> None:
        """After an evaluation: when they improved, the best weights (``model.pt``) and
        their final embeddings (``embeddings``, the ones just evaluated); the resume
        checkpoint (``last.pt``) and the progress in meta."""
        if self.run is None:
            return
        if stopping.best_epoch == epoch and stopping.best_state is not None:
            self.run.save_model(stopping.best_state)
            if embeddings is not None:
                self.run.save_embeddings(*embeddings)
        self.run.save_last({"epoch": epoch, "model": cpu_state(model),
                            "optimizer": optimizer.state_dict() if optimizer else {},
                            "rng": rng, **stopping.state()})
        self.run.update_meta(history=stopping.history, best_epoch=stopping.best_epoch,
                             best_valid=valid_of(stopping.history, stopping.best_epoch))

    def finish(self, model: nn.Module, stopping: EarlyStopping, stopped: str) -> TrainResult:
        """Load the best weights into ``model`` (eval mode) and write the final meta."""
        if stopping.best_state is None:
            raise TrainingError("no evaluation happened: no best model to keep")
        model.load_state_dict(stopping.best_state)
        model.eval()
        best_valid = valid_of(stopping.history, stopping.best_epoch)
        if self.run is not None:
            self.run.update_meta(status="finished", stopped=stopped, history=stopping.history,
                                 best_epoch=stopping.best_epoch, best_valid=best_valid,
                                 metrics={"valid": best_valid} if best_valid else {})
        return TrainResult(stopping.best_epoch, best_valid, stopping.history, stopped)


def fit(model: nn.Module, view: TrainView, config: TrainConfig, *,
        batches: Batches | None = None, session: Session | None = None,
        report: Callable[[int, dict[str, float]], None] | None = None,
        sampled: bool = False) -> TrainResult:
    """Train ``model`` (built for ``view.sizes``) on the train view; the best weights are
    loaded on return (eval mode). ``batches(inputs, device)`` makes the batch source
    (default: the full-graph :class:`~gnnrec.gnn.batches.FullBatches`); ``report(epoch,
    valid_metrics)`` is called after every valid evaluation (the tuner's hook).
    ``sampled``: the batches are sampled blocks; they get the model's ``block_inputs``,
    and the full-graph inputs exist only while an evaluation runs (on a big graph they
    are the largest structure after the model)."""
    from gnnrec.gnn.batches import FullBatches  # batches imports this module

    config.validate()
    session = session or Session()
    device = session.device(config)
    model.to(device)

    def full_inputs() -> Any:
        made = model.inputs(view)
        return made.to(device) if made is not None else None

    light = getattr(model, "block_inputs", None) if sampled else None
    inputs = None if light is not None else full_inputs()
    batch_inputs = inputs if light is None else light(view)
    if light is not None and batch_inputs is not None:
        batch_inputs = batch_inputs.to(device)
    evaluator = None if config.final else Evaluator(view, "valid",
                                                    batch_size=config.eval_batch_size)
    if config.final and (view.interactions.split == VALID).any():
        raise TrainingError("a final fit (fit_on train+valid) trains on valid: merge it into "
                            "train first (gnnrec.gnn.split.merge_valid)")
    eval_users = evaluator.sample_users(config.eval_users, config.seed) if evaluator else None
    evaluated: list[tuple[Tensor, Tensor]] = []  # the embeddings last scored on valid

    def evaluate() -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            out = model(inputs if light is None else full_inputs())
        evaluated[:] = [(out.user, out.item)]
        if evaluator is None:  # a final fit: the last epoch is the model
            metrics = {EPOCHS_TRAINED: float(stopping.history[-1]["epoch"])}
        else:
            metrics = evaluator(dot_scores(out.user, out.item), device=device, users=eval_users)
        model.train()
        return metrics

    trainable = getattr(model, "trainable", True)
    params = [p for p in model.parameters() if p.requires_grad] if trainable else []
    solves = not params and callable(getattr(model, "solve", None))
    metric = EPOCHS_TRAINED if evaluator is None else config.metric
    if evaluator is not None and metric not in metric_keys(evaluator):
        raise TrainingError(f"metric {config.metric!r} is not computed; use e.g. recall@20")
    stopping = EarlyStopping(config)
    if not params and not solves:  # nothing to fit (a stand-in model): evaluated once
        return _evaluate_only(model, stopping, session, evaluate, evaluated, metric)
    optimizer = adam(params, config.lr) if params else None
    make = batches or (lambda inputs, device: FullBatches(view, config, inputs, device))
    source = make(batch_inputs, device) if optimizer is not None else None
    step = session.wrap(RankingStep(model, config.loss, config.temperature,
                                    config.precision).to(device))
    start = session.start(model, optimizer, stopping, source, config)
    stopped = "max_epochs"
    model.train()
    bar = tqdm(range(start, config.epochs + 1), desc=session.desc, unit="epoch",
               disable=not session.progress, initial=start - 1, total=config.epochs)
    for epoch in bar:
        session.begin_epoch(epoch)
        t0 = time.perf_counter()
        if optimizer is not None:
            stats = run_epoch(step, optimizer, source(epoch), config.l2)  # type: ignore[misc]
        else:
            stats = model.solve(view, epoch)  # type: ignore[operator]
        loss = stats.get("loss", 0.0)
        if not math.isfinite(loss):
            raise TrainingError(f"training diverged at epoch {epoch}{session.where}: the loss "
                                f"is {loss} (bpr {stats.get('bpr')}, reg {stats.get('reg')}); "
                                "lower --lr or check the model")
        record: dict[str, Any] = {"epoch": epoch, **{k: v for k, v in stats.items()
                                                     if k != "positives"}, **session.extra,
                                  "seconds": round(time.perf_counter() - t0, 4)}
        stopping.history.append(record)
        converged = stats.get("converged", 0) > 0
        # a solved model is evaluated like a trained one (every eval_every sweeps, the last
        # one) and when it reports convergence
        if not stopping.evaluates(epoch) and not converged:
            bar.set_postfix(loss=f"{loss:.4f}")
            continue
        value, metrics = session.validate(evaluate, metric)
        if metrics is not None and evaluator is not None:
            record["valid"] = metrics
        stopping.observe(epoch, value, model if session.keeps_best else None)
        if stopping.should_stop or converged:
            stopped = "converged" if converged else "early_stopping"
        session.checkpoint(epoch, model, optimizer, stopping, stopped, rng_state(source),
                           evaluated[0] if evaluated else None)
        if report is not None and metrics is not None and evaluator is not None:
            report(epoch, metrics)
        bar.set_postfix({"loss": f"{loss:.4f}", metric: f"{value:.4f}"})
        if stopped != "max_epochs":
            break
    bar.close()
    if hasattr(model, "sparse_grads"):
        model.sparse_grads = False
    return session.finish(model, stopping, stopped)


def _evaluate_only(model: nn.Module, stopping: EarlyStopping, session: Session,
                   evaluate: Callable[[], dict[str, float]],
                   evaluated: list[tuple[Tensor, Tensor]], metric: str) -> TrainResult:
    record: dict[str, Any] = {"epoch": 0}
    stopping.history.append(record)
    value, metrics = session.validate(evaluate, metric)
    if metric != EPOCHS_TRAINED:
        record["valid"] = metrics
    stopping.observe(0, value, model)
    session.checkpoint(0, model, None, stopping, "no_parameters", rng_state(), evaluated[0])
    return session.finish(model, stopping, "no_parameters")


def train(model: nn.Module, graph: HeteroData | TrainView, config: TrainConfig, *,
          run: Run | None = None, resume: bool = False, progress: bool = True,
          report: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Full-graph :func:`fit` of ``model`` on ``graph``'s train view (``graph`` must carry a
    split). With ``run``, the best model, its final embeddings, the resume checkpoint and
    the metadata are written there after every evaluation; ``resume`` continues from its
    ``last.pt``; ``report`` as :func:`fit`'s."""
    view = graph if isinstance(graph, TrainView) else TrainView.from_graph(graph)
    return fit(model, view, config, session=Session(run, resume=resume, progress=progress),
               report=report)


def valid_of(history: list[dict[str, Any]], epoch: int) -> dict[str, float]:
    """The valid metrics recorded for ``epoch`` ({} when it was not evaluated)."""
    return next((r["valid"] for r in history if r["epoch"] == epoch and "valid" in r), {})


def metric_keys(evaluator: Evaluator) -> set[str]:
    return {f"{m}@{k}" for m in (*USER_METRICS, *CATALOGUE_METRICS) for k in evaluator.ks}


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
