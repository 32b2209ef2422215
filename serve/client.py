"""HTTP client of the serving application (standard library only).

``recommend_via_server`` and ``explain_via_server`` back ``gnnrec recommend USER --server
URL`` and ``gnnrec explain USER ITEM --server URL``; they raise :class:`ServerError` (a
:class:`~gnnrec.errors.GnnrecError`, so the CLI prints its message) on any failure.
:class:`ServeClient` is the general client (tests, benchmarks, scripts).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from gnnrec.errors import GnnrecError

DEFAULT_URL = "http://127.0.0.1:8000"
# Answers a read is retried on: a replica lost with its node answers 500 for a request routed
# to it in the moment before Ray notices; a proxy or load balancer may say 502/503/504.
_TRANSIENT = frozenset({500, 502, 503, 504})


class ServerError(GnnrecError):
    """The server could not be reached or answered with an error status."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def _segment(value: str) -> str:
    return urllib.parse.quote(str(value), safe="")


class ServeClient:
    """Calls one server. Methods return ``(status, parsed JSON body)`` and never raise on
    HTTP error statuses; :meth:`call` raises :class:`ServerError` instead.

    Reads (``GET``) are retried ``read_retries`` times (after 0.1 s, then 0.3 s, ...) when
    the server cannot be reached or answers 500/502/503/504, so a read that meets a
    replica dying with its node is answered by another one; writes are never retried."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None,
                 timeout: float = 30.0, read_retries: int = 2) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.read_retries = read_retries

    def request(self, method: str, path: str, body: Any = None, *,
                params: Sequence[tuple[str, Any]] = (), raw: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        retries = self.read_retries if method == "GET" else 0
        for attempt in range(retries + 1):
            try:
                status, parsed = self._request_once(method, path, body, params, raw, headers)
            except ServerError as exc:
                if attempt == retries or isinstance(exc.__cause__, TimeoutError) or isinstance(
                        getattr(exc.__cause__, "reason", None), TimeoutError):
                    raise  # a server too slow to answer is not asked again
            else:
                if status not in _TRANSIENT or attempt == retries:
                    return status, parsed
            time.sleep(0.1 * 3**attempt)
        raise AssertionError("unreachable")

    def _request_once(self, method: str, path: str, body: Any,
                      params: Sequence[tuple[str, Any]], raw: bytes | None,
                      headers: dict[str, str] | None) -> tuple[int, Any]:
        query = urllib.parse.urlencode([(k, v) for k, v in params if v is not None])
        url = f"{self.url}{path}" + (f"?{query}" if query else "")
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status, payload = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerError(f"cannot reach the gnnrec server at {self.url}: {reason}") from exc
        try:
            parsed = json.loads(payload) if payload else None
        except json.JSONDecodeError:
            parsed = payload.decode(errors="replace")
        return status, parsed

    def call(self, method: str, path: str, body: Any = None, *,
             params: Sequence[tuple[str, Any]] = ()) -> Any:
        """Like :meth:`request` but raise :class:`ServerError` unless the status is 2xx."""
        status, parsed = self.request(method, path, body, params=params)
        if not 200 <= status < 300:
            detail = parsed.get("detail") if isinstance(parsed, dict) else parsed
            raise ServerError(f"server {self.url} answered {status}: {detail}", status, parsed)
        return parsed

    # -- endpoints --------------------------------------------------------------------
    def health(self) -> Any:
        return self.call("GET", "/health")

    def recommend(self, user: str, k: int = 10, *, tag: str | None = None,
                  exclude: Sequence[str] = (), diversity: float | None = None) -> Any:
        params = [("k", k), ("tag", tag), ("diversity", diversity),
                  *(("exclude", e) for e in exclude)]
        return self.call("GET", f"/recommend/{_segment(user)}", params=params)

    def similar(self, item: str, k: int = 10) -> Any:
        return self.call("GET", f"/similar/{_segment(item)}", params=[("k", k)])

    def explain(self, user: str, item: str) -> Any:
        return self.call("GET", "/explain", params=[("user", user), ("item", item)])

    def add_interactions(self, rows: Sequence[dict[str, Any]]) -> Any:
        return self.call("POST", "/interactions", list(rows))

    def add_user(self, user: str, items: Sequence[str] = (), friends: Sequence[str] = ()) -> Any:
        return self.call("POST", "/users", {"user": user, "items": list(items),
                                            "friends": list(friends)})

    def forget(self, user: str) -> Any:
        return self.call("DELETE", f"/users/{_segment(user)}")

    def reload(self, run: str) -> Any:
        return self.call("POST", "/admin/reload", {"run": run})


def recommend_via_server(url: str, user: str, k: int = 10, *, tag: str | None = None,
                         exclude: Sequence[str] = (), diversity: float | None = None,
                         timeout: float = 30.0) -> dict[str, Any]:
    """``GET /recommend/{user}``: ``{"user", "k", "items": [{"item", "score"}], ...}``."""
    return ServeClient(url, timeout=timeout).recommend(user, k, tag=tag, exclude=exclude,
                                                       diversity=diversity)


def explain_via_server(url: str, user: str, item: str, timeout: float = 30.0) -> dict[str, Any]:
    """``GET /explain/{user}/{item}``: friends, co-interacting users, tags, ``source``."""
    return ServeClient(url, timeout=timeout).explain(user, item)
