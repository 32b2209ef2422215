"""``gnnrec`` command line: one sub-command family per package.

Each package contributes its commands through ``register(subparsers)`` in its own
``cli`` module; handlers take the parsed namespace and return an exit code.
Heavy imports (torch, ray) happen inside handlers, never at import time.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from gnnrec import __version__
from gnnrec.errors import GnnrecError

# Modules whose ``register`` adds sub-commands, in help order.
_COMMAND_MODULES = (
    "gnnrec.graph.cli",
    "gnnrec.ingest.cli",
    "gnnrec.gnn.cli",
    "gnnrec.serve.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gnnrec", description="Graph-neural-network recommendations on Neo4j, PyG and Ray."
    )
    parser.add_argument("--version", action="version", version=f"gnnrec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a package not written yet
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # PyG 2.8 still calls torch.jit.script at import time; the warning is not ours to fix.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    args = build_parser().parse_args(argv)
    # The driver logs each retry and dropped connection to stderr; the CLI reports the
    # failure itself, in one line.
    logging.getLogger("neo4j").setLevel(logging.CRITICAL)
    try:
        return int(args.handler(args) or 0)
    except GnnrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the driver's errors, mid-command
        if not type(exc).__module__.startswith("neo4j"):
            raise
        message = (getattr(exc, "message", None) or str(exc) or type(exc).__name__).strip()
        print(f"error: Neo4j failed: {message.splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
