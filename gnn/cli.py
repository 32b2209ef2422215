"""``gnnrec split | train | tune | evaluate | recommend | upgrade-run | synth``: parsing only.

Each handler turns its arguments into a call of :mod:`gnnrec.gnn.jobs` and prints the
result. Heavy imports (torch, PyG) happen inside the handlers, never at import time.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from gnnrec.errors import GnnrecError

MODEL_NAMES = ("lightgcn", "xsimgcl", "graphsage", "mf", "pop", "ials", "ease")
# Model hyper-parameter flags -> constructor argument names (only passed when given).
_HYPER_FLAGS = {"embedding_dim": "embedding_dim", "num_layers": "num_layers",
                "social_weight": "social_weight", "tag_weight": "tag_weight"}
# Training flags -> TrainConfig fields (None = keep the default / the resumed value).
_TRAIN_FLAGS = ("epochs", "batch_size", "lr", "l2", "num_negatives", "negatives", "loss",
                "temperature", "patience", "eval_every", "eval_users", "seed", "device",
                "deterministic", "precision", "fit_on")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sp = sub.add_parser("split", help="add a seeded train/valid/test split to a graph file")
    sp.add_argument("--graph", required=True, help="graph file (.pt) from `gnnrec export`")
    sp.add_argument("--kind", choices=["random", "temporal"], default="random",
                    help="random per-user 80/10/10, or temporal leave-last-out")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--fractions", type=float, nargs=3, default=[0.8, 0.1, 0.1],
                    metavar=("TRAIN", "VALID", "TEST"))
    sp.add_argument("--min-interactions", type=int, default=3,
                    help="users with fewer interactions stay in train only (default 3)")
    sp.add_argument("--out", help="output graph file (default: rewrite --graph in place)")
    sp.add_argument("--format", choices=["graph", "recbole"], default="graph",
                    help="recbole: also write NAME.{train,valid,test}.inter atomic files")
    sp.add_argument("--recbole-dir", help="folder for the .inter files (RecBole data_path/NAME)")
    sp.add_argument("--name", help="RecBole dataset name (default: the graph file's stem)")
    sp.set_defaults(handler=_split)

    tr = sub.add_parser("train", help="train a recommender on a graph file into runs/NAME")
    tr.add_argument("--model", choices=MODEL_NAMES, help="required unless --resume or --final-from")
    tr.add_argument("--graph", help="graph file (required unless --resume or --final-from)")
    tr.add_argument("--out", required=True, help="run directory, e.g. runs/lightgcn")
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--batch-size", type=int)
    tr.add_argument("--lr", type=float)
    tr.add_argument("--l2", type=float, help="L2 weight on the batch's ego embeddings")
    tr.add_argument("--num-negatives", type=int)
    tr.add_argument("--negatives", choices=["uniform", "popularity"])
    tr.add_argument("--loss", choices=["bpr", "softmax", "full"],
                    help="bpr (default), sampled softmax over the --num-negatives negatives, "
                         "or full: softmax over every item (full-graph training only)")
    tr.add_argument("--temperature", type=float,
                    help="temperature of the softmax losses (default 1)")
    tr.add_argument("--patience", type=int, help="evaluations without improvement before stopping")
    tr.add_argument("--eval-every", type=int, help="epochs between valid evaluations")
    tr.add_argument("--eval-users", type=int, metavar="N",
                    help="score a seeded sample of N valid users at each evaluation "
                         "(default all; for large graphs; `gnnrec evaluate` scores all)")
    tr.add_argument("--seed", type=int)
    tr.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    tr.add_argument("--precision", choices=["fp32", "bf16"],
                    help="bf16: mixed-precision training steps (torch.autocast; float32 "
                         "weights, loss and evaluation); default fp32")
    tr.add_argument("--nondeterministic", dest="deterministic", action="store_false",
                    default=None, help="allow torch's non-deterministic kernels (faster on a "
                    "GPU; runs are then not bit-reproducible)")
    tr.add_argument("--embedding-dim", type=int)
    tr.add_argument("--num-layers", type=int)
    tr.add_argument("--social-weight", type=float, help="weight of friend edges (social LightGCN)")
    tr.add_argument("--tag-weight", type=float,
                    help="weight of item-tag edges (LightGCN with tag nodes)")
    tr.add_argument("--model-arg", action="append", default=[], metavar="NAME=VALUE",
                    help="any other constructor argument (VALUE parsed as JSON when it can be)")
    fin = tr.add_argument_group("final fit (after selection on valid)")
    fin.add_argument("--final-from", metavar="RUN",
                     help="train RUN's model and settings again on train + valid for RUN's "
                          "best epoch count (no validation, the last epoch is kept): the "
                          "model to deploy once valid has chosen; test stays held out")
    fin.add_argument("--fit-on", choices=["train", "train+valid"],
                     help="train+valid: a final fit for exactly --epochs epochs (what "
                          "--final-from sets); default train, with valid early stopping")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.add_argument("--threads", type=int, help="CPU threads for torch (1 = bit-reproducible)")
    mb = tr.add_argument_group("mini-batch training (sampled subgraphs; graphsage, lightgcn)")
    mb.add_argument("--minibatch", action="store_true",
                    help="train on sampled link batches instead of the full graph")
    mb.add_argument("--num-neighbors", type=int, nargs="+", metavar="K",
                    help="fan-out per layer (default 10 then 5s; -1 = all neighbours)")
    mb.add_argument("--sampler", choices=["inprocess", "ray"],
                    help="who samples the batches (default inprocess)")
    mb.add_argument("--sampler-workers", type=int, help="Ray sampler actors (default 2)")
    mb.add_argument("--sample-ahead", type=int, metavar="N",
                    help="in-process sampler: steps sampled in a background thread while "
                         "the model trains (default 1; 0 = none: less memory, slower)")
    mb.add_argument("--sampler-resources", type=_resources, metavar="JSON",
                    help='custom Ray resources per sampler actor, e.g. \'{"sampler": 1}\' '
                         "(actors only on nodes started with them; spread over the nodes)")
    mb.add_argument("--keep-memory", action="store_true", default=None,
                    help="keep freed memory for the next step (glibc): faster steps, "
                         "higher peak RSS")
    dist = tr.add_argument_group("distributed training (Ray Train, DDP)")
    dist.add_argument("--workers", type=int, help="Ray Train workers (default: one process)")
    dist.add_argument("--gpus-per-worker", type=float, default=0.0,
                      help="GPUs per worker (> 0: nccl, else CPU + gloo)")
    dist.add_argument("--cpus-per-worker", type=float, help="default: cluster CPUs / workers")
    dist.add_argument("--address", help="Ray cluster to join (auto, ray://HOST:10001; "
                      "default RAY_ADDRESS, else a local Ray)")
    dist.add_argument("--storage-path", help="Ray Train checkpoints (default RUN/ray_train; "
                      "a shared path or s3:// on a multi-node cluster)")
    dist.add_argument("--max-failures", type=int, default=2,
                      help="worker-group restarts from the last checkpoint (a lost worker "
                           "process or node counts one)")
    dist.add_argument("--placement-strategy", default="PACK",
                      choices=["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"],
                      help="where the workers go (default PACK; STRICT_SPREAD: one per node)")
    dist.add_argument("--worker-resources", type=_resources, metavar="JSON",
                      help='custom Ray resources per worker, e.g. \'{"trainer": 1}\'')
    tr.set_defaults(handler=_train)

    tu = sub.add_parser("tune", help="tune a model's hyper-parameters on valid with Ray Tune "
                        "(ASHA); the best configuration becomes a run directory")
    tu.add_argument("--model", required=True,
                    help=f"one of {', '.join(MODEL_NAMES)}; several separated by commas, or "
                    "all: each is tuned with the same budget and the best on valid selected")
    tu.add_argument("--graph", required=True, help="split graph file (`gnnrec split`)")
    tu.add_argument("--out", required=True, help="run directory of the best configuration; "
                    "trials.csv, trials.json and curves.png are written there too (several "
                    "models: OUT/MODEL each, OUT/best links to the best, families.csv)")
    tu.add_argument("--space", help="YAML file replacing entries of the model's search space "
                    "(several models: a mapping of model names to their entries)")
    tu.add_argument("--trials", type=int, default=16, help="configurations tried (default 16)")
    tu.add_argument("--max-evaluations", type=int, default=40,
                    help="valid evaluations a trial may reach (ASHA max_t; default 40)")
    tu.add_argument("--eval-every", type=int, default=5,
                    help="epochs between evaluations (iALS/EASE: every step; default 5)")
    tu.add_argument("--grace", type=int, default=4,
                    help="evaluations before ASHA may stop a trial (default 4)")
    tu.add_argument("--reduction-factor", type=int, default=3, help="ASHA's (default 3)")
    tu.add_argument("--patience", type=int, default=6,
                    help="a trial's evaluations without improvement before it stops (default 6)")
    tu.add_argument("--metric", default="recall@20", help="valid metric to maximise")
    tu.add_argument("--seed", type=int, default=0, help="seed of the search and of every trial")
    tu.add_argument("--cpus-per-trial", type=int, default=1,
                    help="CPUs (and threads) per trial (default 1)")
    tu.add_argument("--gpus-per-trial", type=float, default=0.0)
    tu.add_argument("--concurrency", type=int, help="trials at once (default: CPUs / "
                    "cpus-per-trial)")
    tu.add_argument("--address", help="Ray cluster to join (auto, ray://HOST:10001; default "
                    "RAY_ADDRESS, else a local Ray)")
    tu.add_argument("--storage-path", help="experiment folder (default OUT/tune; a shared "
                    "path on a multi-node cluster)")
    tu.add_argument("--resume", action="store_true",
                    help="continue an interrupted experiment (Tuner.restore)")
    tu.add_argument("--overwrite", action="store_true", help="start the experiment again")
    tu.add_argument("--no-progress", action="store_true", help="no progress table")
    tu.add_argument("--json", action="store_true", help="print the summary as JSON")
    tu.set_defaults(handler=_tune)

    ev = sub.add_parser("evaluate", help="full-ranking metrics of a run on valid or test")
    ev.add_argument("run", help="run directory")
    ev.add_argument("--split", choices=["valid", "test"], default="valid")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--batch-size", type=int, help="users per scoring batch")
    ev.add_argument("--threads", type=int, help="CPU threads for torch")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(handler=_evaluate)

    rc = sub.add_parser("recommend", help="top-k unseen items for one user of a run or server")
    rc.add_argument("user", help="external user id")
    rc.add_argument("-k", type=int, default=10)
    where = rc.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", help="run directory: score in this process")
    where.add_argument("--server", help="URL of a `gnnrec serve` application, e.g. "
                       "http://127.0.0.1:8000 (sees online feedback and new users)")
    rc.add_argument("--device", default="cpu")
    rc.add_argument("--json", action="store_true")
    rc.set_defaults(handler=_recommend)

    up = sub.add_parser("upgrade-run", help="make a version-1 run self-contained (reads its "
                        "graph file one last time)")
    up.add_argument("run", help="run directory")
    up.add_argument("--graph", help="graph file it was trained on (default: the recorded one)")
    up.set_defaults(handler=_upgrade_run)

    sy = sub.add_parser("synth", aliases=["synth-graph"],
                        help="write a seeded synthetic graph file in the export format (no Neo4j)")
    sy.add_argument("--out", required=True)
    sy.add_argument("--num-users", "--users", dest="users", type=int, default=1000)
    sy.add_argument("--num-items", "--items", dest="items", type=int, default=500)
    sy.add_argument("--tags", type=int, default=40)
    sy.add_argument("--communities", type=int, default=8)
    sy.add_argument("--mean-interactions", type=float, default=20.0)
    sy.add_argument("--friends", type=float, default=4.0, help="mean friends per user")
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--split", choices=["random", "temporal", "none"], default="random")
    sy.set_defaults(handler=_synth)


def _resources(text: str) -> dict[str, float]:
    """``'{"name": amount}'`` -> custom Ray resources (argparse type)."""
    try:
        value = json.loads(text)
        if not isinstance(value, dict) or not value:
            raise ValueError
        return {str(k): float(v) for k, v in value.items()}
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object of resource names and amounts, got {text!r}") from None


def parse_model_arg(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise GnnrecError(f"--model-arg {text!r}: expected NAME=VALUE")
    try:
        return name.replace("-", "_"), json.loads(raw)
    except json.JSONDecodeError:
        return name.replace("-", "_"), raw


def _split(args: argparse.Namespace) -> int:
    from gnnrec.gnn.jobs import split_graph

    if args.format == "recbole" and not args.recbole_dir:
        raise GnnrecError("--format recbole needs --recbole-dir DIR")
    print(json.dumps(split_graph(
        args.graph, args.kind, seed=args.seed, fractions=tuple(args.fractions),
        min_interactions=args.min_interactions, out=args.out,
        write_graph=args.format == "graph",
        recbole_dir=args.recbole_dir if args.format == "recbole" else None, name=args.name)))
    return 0


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise GnnrecError(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


def _train(args: argparse.Namespace) -> int:
    from gnnrec.gnn.jobs import TrainJob, run_train

    _set_threads(args.threads)
    hyper = {arg: getattr(args, flag) for flag, arg in _HYPER_FLAGS.items()
             if getattr(args, flag) is not None}
    hyper.update(parse_model_arg(a) for a in args.model_arg)
    sampling = {k: v for k, v in (("num_neighbors", args.num_neighbors),
                                  ("sampler", args.sampler),
                                  ("sampler_workers", args.sampler_workers),
                                  ("keep_memory", args.keep_memory),
                                  ("ahead", args.sample_ahead)) if v is not None}
    ray_train = None if args.workers is None else {
        "num_workers": args.workers, "gpus_per_worker": args.gpus_per_worker,
        "cpus_per_worker": args.cpus_per_worker, "storage_path": args.storage_path,
        "max_failures": args.max_failures, "placement_strategy": args.placement_strategy,
        "resources_per_worker": args.worker_resources}
    job = TrainJob(out=args.out, model=args.model, graph=args.graph, hyper=hyper,
                   train={f: getattr(args, f) for f in _TRAIN_FLAGS
                          if getattr(args, f) is not None},
                   resume=args.resume, overwrite=args.overwrite, minibatch=args.minibatch,
                   sampling=sampling, sampler_resources=args.sampler_resources,
                   ray_train=ray_train, address=args.address, progress=not args.no_progress,
                   final_from=args.final_from)
    model_name, result, config = run_train(job)
    if config.final:
        print(f"{model_name}: final fit on train+valid, {result.best_epoch} epochs; run in "
              f"{args.out}. Test it once with: gnnrec evaluate {args.out} --split test")
        return 0
    metric = result.best_valid.get(config.metric, float("nan"))
    print(f"{model_name}: best epoch {result.best_epoch} ({result.stopped}), valid "
          f"{config.metric} {metric:.4f}; run in {args.out}. Test it once with: "
          f"gnnrec evaluate {args.out} --split test")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from gnnrec.gnn.tune import (
        TuneResources,
        TuneSettings,
        describe,
        describe_families,
        family_spaces,
        load_space,
        parse_families,
        tune_families,
        tune_model,
    )

    settings = TuneSettings(trials=args.trials, max_evaluations=args.max_evaluations,
                            eval_every=args.eval_every, grace=args.grace,
                            reduction_factor=args.reduction_factor, patience=args.patience,
                            metric=args.metric, seed=args.seed)
    resources = TuneResources(cpus_per_trial=args.cpus_per_trial,
                              gpus_per_trial=args.gpus_per_trial, concurrency=args.concurrency,
                              address=args.address, storage_path=args.storage_path)
    families = parse_families(args.model)
    spaces = family_spaces(families, load_space(args.space) if args.space else None)
    if len(families) > 1:
        selection = tune_families(
            families, args.graph, args.out, settings, resources, spaces=spaces,
            resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
            tuned=None if args.json else lambda summary: print(describe(summary), flush=True))
        print(json.dumps(selection) if args.json else describe_families(selection))
        return 0
    summary = tune_model(families[0], args.graph, args.out, settings, resources,
                         space=spaces[families[0]], resume=args.resume,
                         overwrite=args.overwrite, progress=not args.no_progress)
    print(json.dumps(summary) if args.json else describe(summary))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from gnnrec.gnn.jobs import evaluate_run

    _set_threads(args.threads)
    metrics = evaluate_run(args.run, args.split, device=args.device, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(metrics))
    else:
        width = max(len(k) for k in metrics)
        for key, value in metrics.items():
            print(f"{key.ljust(width)}  {value:.6g}")
    return 0


def _recommend(args: argparse.Namespace) -> int:
    if args.server:
        # The HTTP client is stdlib-only; imported here so gnn/ never needs serve/.
        from gnnrec.serve.client import recommend_via_server

        answer = recommend_via_server(args.server, args.user, args.k)
        if args.json:
            print(json.dumps(answer))
        else:
            for rank, r in enumerate(answer["items"], start=1):
                print(f"{rank:>3}  {r['item']}  {r['score']:.4f}")
        return 0
    from gnnrec.gnn.jobs import recommender_of_run

    ranker, _, _ = recommender_of_run(args.run, device=args.device)
    recs = ranker.recommend(args.user, args.k)
    if args.json:
        print(json.dumps({"user": args.user, "items": [r.to_dict() for r in recs]}))
    else:
        for r in recs:
            print(f"{r.rank:>3}  {r.item}  {r.score:.4f}")
    return 0


def _upgrade_run(args: argparse.Namespace) -> int:
    from gnnrec.gnn.run import upgrade_run

    meta = upgrade_run(args.run, args.graph)
    print(f"{args.run}: upgraded to {meta['format']}; it no longer reads its graph file")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from gnnrec.gnn.jobs import synth

    print(json.dumps(synth(args.out, users=args.users, items=args.items, tags=args.tags,
                           communities=args.communities,
                           mean_interactions=args.mean_interactions, friends=args.friends,
                           seed=args.seed, split=args.split)))
    return 0
