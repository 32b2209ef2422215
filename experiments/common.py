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
THREADING_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


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
