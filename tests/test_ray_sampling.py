"""Ray sampler workers: same batches as in-process, bounded prefetch, a crashed worker."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch_geometric.data import HeteroData

from gnnrec.gnn.generators import synthetic_graph
from gnnrec.gnn.sampler import LinkBatchSampler, NodeBatchSampler
from gnnrec.gnn.split import apply_split

pytestmark = pytest.mark.integration
CPUS = 0.25  # small reservations: the shared test Ray may hold CPUs for other tests


@pytest.fixture(scope="module")
def graph() -> HeteroData:
    return apply_split(synthetic_graph(120, 60, num_tags=8, mean_interactions=10, seed=2), seed=0)


def assert_same(a: HeteroData, b: HeteroData) -> None:
    da, db = a.to_dict(), b.to_dict()
    assert sorted(da, key=str) == sorted(db, key=str)
    for key, store in da.items():
        assert sorted(store) == sorted(db[key]), key
        for name, value in store.items():
            other = db[key][name]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other


def test_link_batches_match_in_process(ray_session: None, graph: HeteroData) -> None:
    from gnnrec.gnn.distributed_sampling import RaySampledBatches, RaySamplingParams

    local = LinkBatchSampler(graph, [4, 3], batch_size=128, num_negatives=2, seed=11)
    expected = [list(local.iter_epoch(e)) for e in range(2)]
    params = RaySamplingParams(num_workers=2, prefetch=4, batches_per_task=2,
                               cpus_per_worker=CPUS)
    with RaySampledBatches(local, params) as remote:
        got = list(remote.iter_epochs(2))
        again = list(remote.iter_epoch(1))
        assert remote.max_in_flight == 4  # batches requested and not yet handed over
    flat = expected[0] + expected[1]
    assert len(got) == len(flat) > 6
    for a, b in zip(flat, got, strict=True):
        assert_same(a, b)
    for a, b in zip(expected[1], again, strict=True):
        assert_same(a, b)


def test_crashed_worker_is_restarted_and_no_batch_lost(
        ray_session: None, graph: HeteroData, tmp_path: Path) -> None:
    from gnnrec.gnn.distributed_sampling import (
        FAIL_ONCE_ENV,
        RaySampledBatches,
        RaySamplingParams,
    )

    marker = tmp_path / "crashed"
    local = NodeBatchSampler(graph, "user", [5, 3, 2], batch_size=16, seed=3)
    params = RaySamplingParams(num_workers=2, prefetch=2, cpus_per_worker=CPUS,
                               runtime_env={"env_vars": {FAIL_ONCE_ENV: str(marker)}})
    with RaySampledBatches(local, params) as remote:
        got = list(remote)
    assert marker.exists(), "no worker crashed: the fault injection did not run"
    expected = list(local.iter_epoch(0))
    assert len(got) == len(expected) == 8
    for a, b in zip(expected, got, strict=True):
        assert_same(a, b)
    seeds = [i for b in got for i in b["user"].n_id[: b["user"].batch_size].tolist()]
    assert sorted(seeds) == list(range(120))  # every batch exactly once
