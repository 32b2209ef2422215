"""A Ray driver for the multi-node tests, run as a subprocess (not a test module).

``python tests/cluster_driver.py sampling`` joins the cluster named by ``RAY_ADDRESS``,
samples one epoch of link batches with Ray sampler actors placed by custom resources and
spread over the nodes, and prints one JSON object: where the driver and each actor ran,
where the graph object has copies, and whether every batch equals the in-process one.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def sampling() -> dict[str, object]:
    import ray
    from test_ray_sampling import assert_same

    from gnnrec.gnn.distributed_sampling import RaySampledBatches, RaySamplingParams
    from gnnrec.gnn.generators import synthetic_graph
    from gnnrec.gnn.sampler import LinkBatchSampler
    from gnnrec.gnn.split import apply_split

    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    graph = apply_split(synthetic_graph(120, 60, num_tags=8, mean_interactions=10, seed=2),
                        seed=0)
    local = LinkBatchSampler(graph, [4, 3], batch_size=128, num_negatives=2, seed=11)
    expected = list(local.iter_epoch(1))
    # Half a "sampler" resource each: the nodes that carry one could take both actors;
    # SPREAD puts them on different nodes. The head carries none.
    params = RaySamplingParams(num_workers=2, prefetch=4, cpus_per_worker=0.25,
                               resources={"sampler": 0.5})
    with RaySampledBatches(local, params) as remote:
        nodes = remote.nodes()
        got = list(remote.iter_epoch(1))
        ref = remote.graph_ref
        copies = ray.experimental.get_object_locations([ref])[ref]["node_ids"]
    for a, b in zip(expected, got, strict=True):
        assert_same(a, b)
    return {"driver": ray.get_runtime_context().get_node_id(), "actors": nodes,
            "graph_copies": sorted(copies), "batches": len(got)}


if __name__ == "__main__":
    print(json.dumps({"sampling": sampling}[sys.argv[1]]()))
