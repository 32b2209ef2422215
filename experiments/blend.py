"""How far apart are two trained models? Their score blend, measured on VALID only.

    python -m experiments.blend runs/quality-r3/ml-100k/seed0/lightgcn \\
        runs/quality-r3/ml-100k/seed0/ials --json experiments/results/blend_ml-100k.json

A diagnostic for a quality goal of the form "model A at ×R of model B": if even the best
blend of A's and B's scores stays below ×R of B on valid, the two models rank the same
items nearly the same way, and no setting of A alone is likely to reach ×R (a blend of
the two is at least as good as either on the data they were chosen on). It reads the two
run directories (trained on the same graph and split), z-scores each model's scores per
user over the items (so that the two scales meet), and evaluates ``w * z_A + (1 - w) *
z_B`` for each weight ``w`` on **valid** with the product's evaluator (the user's train
items excluded, full ranking). Test is never read: the weight is not chosen on it, and
the blend is not a model of the product.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from experiments.common import machine, write_json

METRICS = ("recall@20", "ndcg@20")
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


# A score at or below this marks an item the model does not rank (EASE with max_items
# gives such items -1e30): left out of a user's mean and deviation, z-scored to the user's
# lowest ranked item's.
OUTSIDE = -1e29


def zscores(user: Tensor, item: Tensor) -> Any:
    """``score(users) -> Float[B, I]``: the dot-product scores of ``users``, z-scored per
    user over the items the model ranks (a user whose scores are all equal gets zeros)."""
    def score(users: Tensor) -> Tensor:
        s = (user[users] @ item.t()).double()
        ranked = s > OUTSIDE
        n = ranked.sum(dim=1, keepdim=True).clamp(min=1)
        mean = torch.where(ranked, s, 0.0).sum(dim=1, keepdim=True) / n
        var = torch.where(ranked, (s - mean) ** 2, 0.0).sum(dim=1, keepdim=True) / n
        std = var.sqrt()
        z = torch.where(ranked, (s - mean) / torch.where(std > 0, std, 1.0), torch.inf)
        lowest = z.min(dim=1, keepdim=True).values
        return torch.where(ranked, z, lowest).float()
    return score


def blend(run_a: Path, run_b: Path, weights: tuple[float, ...] = WEIGHTS) -> dict[str, Any]:
    """Valid metrics of ``w * z_A + (1 - w) * z_B`` for each ``w`` (w = 1: A alone, w = 0:
    B alone), the best weight on valid recall@20 and its ratios over B alone."""
    from gnnrec.gnn.evaluate import Evaluator
    from gnnrec.gnn.run import Run

    a, b = Run.open(run_a), Run.open(run_b)
    fa, fb = (r.meta()["graph"]["fingerprint"] for r in (a, b))
    if fa != fb:
        raise SystemExit(f"{run_a} and {run_b} were trained on different graphs or splits")
    evaluator = Evaluator(a.graph().interactions, "valid")
    za, zb = zscores(*a.embeddings()), zscores(*b.embeddings())
    rows = []
    for w in weights:
        metrics = evaluator(lambda users, w=w: w * za(users) + (1 - w) * zb(users))
        rows.append({"weight_a": w, **{m: metrics[m] for m in METRICS}})
    alone_b = next(r for r in rows if r["weight_a"] == 0.0)
    best = max(rows, key=lambda r: r["recall@20"])
    return {"a": {"run": str(run_a), "model": a.meta()["model"]["name"]},
            "b": {"run": str(run_b), "model": b.meta()["model"]["name"]},
            "split": "valid", "blends": rows, "best": best,
            "best_over_b": {m: best[m] / alone_b[m] for m in METRICS}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path, help="the reference (ratios are over it)")
    p.add_argument("--weights", default=",".join(map(str, WEIGHTS)))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    result = blend(args.run_a, args.run_b,
                   tuple(float(w) for w in args.weights.split(",") if w.strip()))
    print(f"| weight of {result['a']['model']} | valid R@20 | valid N@20 |\n|---:|---:|---:|")
    for r in result["blends"]:
        print(f"| {r['weight_a']:g} | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} |")
    over = result["best_over_b"]
    print(f"best blend over {result['b']['model']} alone (valid): recall@20 "
          f"×{over['recall@20']:.3f}, NDCG@20 ×{over['ndcg@20']:.3f}")
    if args.json:
        write_json(args.json, {"benchmark": "blend", **result,
                               "seconds": round(time.perf_counter() - t0, 1),
                               "machine": machine()})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
