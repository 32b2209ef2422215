"""gnnrec: graph-neural-network recommendations over a Neo4j graph.

Sub-packages (folders at the repository root):
``gnnrec.ingest`` (files -> Neo4j), ``gnnrec.graph`` (Neo4j server, Cypher, export),
``gnnrec.gnn`` (PyG models and training), ``gnnrec.serve`` (Ray Serve application).
"""

__version__ = "0.1.0"
