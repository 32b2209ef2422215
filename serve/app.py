"""The HTTP application: FastAPI routes and the Ray Serve deployment that hosts them.

Public API:

* :func:`create_app` - the FastAPI app of one :class:`RecommenderService` (OpenAPI at /docs);
* :class:`Recommender` - the Serve deployment (one state per replica, loaded once);
* :func:`build` - the application graph for typed options (used by :func:`run`);
* :func:`app_builder` - the ``import_path`` target of ``serve_config.yaml``
  (``gnnrec.serve.app:app_builder``), taking the options as plain ``args``;
* :func:`run` - ``serve.run`` on an initialised Ray (what ``gnnrec serve`` calls).

Endpoints: ``GET /health``, ``GET /recommend/{user}``, ``GET /similar/{item}``,
``GET /explain/{user}/{item}``; with ``Authorization: Bearer <token>``:
``POST /interactions``, ``POST /users``, ``DELETE /users/{user}``, ``POST /admin/reload``.
"""

# No ``from __future__ import annotations``: FastAPI must see the route annotations,
# which use types built inside create_app, as real objects.

import json
import os
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Path, Query, Request, Security
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from gnnrec import __version__
from gnnrec.ingest.validate import MAX_ID_LENGTH
from gnnrec.serve.errors import ServingError
from gnnrec.serve.options import ResourceOptions, ServeOptions
from gnnrec.serve.schemas import (
    ErrorBody,
    Explanation,
    ForgetResult,
    Health,
    InteractionIn,
    InteractionsResult,
    NewUserIn,
    NewUserResult,
    Recommendations,
    ReloadIn,
    ReloadResult,
    SimilarItems,
)
from gnnrec.serve.service import RecommenderService

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "unknown user, item or tag"},
    422: {"description": "invalid parameters or body"},
}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
    403: {"model": ErrorBody, "description": "writes disabled (no token configured)"},
    410: {"model": ErrorBody, "description": "names a forgotten user: nothing was written"},
    413: {"description": "body larger than the configured limit"},
    422: {"description": "invalid body (not JSON, wrong types, ingest validation rules)"},
    503: {"model": ErrorBody, "description": "Neo4j unreachable: nothing was applied"},
}

_DESCRIPTION = """Recommendations from a trained gnnrec run (LightGCN / GraphSAGE embeddings),
explanations from the Neo4j graph, online feedback folded into the embeddings without
retraining. Write endpoints need `Authorization: Bearer <token>`."""


def create_app(service: RecommenderService) -> FastAPI:
    """The FastAPI app answering with ``service`` (one per replica)."""
    opts = service.options
    # No trailing-slash redirects: /users/abc%2F is the user "abc/", never a 307 to /users/abc.
    app = FastAPI(title="gnnrec", version=__version__, description=_DESCRIPTION,
                  max_body_size=opts.max_body_bytes, redirect_slashes=False)
    bearer = HTTPBearer(auto_error=False, description="the service's API token")
    default_k = min(10, opts.max_k)
    K = Annotated[int, Query(ge=1, le=opts.max_k, description=f"1..{opts.max_k}")]
    # Path ids may hold "/" (sent as %2F): the path converter takes the rest of the path.
    UserPath = Annotated[str, Path(max_length=MAX_ID_LENGTH, description="user id")]
    ItemPath = Annotated[str, Path(max_length=MAX_ID_LENGTH, description="item id")]

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 400:  # FastAPI could not decode the body (not UTF-8 JSON)
            return JSONResponse({"detail": "the body is not JSON (UTF-8)"}, status_code=422)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        # ASCII JSON: the errors echo the input, which may hold a lone surrogate ("\ud800")
        # that UTF-8 cannot encode (FastAPI's own handler answers 500 then).
        body = json.dumps({"detail": jsonable_encoder(exc.errors())}, ensure_ascii=True)
        return Response(body, status_code=422, media_type="application/json")

    @app.exception_handler(ServingError)
    async def _serving_error(_: Request, exc: ServingError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=headers)

    def authorized(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> None:
        service.authorize(f"Bearer {credentials.credentials}" if credentials else None)

    @app.get("/health", response_model=Health, tags=["read"])
    async def health() -> Health:
        """The served run, its metrics, sizes, and whether Neo4j answers."""
        return await service.health()

    @app.get("/recommend/{user:path}", response_model=Recommendations, responses=_ERRORS,
             tags=["read"])
    async def recommend(
        user: UserPath,
        k: K = default_k,
        tag: Annotated[str | None, Query(description="only items carrying this tag")] = None,
        exclude: Annotated[list[str] | None,
                           Query(description="item ids to leave out (repeatable)")] = None,
        diversity: Annotated[float, Query(ge=0.0, le=1.0,
                                          description="MMR re-ranking weight, 0 = off")] = 0.0,
    ) -> Recommendations:
        """Top-k items the user has not interacted with (404: create the user first)."""
        return service.recommend(user, k, tag, exclude or [], diversity)

    @app.get("/similar/{item:path}", response_model=SimilarItems, responses=_ERRORS,
             tags=["read"])
    async def similar(item: ItemPath, k: K = default_k) -> SimilarItems:
        """Nearest items by cosine similarity of their embeddings."""
        return service.similar(item, k)

    @app.get("/explain/{user}/{item}", response_model=Explanation, responses=_ERRORS,
             tags=["read"])
    async def explain(user: Annotated[str, Path(max_length=MAX_ID_LENGTH)],
                      item: Annotated[str, Path(max_length=MAX_ID_LENGTH)]) -> Explanation:
        """Friends, co-interacting users and shared tags linking the user to the item."""
        return await service.explain(user, item)

    @app.get("/explain", response_model=Explanation, responses=_ERRORS, tags=["read"])
    async def explain_query(user: Annotated[str, Query(max_length=MAX_ID_LENGTH)],
                            item: Annotated[str, Query(max_length=MAX_ID_LENGTH)],
                            ) -> Explanation:
        """The same for any ids (also ids holding ``/``): ``/explain?user=U&item=I``."""
        return await service.explain(user, item)

    @app.post("/interactions", response_model=InteractionsResult, responses=_WRITE_ERRORS,
              dependencies=[Depends(authorized)], tags=["write"])
    async def interactions(
        rows: Annotated[list[InteractionIn], Body(min_length=1, max_length=1_000_000)],
    ) -> InteractionsResult:
        """Record interactions (Neo4j first) and fold them into the embeddings at once."""
        return await service.record_interactions(rows)

    @app.post("/users", response_model=NewUserResult, status_code=201,
              responses={**_WRITE_ERRORS, 409: {"model": ErrorBody}},
              dependencies=[Depends(authorized)], tags=["write"])
    async def new_user(body: NewUserIn) -> NewUserResult:
        """Create a user from its items and friends (cold start; popularity if neither)."""
        return await service.create_user(body)

    @app.delete("/users/{user:path}", response_model=ForgetResult,
                responses={**_WRITE_ERRORS, 404: {"model": ErrorBody}},
                dependencies=[Depends(authorized)], tags=["write"])
    async def forget(user: UserPath) -> ForgetResult:
        """Forget a user in Neo4j and in memory (interactions and friendships too)."""
        return await service.forget_user(user)

    @app.post("/admin/reload", response_model=ReloadResult,
              responses={**_WRITE_ERRORS, 404: {"model": ErrorBody}},
              dependencies=[Depends(authorized)], tags=["admin"])
    async def reload(body: ReloadIn) -> ReloadResult:
        """Serve another run: it is loaded fully, then swapped in (in-flight requests finish
        on the old one)."""
        return await service.reload(body.run)

    return app


@serve.deployment
@serve.ingress()
class Recommender:
    """One replica: loads the run once, answers through :func:`create_app`."""

    def __init__(self, options: dict[str, Any] | ServeOptions,
                 feedback_log: DeploymentHandle | None = None, replicas: int = 1) -> None:
        opts = ServeOptions.model_validate(options)
        replica = serve.get_replica_context().replica_tag
        self.service = RecommenderService(opts, feedback_log=feedback_log, replicas=replicas,
                                          replica=replica)

    async def __serve_build_asgi_app__(self) -> FastAPI:
        self.service.start_following()
        return create_app(self.service)

    def __del__(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.close()


def build(options: ServeOptions, resources: ResourceOptions | None = None) -> Any:
    """The Serve application for ``options`` on ``resources`` (not started)."""
    resources = resources or ResourceOptions()
    options = options.with_forget_key()
    actor_options: dict[str, Any] = {"num_cpus": resources.num_cpus}
    if resources.user_code_in_main_loop:
        actor_options["runtime_env"] = {
            "env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}}
    deployment = Recommender.options(
        num_replicas=resources.replicas,
        max_replicas_per_node=resources.max_replicas_per_node,
        max_ongoing_requests=resources.max_ongoing_requests,
        ray_actor_options=actor_options,
        logging_config={"enable_access_log": resources.access_log},
    )
    log = None
    if resources.replicas > 1:
        from gnnrec.serve.feedback import FeedbackLog

        log = FeedbackLog.bind()
    return deployment.bind(options, log, resources.replicas)


def app_builder(args: dict[str, Any]) -> Any:
    """``import_path`` target for ``serve deploy serve/serve_config.yaml``.

    ``args`` holds the fields of :class:`ServeOptions` (``run`` required; ``token`` falls
    back to ``$GNNREC_API_TOKEN``) plus an optional ``resources`` mapping of
    :class:`ResourceOptions` fields (``replicas``, ``num_cpus``, ``max_ongoing_requests``).
    """
    fields = dict(args)
    resources = ResourceOptions.model_validate(fields.pop("resources", {}) or {})
    return build(ServeOptions.with_env_token(**fields), resources)


def run(options: ServeOptions, resources: ResourceOptions | None = None, *,
        blocking: bool = False) -> DeploymentHandle:
    """Start Serve's HTTP proxy on ``resources.host:port`` and deploy the application."""
    resources = resources or ResourceOptions()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    serve.start(http_options={"host": resources.host, "port": resources.port},
                proxy_location=resources.proxy_location)
    return serve.run(build(options, resources), name=resources.app_name,
                     route_prefix=resources.route_prefix, blocking=blocking)
