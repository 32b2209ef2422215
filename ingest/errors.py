"""User-facing ingest errors (the CLI prints their message and exits with code 2).

Every one of them is raised *before* anything is written to Neo4j, except
:class:`UnknownUserError`, which ``forget`` raises when there is nothing to delete.
"""

from __future__ import annotations

from gnnrec.errors import GnnrecError


class IngestError(GnnrecError):
    """Base class of the ingest errors."""


class SourceFileError(IngestError):
    """A source file is missing, unreadable or in an unknown format."""


class MissingColumnError(IngestError):
    """A source lacks a required column (the message names the file and the column)."""


class DatasetError(IngestError):
    """An unknown bundled dataset, or one whose package cannot be fetched or read."""


class UnknownUserError(IngestError):
    """``forget`` was asked for a user the database does not hold."""
