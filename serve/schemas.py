"""Request and response bodies of the HTTP API (pydantic; they make the OpenAPI at /docs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
)

from gnnrec.ingest.validate import MAX_ID_LENGTH, check_id_text


def _as_id(value: str | int) -> str:
    text, reason = check_id_text(str(value), "id")
    if text is None:
        raise ValueError(reason)
    return text


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


IdText = Annotated[StrictStr, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH,
                                                pattern=r"\S")]
# The id rule of the ingest path (gnnrec.ingest.validate.parse_ids): text of 1 to
# MAX_ID_LENGTH characters, not only spaces, or an integer (its digits); never a boolean.
Id = Annotated[IdText | StrictInt, AfterValidator(_as_id)]
Source = Literal["neo4j", "memory"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InteractionIn(_Body):
    """One interaction. ``weight`` defaults to 1; ``timestamp`` (unix seconds or an ISO-8601
    date) defaults to the time the service received it."""

    user: Id
    item: Id
    weight: Annotated[float, BeforeValidator(_not_bool)] | None = Field(
        None, description="non-negative, finite; default 1")
    timestamp: StrictInt | StrictFloat | StrictStr | None = Field(
        None, description="unix s or ISO-8601")


class NewUserIn(_Body):
    """A new user, optionally with the items it consumed and its friends (known ids)."""

    user: Id
    items: list[Id] = Field(default_factory=list, max_length=100_000)
    friends: list[Id] = Field(default_factory=list, max_length=100_000)


class ReloadIn(_Body):
    """The run directory to serve from now on (it holds everything serving reads)."""

    run: str


class ScoredItem(BaseModel):
    item: str
    score: float


class Filters(BaseModel):
    tag: str | None = None
    exclude: list[str] = Field(default_factory=list)
    diversity: float = 0.0


class Recommendations(BaseModel):
    user: str
    k: int
    items: list[ScoredItem]
    cold_start: Literal["popularity"] | None = Field(
        None, description='"popularity" when the user has no embedding (nothing to go on)')
    filters: Filters
    run: str


class SimilarItems(BaseModel):
    item: str
    k: int
    items: list[ScoredItem]
    run: str


class FriendReason(BaseModel):
    user: str
    items: int = Field(description="number of items the friend interacted with")
    contribution: float = Field(description="1 / sqrt(items)")


class CoUserReason(BaseModel):
    user: str
    overlap: int = Field(description="items shared with the explained user")
    items: int = Field(description="number of items this user interacted with")
    contribution: float = Field(description="overlap / sqrt(items * user's items)")


class TagReason(BaseModel):
    tag: str
    count: int = Field(description="items in the user's history carrying the tag")
    contribution: float = Field(description="count / user's items")


class Explanation(BaseModel):
    user: str
    item: str
    source: Source = Field(description="where the paths were read: Neo4j, or the in-memory "
                                       "graph when Neo4j is unreachable or lacks the ids")
    score: float | None = Field(None, description="model score of the item for the user")
    user_items: int
    friends: list[FriendReason]
    co_users: list[CoUserReason]
    tags: list[TagReason]
    note: str | None = None


class Neo4jStatus(BaseModel):
    configured: bool
    reachable: bool
    uri: str | None = None
    error: str | None = None


class Neo4jSyncStatus(BaseModel):
    """What the served state learned from Neo4j beyond its run (see gnnrec.serve.sync)."""

    done: bool = Field(description="false: Neo4j did not answer at load; the replica retries")
    forgotten: int = Field(description="forget tombstones applied")
    exported_at: int | None = Field(
        description="Neo4j's clock (epoch µs) at the run's export; feedback received after "
                    "it is replayed (null: nothing is)")
    replayed_interactions: int
    replayed_users_created: int
    note: str | None = None


class IndexStatus(BaseModel):
    """The approximate item index of an ``"approximate"`` replica."""

    lists: int
    nprobe: int = Field(description="lists scanned per request (fixed, or calibrated)")
    items: int
    head_items: int = Field(0, description="items of largest norm, scored exactly for every "
                                           "request (the others are in the lists)")
    build_seconds: float = Field(description="k-means, adding the items and calibrating")
    calibrated_recall: float | None = Field(
        None, description="recall@calibration_k against exact scoring on the calibration "
                          "users (null: nprobe fixed by --ann-nprobe)")
    calibration_k: int | None = None
    target_recall: float | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    run: str
    model: str
    metrics: dict[str, Any]
    users: int
    items: int
    tags: int
    dim: int
    scoring: Literal["exact", "approximate"] = Field(
        "exact", description='"approximate": /recommend scores the candidates of the item '
                             'index (a catalogue of at least --ann-threshold items)')
    index: IndexStatus | None = None
    neo4j: Neo4jStatus
    replica: str
    feedback: Literal["local", "log"] = Field(
        description='"local": one replica folds writes in; "log": replicas follow a shared log')
    writes_enabled: bool
    neo4j_sync: Neo4jSyncStatus | None = None


class InteractionsResult(BaseModel):
    received: int
    written: int = Field(description="distinct (user, item) pairs written to Neo4j")
    users_updated: list[str]
    users_created: list[str]
    items_created: list[str]
    items_without_embedding: list[str]
    persisted: Literal["neo4j", "memory-only"]


class NewUserResult(BaseModel):
    user: str
    items: int
    friends: int
    cold_start: Literal["items", "friends", "items+friends", "popularity"]
    persisted: Literal["neo4j", "memory-only"]


class ForgetResult(BaseModel):
    user: str
    neo4j: dict[str, int] | None = Field(description="deleted relationships by type, or null")
    memory: bool
    persisted: Literal["neo4j", "memory-only"]


class ReloadResult(BaseModel):
    run: str
    model: str
    previous_run: str
    users: int
    items: int
    seconds: float
    replayed_interactions: int = Field(
        0, description="online feedback received after the new run's export, folded in")


class ErrorBody(BaseModel):
    detail: Any
