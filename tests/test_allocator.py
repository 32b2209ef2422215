"""Keeping freed memory for the next step (glibc's mallopt): fewer page faults, same steps.

The setting is process-wide, so every check runs in a child process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from torch_geometric.data import HeteroData

from gnnrec.gnn.allocator import keep_freed_memory
from gnnrec.gnn.generators import synthetic_graph
from gnnrec.gnn.graph_file import save_graph
from gnnrec.gnn.split import apply_split

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

FAULTS = """
import resource, sys, torch
from gnnrec.gnn.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory(1 << 30, 1 << 30)
faults = []
for _ in range(20):  # a step's large temporary: 64 MB allocated, written, freed
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 << 20).fill_(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(sum(faults[-5:]))
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.split()[-1])


@glibc
def test_kept_memory_is_reused_without_page_faults() -> None:
    pages = (64 << 20) // 4096
    # glibc's default: a 64 MB block is mapped afresh and faulted in at every allocation
    assert _faults("default") >= 5 * pages * 0.9
    # kept: after the first allocations the heap's freed block serves the next one
    assert _faults("keep") < pages * 0.1


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="limit and trim"):
        keep_freed_memory(1 << 31)
    with pytest.raises(ValueError, match="limit and trim"):
        keep_freed_memory(trim=0)


@glibc
def test_keep_memory_trains_the_same_steps(tmp_path: Path) -> None:
    graph: HeteroData = apply_split(synthetic_graph(120, 60, num_tags=6, mean_interactions=10.0,
                                                    friends_per_user=3.0, seed=0), seed=0)
    gpath = save_graph(graph, tmp_path / "g.pt")
    metas = []
    for extra in ([], ["--keep-memory"]):
        out = tmp_path / f"run{len(metas)}"
        subprocess.run([sys.executable, "-m", "gnnrec", "train", "--model", "graphsage",
                        "--graph", str(gpath), "--out", str(out), "--epochs", "2",
                        "--batch-size", "128", "--embedding-dim", "8", "--seed", "1",
                        "--threads", "1", "--no-progress", "--minibatch",
                        "--num-neighbors", "4", "3", *extra], check=True, capture_output=True)
        metas.append(json.loads((out / "meta.json").read_text()))
    assert [m["minibatch"]["keep_memory"] for m in metas] == [False, True]
    assert ([r["loss"] for r in metas[0]["history"]]
            == [r["loss"] for r in metas[1]["history"]])
