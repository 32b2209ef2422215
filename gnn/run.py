"""Run directories: ``runs/NAME/`` with the trained model, its metadata and the id maps.

Files (each written atomically: a temporary file, fsync, then ``os.replace``)::

    model.pt       best state_dict (torch.load(..., weights_only=True))
    last.pt        resume checkpoint: model + optimiser state, epoch, RNG states,
                   early-stopping state and history
    meta.json      format, gnnrec version, created / updated times, status, model
                   (registry name, class, constructor arguments), train config, graph
                   (path, fingerprint, sizes, split info), history per evaluated epoch,
                   best epoch, best valid metrics, metrics {"valid": ..., "test": ...}
    id_maps.json   {"user": [ext ids], "item": [ext ids]} (index -> external id)

Nothing here is pickled: a run loads with any later gnnrec whose model of the same
name accepts the recorded constructor arguments.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch_geometric.data import HeteroData

from gnnrec.errors import GnnrecError
from gnnrec.gnn.data import NODE_TYPES, fingerprint, load_graph, train_subgraph
from gnnrec.gnn.split import ensure_split

RUN_FORMAT = "gnnrec.run/1"
MODEL_FILE, LAST_FILE, META_FILE, ID_MAPS_FILE = "model.pt", "last.pt", "meta.json", "id_maps.json"


class RunError(GnnrecError):
    """A run directory that is missing, incomplete or does not match the given graph."""


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _version() -> str:
    import gnnrec

    return str(getattr(gnnrec, "__version__", "unknown"))


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as JSON (UTF-8, indented)."""
    text = json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=True)
    _atomic(Path(path), lambda fh: fh.write(text.encode()))


def save_torch(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically ``torch.save`` ``obj`` (plain containers and tensors only)."""
    _atomic(Path(path), lambda fh: torch.save(obj, fh))


def model_class(name: str, registry: Mapping[str, type] | None = None) -> type:
    """The model class registered as ``name`` (or whose class name is ``name``)."""
    if registry is None:
        from gnnrec.gnn.models import MODELS

        registry = MODELS
    if name in registry:
        return registry[name]
    for cls in registry.values():
        if cls.__name__ == name:
            return cls
    raise RunError(f"unknown model {name!r}; known: {', '.join(sorted(registry))}")


class Run:
    """One run directory. :meth:`create` starts one, :meth:`open` reads an existing one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, model_name: str, model: nn.Module,
               graph: HeteroData, graph_path: str | os.PathLike[str] | None,
               train_config: Mapping[str, Any], overwrite: bool = False) -> Run:
        """Make the directory and write the initial ``meta.json`` and ``id_maps.json``."""
        run = cls(path)
        if (run.path / META_FILE).exists() and not overwrite:
            raise RunError(f"{run.path} already holds a run: pass --resume to continue it "
                           "or --overwrite to start again")
        run.path.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, LAST_FILE):
            (run.path / name).unlink(missing_ok=True)
        model_config = model.config()  # type: ignore[operator]
        try:
            json.dumps(model_config)
        except TypeError as exc:
            raise RunError(f"{type(model).__name__}.config() is not JSON: {exc}") from exc
        ui = graph["user", "interacts", "item"]
        meta = {
            "format": RUN_FORMAT, "gnnrec_version": _version(),
            "created": _now(), "updated": _now(), "status": "created",
            "model": {"name": model_name, "class": type(model).__name__,
                      "module": type(model).__module__, "config": model_config},
            "train_config": dict(train_config),
            "graph": {
                "path": str(Path(graph_path).resolve()) if graph_path is not None else None,
                "fingerprint": fingerprint(graph),
                "num_nodes": {nt: int(graph[nt].num_nodes) for nt in NODE_TYPES},
                "num_interactions": int(ui.edge_index.size(1)),
                "split_info": getattr(graph, "split_info", None),
            },
            "history": [], "best_epoch": None, "best_valid": None, "metrics": {},
        }
        write_json(run.path / META_FILE, meta)
        write_json(run.path / ID_MAPS_FILE, {nt: list(graph[nt].ext_id) for nt in ("user", "item")})
        return run

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Run:
        run = cls(path)
        if not (run.path / META_FILE).is_file():
            raise RunError(f"{run.path} is not a run directory (no {META_FILE})")
        return run

    def meta(self) -> dict[str, Any]:
        try:
            meta = json.loads((self.path / META_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RunError(f"cannot read {self.path / META_FILE}: {exc}") from exc
        if meta.get("format") != RUN_FORMAT:
            raise RunError(f"{self.path / META_FILE}: expected format {RUN_FORMAT!r}, "
                           f"found {meta.get('format')!r}")
        return meta

    def update_meta(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into meta.json (``metrics`` is merged one level deep)."""
        meta = self.meta()
        for key, value in fields.items():
            if key == "metrics":
                meta["metrics"] = {**meta.get("metrics", {}), **value}
            else:
                meta[key] = value
        meta["updated"] = _now()
        write_json(self.path / META_FILE, meta)
        return meta

    def save_model(self, state_dict: Mapping[str, Any]) -> None:
        save_torch(self.path / MODEL_FILE, dict(state_dict))

    def load_model_state(self) -> dict[str, Any]:
        path = self.path / MODEL_FILE
        if not path.is_file():
            raise RunError(f"{path} is missing: the run has not finished an evaluation yet")
        return torch.load(path, map_location="cpu", weights_only=True)

    def save_last(self, checkpoint: Mapping[str, Any]) -> None:
        save_torch(self.path / LAST_FILE, dict(checkpoint))

    def load_last(self) -> dict[str, Any] | None:
        path = self.path / LAST_FILE
        if not path.is_file():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def id_maps(self) -> dict[str, list[str]]:
        return json.loads((self.path / ID_MAPS_FILE).read_text(encoding="utf-8"))


def build_model(name: str, graph: HeteroData, config: Mapping[str, Any],
                registry: Mapping[str, type] | None = None) -> nn.Module:
    """Construct a registered model from the TRAIN part of ``graph`` (see ``train_subgraph``)."""
    cls = model_class(name, registry)
    try:
        return cls(train_subgraph(graph), **config)
    except (TypeError, ValueError) as exc:
        raise RunError(f"cannot build model {name!r} with {dict(config)}: {exc}") from exc


def load_run(path: str | os.PathLike[str], graph: HeteroData | str | os.PathLike[str] | None = None,
             *, device: torch.device | str = "cpu", registry: Mapping[str, type] | None = None,
             check_fingerprint: bool = True) -> tuple[nn.Module, dict[str, Any], HeteroData]:
    """Rebuild a run's best model: ``(model in eval mode on device, meta, graph)``.

    ``graph`` defaults to the graph file recorded in meta.json; a graph whose fingerprint
    differs from the recorded one is refused (``check_fingerprint=False`` to allow it).
    """
    run = Run.open(path)
    meta = run.meta()
    if graph is None:
        recorded = meta["graph"].get("path")
        if not recorded or not Path(recorded).is_file():
            raise RunError(f"the graph file recorded in {run.path / META_FILE} ({recorded}) "
                           "is not there: pass the graph explicitly (--graph FILE)")
        graph = recorded
    if not isinstance(graph, HeteroData):
        graph = load_graph(graph)
    graph, _ = ensure_split(graph)  # the default split train applied to a split-less graph
    if check_fingerprint and fingerprint(graph) != meta["graph"]["fingerprint"]:
        raise RunError(f"run {run.path} was trained on another graph or split (fingerprint "
                       f"{meta['graph']['fingerprint'][:12]}…, this graph "
                       f"{fingerprint(graph)[:12]}…): pass the graph file it was trained on")
    model = build_model(meta["model"]["name"], graph, meta["model"]["config"], registry)
    model.load_state_dict(run.load_model_state())
    return model.to(device).eval(), meta, graph
