"""Run directories: ``runs/NAME/``, a self-contained artifact (format 2).

Everything serving, recommending, write-back and evaluation read is in the directory;
nothing reads the graph file after training, so a run moved to another path or machine
keeps working. Files (each written atomically: a temporary file, fsync, ``os.replace``)::

    model.pt       best state_dict (torch.load(..., weights_only=True))
    embeddings.pt  {"user": Float[U, d], "item": Float[I, d]}: the final embeddings of the
                   best weights (score = user @ item.T), written with model.pt
    adjacency.pt   what the run keeps of its graph, as CSR arrays (:class:`RunGraph`): every
                   interaction with its split (train / valid / test: evaluation, and the
                   items never recommended again), the friendships and the item tags
    id_maps.json   {"user": [...], "item": [...], "tag": [...]} index -> external id; the
                   users are the ones the run was trained on
    last.pt        resume checkpoint: model + optimiser state, epoch, RNG states,
                   early-stopping state and history
    meta.json      format, gnnrec version, created / updated times, status, model
                   (registry name, class, constructor arguments and the graph sizes it was
                   built for: with model.pt, all it takes to rebuild it), train config, graph
                   (the file it was trained from, fingerprint, sizes, split info, the time
                   of its export from Neo4j), history
                   per evaluated epoch, best epoch, best valid metrics, metrics

Nothing here is pickled: a run loads with any later gnnrec whose model of the same
name accepts the recorded constructor arguments. A version-1 run (no embeddings, no
adjacency: it re-read its graph file) is refused with the command that upgrades it,
``gnnrec upgrade-run RUN`` (:func:`upgrade_run`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch_geometric.data import HeteroData

from gnnrec.errors import GnnrecError
from gnnrec.gnn.adjacency import CSR
from gnnrec.gnn.data import IT, NODE_TYPES, UU, fingerprint
from gnnrec.gnn.graph_file import load_graph
from gnnrec.gnn.models.base import GraphSizes
from gnnrec.gnn.split import ensure_split
from gnnrec.gnn.views import SplitInteractions, TrainView

RUN_FORMAT, RUN_FORMAT_1 = "gnnrec.run/2", "gnnrec.run/1"
MODEL_FILE, LAST_FILE, META_FILE, ID_MAPS_FILE = "model.pt", "last.pt", "meta.json", "id_maps.json"
EMBEDDINGS_FILE, ADJACENCY_FILE = "embeddings.pt", "adjacency.pt"


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


def _csr_state(csr: CSR) -> dict[str, torch.Tensor]:
    return {"indptr": torch.from_numpy(csr.indptr), "table": torch.from_numpy(csr.table)}


def _csr(state: Mapping[str, torch.Tensor]) -> CSR:
    return CSR(state["indptr"].numpy(), state["table"].numpy())


@dataclass(frozen=True)
class RunGraph:
    """What a run keeps of its graph: the id maps, every interaction with its split
    (:class:`~gnnrec.gnn.views.SplitInteractions`), the friendships (user -> users, both
    directions) and the item tags (item -> tags), as CSR arrays."""

    user_ids: list[str]
    item_ids: list[str]
    tag_ids: list[str]
    interactions: SplitInteractions
    friends: CSR
    item_tags: CSR

    @classmethod
    def from_graph(cls, data: HeteroData) -> RunGraph:
        n_users, n_items = int(data["user"].num_nodes), int(data["item"].num_nodes)
        uu, it = data[UU].edge_index.cpu().numpy(), data[IT].edge_index.cpu().numpy()
        return cls([str(e) for e in data["user"].ext_id], [str(e) for e in data["item"].ext_id],
                   [str(e) for e in data["tag"].ext_id], SplitInteractions.from_graph(data),
                   CSR.from_edges(uu[0], uu[1], n_users, num_cols=n_users, keep_eid=False),
                   CSR.from_edges(it[0], it[1], n_items, num_cols=int(data["tag"].num_nodes),
                                  keep_eid=False))

    def arrays(self) -> dict[str, Any]:
        """The tensors of ``adjacency.pt`` (plain containers: a ``weights_only`` load)."""
        inter = self.interactions
        return {"interactions": {**_csr_state(inter.csr), "split": torch.from_numpy(inter.split),
                                 "has_split": inter.has_split},
                "friends": _csr_state(self.friends), "item_tags": _csr_state(self.item_tags)}

    @classmethod
    def load(cls, ids: Mapping[str, list[str]], arrays: Mapping[str, Any]) -> RunGraph:
        inter = arrays["interactions"]
        return cls(list(ids["user"]), list(ids["item"]), list(ids.get("tag", [])),
                   SplitInteractions(len(ids["item"]), _csr(inter), inter["split"].numpy(),
                                     bool(inter["has_split"])),
                   _csr(arrays["friends"]), _csr(arrays["item_tags"]))


class Run:
    """One run directory. :meth:`create` starts one, :meth:`open` reads an existing one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, model_name: str, model: nn.Module,
               graph: HeteroData, graph_path: str | os.PathLike[str] | None,
               train_config: Mapping[str, Any], overwrite: bool = False) -> Run:
        """Make the directory and write the initial ``meta.json``, the id maps and what the
        run keeps of ``graph`` (``adjacency.pt``)."""
        run = cls(path)
        if (run.path / META_FILE).exists() and not overwrite:
            raise RunError(f"{run.path} already holds a run: pass --resume to continue it "
                           "or --overwrite to start again")
        run.path.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, LAST_FILE, EMBEDDINGS_FILE):
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
                      "module": type(model).__module__, "config": model_config,
                      "sizes": model.sizes.to_dict()},  # type: ignore[operator]
            "train_config": dict(train_config),
            "graph": {
                "path": str(Path(graph_path).resolve()) if graph_path is not None else None,
                "fingerprint": fingerprint(graph),
                "num_nodes": {nt: int(graph[nt].num_nodes) for nt in NODE_TYPES},
                "num_interactions": int(ui.edge_index.size(1)),
                "split_info": getattr(graph, "split_info", None),
                # Neo4j's clock when the graph was exported: serving replays the feedback
                # received after it (None: not exported from Neo4j, nothing is replayed)
                "exported_at": getattr(graph, "exported_at", None),
            },
            "history": [], "best_epoch": None, "best_valid": None, "metrics": {},
        }
        run.save_graph(RunGraph.from_graph(graph))
        write_json(run.path / META_FILE, meta)
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
        if meta.get("format") == RUN_FORMAT_1:
            raise RunError(
                f"{self.path} is a version-1 run: it re-reads its graph file, which a run no "
                f"longer needs. Upgrade it with `gnnrec upgrade-run {self.path}` (add "
                "--graph FILE when the recorded graph file has moved), or retrain it")
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
        """``{"user", "item", "tag"}``: index -> external id (the users it was trained on)."""
        return json.loads((self.path / ID_MAPS_FILE).read_text(encoding="utf-8"))

    def save_graph(self, graph: RunGraph) -> None:
        save_torch(self.path / ADJACENCY_FILE, graph.arrays())
        write_json(self.path / ID_MAPS_FILE, {"user": graph.user_ids, "item": graph.item_ids,
                                              "tag": graph.tag_ids})

    def graph(self) -> RunGraph:
        """What the run keeps of its graph (id maps, interactions, friends, item tags)."""
        path = self.path / ADJACENCY_FILE
        if not path.is_file():
            self.meta()  # a version-1 run: say how to upgrade it
            raise RunError(f"{path} is missing: the run directory is incomplete")
        return RunGraph.load(self.id_maps(),
                             torch.load(path, map_location="cpu", weights_only=True))

    def save_embeddings(self, user: torch.Tensor, item: torch.Tensor) -> None:
        save_torch(self.path / EMBEDDINGS_FILE, {"user": user.detach().to("cpu", copy=True),
                                                 "item": item.detach().to("cpu", copy=True)})

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(user Float[U, d], item Float[I, d]): the final embeddings of the best weights."""
        path = self.path / EMBEDDINGS_FILE
        if not path.is_file():
            self.meta()
            raise RunError(f"{path} is missing: the run has not finished an evaluation yet")
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state["user"], state["item"]

    def model(self, device: torch.device | str = "cpu",
              registry: Mapping[str, type] | None = None) -> nn.Module:
        """The best model, rebuilt from the checkpoint alone (see :func:`rebuild_model`)."""
        return rebuild_model(self.meta(), self.load_model_state(), device=device,
                             registry=registry)


def build_model(name: str, graph: TrainView | GraphSizes | HeteroData,
                config: Mapping[str, Any], registry: Mapping[str, type] | None = None) -> nn.Module:
    """Construct a registered model for the shape of ``graph`` (its train view's sizes)."""
    cls = model_class(name, registry)
    if isinstance(graph, HeteroData):
        graph = TrainView.from_graph(graph)
    sizes = graph if isinstance(graph, GraphSizes) else graph.sizes
    try:
        return cls(sizes, **config)
    except (TypeError, ValueError) as exc:
        raise RunError(f"cannot build model {name!r} with {dict(config)}: {exc}") from exc


def rebuild_model(meta: Mapping[str, Any], state: Mapping[str, Any], *,
                  device: torch.device | str = "cpu",
                  registry: Mapping[str, type] | None = None) -> nn.Module:
    """A run's model from its checkpoint alone (meta's name, sizes and config, and the
    ``state_dict``), as nanoGPT rebuilds ``GPT(GPTConfig(**model_args))``; eval mode."""
    sizes = GraphSizes.from_dict(meta["model"]["sizes"])
    model = build_model(meta["model"]["name"], sizes, meta["model"]["config"], registry)
    model.load_state_dict(dict(state))
    return model.to(device).eval()


def final_embeddings(model: nn.Module, graph: HeteroData | TrainView,
                     device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(user Float[U, d], item Float[I, d]): ``model``'s output over ``graph``'s train view."""
    view = graph if isinstance(graph, TrainView) else TrainView.from_graph(graph)
    model = model.to(device).eval()
    inputs = model.inputs(view)  # type: ignore[operator]
    with torch.no_grad():
        out = model(inputs.to(device) if inputs is not None else None)
    return out.user.detach(), out.item.detach()


def load_run(path: str | os.PathLike[str], *, device: torch.device | str = "cpu",
             registry: Mapping[str, type] | None = None
             ) -> tuple[nn.Module, dict[str, Any], RunGraph]:
    """A run's best model (rebuilt from its checkpoint alone, eval mode, on ``device``),
    its meta and what it keeps of its graph; the graph file is not read."""
    run = Run.open(path)
    return run.model(device, registry), run.meta(), run.graph()


def upgrade_run(path: str | os.PathLike[str],
                graph: HeteroData | str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Make a version-1 run self-contained (format 2), reading its graph file one last time.

    ``graph`` defaults to the file recorded in meta.json; its fingerprint must match the
    recorded one. Adds the model's sizes, the final embeddings, the run graph and the tag
    ids; the weights and the history are kept. Returns the new meta.
    """
    run = Run.open(path)
    meta_path = run.path / META_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != RUN_FORMAT_1:
        raise RunError(f"{run.path} is not a version-1 run (format {meta.get('format')!r})")
    if graph is None:
        recorded = meta["graph"].get("path")
        if not recorded or not Path(recorded).is_file():
            raise RunError(f"the graph file recorded in {meta_path} ({recorded}) is not there: "
                           "pass the graph it was trained on with --graph FILE")
        graph = recorded
    if not isinstance(graph, HeteroData):
        graph = load_graph(graph)
    graph, _ = ensure_split(graph)  # the default split train applied to a split-less graph
    if fingerprint(graph) != meta["graph"]["fingerprint"]:
        raise RunError(f"run {run.path} was trained on another graph or split (fingerprint "
                       f"{meta['graph']['fingerprint'][:12]}…, this graph "
                       f"{fingerprint(graph)[:12]}…): pass the graph file it was trained on")
    view = TrainView.from_graph(graph)
    model = build_model(meta["model"]["name"], view, meta["model"]["config"])
    model.load_state_dict(run.load_model_state())
    run.save_graph(RunGraph.from_graph(graph))
    run.save_embeddings(*final_embeddings(model, view))
    meta["model"]["sizes"] = model.sizes.to_dict()  # type: ignore[operator]
    meta.update(format=RUN_FORMAT, updated=_now(), upgraded_from=RUN_FORMAT_1)
    write_json(meta_path, meta)
    return meta
