"""gnnrec: graph-neural-network recommendations over a Neo4j graph.

Sub-packages (folders at the repository root):
``gnnrec.ingest`` (files -> Neo4j), ``gnnrec.graph`` (Neo4j server, Cypher, export),
``gnnrec.gnn`` (PyG models and training), ``gnnrec.serve`` (Ray Serve application).

Installed, ``pyproject.toml``'s ``package-dir`` maps those names onto the root folders.
Imported straight from a source tree that is not installed (the repository on
``PYTHONPATH``, as ``ray job submit --working-dir .`` ships it to every node of a
cluster), the root folder joins this package's ``__path__`` so the same names resolve
to the shipped folders and never to another copy installed elsewhere.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"


def _source_root() -> str | None:
    root = _Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "gnn" / "__init__.py").is_file():
        return str(root)
    return None


if (_root := _source_root()) is not None and _root not in __path__:
    __path__.append(_root)
