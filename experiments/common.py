"""Helpers shared by the benchmark scripts: machine facts and JSON output.

Every benchmark gets its graph through the product (ingest → Neo4j → export):
:func:`experiments.graphs.product_graph`. Results are written with :func:`write_json`,
which keeps machine paths out of them (:func:`portable`).
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import sys
from pathlib import Path, PurePath
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


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
        "loadavg": [round(x, 2) for x in os.getloadavg()], "env": threading_env(),
    }


# Environment variables that change how torch's OpenMP threads behave on a busy machine
# (with OMP_WAIT_POLICY unset, libgomp's waiting threads spin, and a niced 2-thread process
# on a loaded 2-core host ran an epoch 15-30x slower than with PASSIVE).
THREADING_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                 # glibc's malloc: when freed memory goes back to the OS (peak RSS vs CPU)
                 "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")


def threading_env() -> dict[str, str]:
    """The :data:`THREADING_ENV` variables that are set, with their values."""
    return {k: os.environ[k] for k in THREADING_ENV if k in os.environ}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GiB; ``ru_maxrss`` is KiB on Linux)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def write_json(path: str | os.PathLike[str], obj: Any, indent: int = 1) -> Path:
    """Write ``obj`` as indented JSON (parent folders created, paths made
    :func:`portable`); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    text = json.dumps(obj, indent=indent, allow_nan=True, default=_plain)
    tmp.write_text(json.dumps(portable(json.loads(text)), indent=indent, allow_nan=True) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# An absolute path inside a string: "/" + at least one more component, not preceded by a
# word character (so "rels/s" or "a/b" are left alone).
_ABSOLUTE = re.compile(r"(?<![\w.~-])/[\w.+@-]+(?:/[\w.+@=-]*)+")


def _portable_path(match: re.Match[str]) -> str:
    path = match.group(0)
    if not Path("/", path.split("/")[1]).is_dir():  # not a path of this machine
        return path
    pure = PurePath(path)
    try:
        return pure.relative_to(ROOT).as_posix() or "."
    except ValueError:
        return pure.name or path


def portable(value: Any) -> Any:
    """``value`` with every absolute path of this machine in its strings made relative to
    the repository (inside it) or cut to its file name (outside it), recursively."""
    if isinstance(value, str):
        return _ABSOLUTE.sub(_portable_path, value)
    if isinstance(value, dict):
        return {portable(k): portable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [portable(v) for v in value]
    return value


_STATUS_KEYS = {"VmRSS": "rss", "VmHWM": "peak", "RssAnon": "anon", "RssFile": "file",
                "RssShmem": "shmem"}


def memory_status() -> dict[str, float]:
    """This process's memory now (GiB, from ``/proc/self/status``): ``rss`` resident in all,
    ``anon`` of it anonymous (heap, tensors, arrays), ``file`` file-backed (shared libraries,
    memory-mapped files), ``shmem`` shared memory, ``peak`` the resident high-water mark
    (since the start or the last :func:`reset_peak`). Empty where there is no ``/proc``."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in _STATUS_KEYS:
                    out[_STATUS_KEYS[key]] = round(int(value.split()[0]) / 2**20, 3)
    except OSError:
        pass
    return out


def reset_peak() -> bool:
    """Reset this process's resident high-water mark (``VmHWM`` and ``ru_maxrss``) to its
    current RSS (Linux: ``/proc/self/clear_refs``); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class MemoryPhases:
    """Resident memory by phase: :meth:`mark` ends a phase, recording the RSS then and the
    phase's own peak, and starts the next one (the high-water mark is reset between them).
    :attr:`peak_gb` is the largest phase peak: the process's peak RSS since construction."""

    def __init__(self) -> None:
        self.phases: list[dict[str, Any]] = []
        self.resets = reset_peak()
        self._t = _now()

    def mark(self, name: str, **extra: Any) -> dict[str, Any]:
        status = memory_status()
        if not self.resets:  # no per-phase peaks: the peak so far
            status["peak"] = round(peak_rss_gb(), 3)
        t = _now()
        row = {"phase": name, **status, "seconds": round(t - self._t, 1), **extra}
        self.phases.append(row)
        self._t = t
        reset_peak()
        return row

    @property
    def peak_gb(self) -> float:
        return max((p.get("peak", 0.0) for p in self.phases), default=0.0)


def _now() -> float:
    import time

    return time.perf_counter()


def nbytes(obj: Any, _seen: set[int] | None = None) -> int:
    """Bytes of the numpy arrays and torch tensors reachable from ``obj`` (through
    dataclasses, dicts, lists, tuples and plain objects' attributes), each storage once.
    What an object holds in array memory, not Python objects' own overhead."""
    import dataclasses

    import torch

    seen = _seen if _seen is not None else set()
    if isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided:  # sparse: its index and value tensors
            parts = ((obj.crow_indices(), obj.col_indices(), obj.values())
                     if obj.layout == torch.sparse_csr else (obj._indices(), obj._values()))
            return sum(nbytes(p, seen) for p in parts)
        storage = obj.untyped_storage()
        key = storage.data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return storage.nbytes()
    if isinstance(obj, np.ndarray):
        base = obj
        while isinstance(base.base, np.ndarray):
            base = base.base
        key = base.__array_interface__["data"][0]
        if key in seen:
            return 0
        seen.add(key)
        return int(base.nbytes)
    if id(obj) in seen or isinstance(obj, str | bytes | int | float | bool | type(None)):
        return 0
    seen.add(id(obj))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items: Any = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    elif isinstance(obj, dict):
        items = obj.values()
    elif isinstance(obj, list | tuple | set):
        items = obj
    elif isinstance(obj, torch.nn.Module):
        items = list(obj.state_dict(keep_vars=True).values())
    elif hasattr(obj, "__dict__"):
        items = vars(obj).values()
    else:
        return 0
    return sum(nbytes(v, seen) for v in items)
