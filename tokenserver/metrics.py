"""Prometheus metrics: what each request did, counted once and summed across gunicorn workers.

Nearly everything is derived in one after_request hook from what Flask already knows (the url
rule, the status, the grant type of a token request, the `active` of an introspection answer),
so domain modules need not call in here. The one exception is UNKNOWN_USER_CHECKS: a login for
an unknown name answers exactly as a wrong password does, so only passwords.py can tell them
apart. Labels are route templates, never raw paths, to keep the
number of series bounded whatever URLs clients send.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Flask, Request, Response, current_app, request
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder

from . import metric_files
from .models import GRANT_TYPES
from .payloads import given

bp = Blueprint("metrics", __name__)

REQUESTS = Counter(
    "tokenserver_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "tokenserver_http_request_duration_seconds",
    "Time to produce a response, by method and route template.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
TOKENS_ISSUED = Counter(
    "tokenserver_tokens_issued",
    "Successful token responses, by grant type.",
    ["grant_type"],
)
LOGIN_FAILURES = Counter(
    "tokenserver_login_failures",
    "Sign-ins refused for their credentials (wrong, or a disabled account): password grants "
    "answered invalid_grant and /login forms answered 400.",
)
THROTTLED = Counter(
    "tokenserver_throttled_requests",
    "Requests refused with 429 by a rate limit or the password guard, by route template.",
    ["route"],
)
UNKNOWN_USER_CHECKS = Counter(
    "tokenserver_unknown_user_password_checks",
    "Password checks for unknown usernames, spent on a dummy hash so they cost what a wrong "
    "password does.",
)
INTROSPECTIONS = Counter(
    "tokenserver_introspections",
    "Introspection answers, by whether the token was active.",
    ["active"],
)
# Series that exist from the start, so a rate() over them works before the first event.
for _grant in GRANT_TYPES:
    TOKENS_ISSUED.labels(_grant)
for _active in ("true", "false"):
    INTROSPECTIONS.labels(_active)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_UNMATCHED = "<unmatched>"  # 404s and 405s: one series, whatever the path was
SERVER = "<server>"  # answered by gunicorn before or outside the app
_STARTED = "tokenserver.metrics.started"  # in the WSGI environ, like the request it times
# This process's handles on its request series, so the hot path skips labels()' checks and
# lock. Bounded: keys are known methods, route templates and status codes. Threads need no
# lock of ours: setdefault is atomic, and labels() gives racing threads the same child.
_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
_SELF = "metrics.metrics"
_TOKEN = "oauth.token"
_INTROSPECT = "oauth.introspect"
_LOGIN_PAGE = "pages.login"


@bp.get("/metrics")
def metrics() -> Response:
    """Every worker's metrics in the Prometheus (or OpenMetrics) text format."""
    registry: CollectorRegistry = current_app.extensions["tokenserver.metrics_registry"]
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    path = metric_files.directory()
    if path is None:
        body = encode(registry)
    else:
        with metric_files.scrape_lock(path):
            body = encode(registry)
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})


def _start_timer() -> None:
    request.environ[_STARTED] = time.perf_counter()


def _observe(response: Response) -> Response:
    """Count this request; a few dictionary lookups, as it runs on every request."""
    # The request itself, not the proxy: each proxy access is a context lookup of its own.
    current: Request = request._get_current_object()  # type: ignore[attr-defined]
    rule = current.url_rule
    endpoint = rule.endpoint if rule is not None else None
    if endpoint == _SELF:
        return response  # scrapes would otherwise count themselves
    route = rule.rule if rule is not None else _UNMATCHED
    method = current.method if current.method in _METHODS else "other"
    status = response.status_code
    key = (method, route, status)
    series = _series.get(key) or _series.setdefault(key, _new_series(method, route, status))
    series[0].inc()
    started = current.environ.get(_STARTED)
    if started is not None:
        series[1].observe(time.perf_counter() - started)
    if status == 429:
        THROTTLED.labels(route).inc()
    elif endpoint == _TOKEN:
        _count_token_answer(current, status, response)
    elif endpoint == _LOGIN_PAGE and status == 400:
        LOGIN_FAILURES.inc()  # the page's one 400: these credentials do not sign anyone in
    elif endpoint == _INTROSPECT and status == 200:
        body = _json(response)
        INTROSPECTIONS.labels("true" if body.get("active") is True else "false").inc()
    return response


def count_server_answer(method: str | None, status: int) -> None:
    """Count an answer gunicorn gave without the app (a request it could not parse, or a
    failure outside the app), under the route SERVER: the app's hooks never saw it."""
    REQUESTS.labels(method if method in _METHODS else "other", SERVER, str(status)).inc()


def _new_series(method: str, route: str, status: int) -> tuple[Any, Any]:
    return REQUESTS.labels(method, route, str(status)), LATENCY.labels(method, route)


def _count_token_answer(current: Request, status: int, response: Response) -> None:
    if status == 200:
        grant = _grant_type(current)
        TOKENS_ISSUED.labels(grant if grant in GRANT_TYPES else "other").inc()
    elif (
        status == 400
        # The answer first: the form of a refused body (one cut short) is read only once.
        and _json(response).get("error") == "invalid_grant"
        and _grant_type(current) == "password"
    ):
        LOGIN_FAILURES.inc()


def _grant_type(current: Request) -> str:
    """The grant type the token endpoint read (one sent without a value is as if left out)."""
    return given(current.form).get("grant_type", "")


def _json(response: Response) -> dict[str, Any]:
    body = response.get_json(silent=True)
    return body if isinstance(body, dict) else {}


def _registry() -> CollectorRegistry:
    """Under gunicorn, a registry that reads every worker's files; else this process's own."""
    if metric_files.directory() is None:
        return REGISTRY
    registry = CollectorRegistry()
    _Collector(registry)
    return registry


class _Collector(multiprocess.MultiProcessCollector):
    """prometheus_client's, reading only files a worker has begun (metric_files.readable)."""

    def collect(self) -> Any:
        return self.merge(metric_files.readable(self._path), accumulate=True)


def init_app(app: Flask) -> None:
    """Serve /metrics and count every other request."""
    app.extensions["tokenserver.metrics_registry"] = _registry()
    app.register_blueprint(bp)
    # First of all hooks, so time spent in the others (rate limits, request ids) is measured.
    app.before_request_funcs.setdefault(None, []).insert(0, _start_timer)
    app.after_request(_observe)
