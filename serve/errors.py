"""Errors of the serving layer; the HTTP app maps each to one status code."""

from __future__ import annotations

from gnnrec.errors import GnnrecError


class ServingError(GnnrecError):
    """Base class; ``status`` is the HTTP status code the app answers with."""

    status = 400


class NotFoundError(ServingError):
    """An unknown user, item or tag."""

    status = 404


class ConflictError(ServingError):
    """A user that already exists (``POST /users``)."""

    status = 409


class GoneError(ServingError):
    """A write naming a user that was forgotten (a tombstone in Neo4j names them)."""

    status = 410


class InvalidInputError(ServingError):
    """Input that passed the JSON schema but not the ingest validation rules."""

    status = 422


class AuthError(ServingError):
    """A missing or wrong bearer token."""

    status = 401


class WritesDisabledError(ServingError):
    """Writes without a configured token (or without Neo4j, where that is required)."""

    status = 403


class Neo4jUnavailableError(ServingError):
    """Neo4j did not take a write: nothing was applied, in the database or in memory."""

    status = 503
