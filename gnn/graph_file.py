"""Save and load the graph file (one ``torch.save`` of plain containers and tensors)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch
from torch_geometric.data import HeteroData

from gnnrec.gnn.data import (
    FORMAT,
    NODE_TYPES,
    GraphFormatError,
    complete_graph,
    fingerprint,
    validate_graph,
)


def save_graph(data: HeteroData, path: str | os.PathLike[str]) -> Path:
    """Validate (filling implied parts, see :func:`complete_graph`) and write atomically."""
    data = complete_graph(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "data": data.to_dict(),
        "num_nodes": {nt: int(data[nt].num_nodes) for nt in NODE_TYPES},
        "fingerprint": fingerprint(data),
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_graph(path: str | os.PathLike[str], *, mmap: bool = True) -> HeteroData:
    """Read a graph file written by :func:`save_graph` (``weights_only`` load, validated).

    With ``mmap`` (the default) the tensors are memory-mapped from the file
    (``torch.load(mmap=True)``) instead of read into memory: their pages come in as they
    are read, are shared with every other process that maps the same file and leave with
    the last tensor that refers to them. Copy-on-write: changing a tensor in place never
    changes the file. A file ``torch.load`` cannot map (the legacy non-zip format of
    ``torch.save(_use_new_zipfile_serialization=False)``) is read into memory instead.
    """
    path = Path(path)
    if not path.is_file():
        raise GraphFormatError(f"graph file {path} does not exist")
    payload = None
    if mmap and zipfile.is_zipfile(path):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - read it the plain way (and report that failure)
            payload = None
    try:
        if payload is None:
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise GraphFormatError(f"graph file {path} is not a readable torch file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise GraphFormatError(f"graph file {path}: expected format {FORMAT!r}, found {found!r}")
    try:
        data = HeteroData.from_dict(payload["data"])
        validate_graph(data)
    except GraphFormatError as exc:
        raise GraphFormatError(f"graph file {path}: {exc}") from exc
    return data
