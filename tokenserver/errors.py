"""The API error family and the one renderer that turns every failure into JSON."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, jsonify, request
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import ClientDisconnected, HTTPException
from werkzeug.wrappers import Response as WerkzeugResponse

from .observability import Tracebacks, one_line

log = logging.getLogger(__name__)

# Kept in the WSGI environ, not on g: g is shared by requests made in an app context already
# pushed (as tests do), and this mark must never outlive its request.
_PROTOCOL_STEP = "tokenserver.protocol_step"


def protocol_step() -> None:
    """Mark this request's error answer as a normal step of its protocol (a device polling
    before its user answers), not a failed attempt: the failures-only limits skip it. They
    are there to slow the guessing of secrets, and such a caller has shown a genuine one."""
    request.environ[_PROTOCOL_STEP] = True


def not_a_protocol_step() -> None:
    """Take back protocol_step(): the answer it marked has been replaced by a refusal that
    counts (a replayed proof or client assertion found only when the poll is stored)."""
    request.environ.pop(_PROTOCOL_STEP, None)


def is_a_protocol_step() -> bool:
    """Whether this request's error answer was marked by protocol_step()."""
    return _PROTOCOL_STEP in request.environ


_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    417: "expectation_failed",
    429: "too_many_requests",
    431: "request_header_fields_too_large",
    500: "server_error",
    501: "not_implemented",
    503: "service_unavailable",
}


def error_code(status: int) -> str:
    """The `error` of an answer with this status when nothing more specific applies."""
    return _HTTP_CODES.get(status, "error")


class APIError(Exception):
    """An error the client should see, with its status, code and human description."""

    status = 400
    error = "invalid_request"

    def __init__(
        self,
        description: str,
        *,
        status: int | None = None,
        error: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.description = description
        self.status = status or self.status
        self.error = error or self.error
        self.headers = headers or {}


class InvalidRequest(APIError):
    """The request body or parameters break a rule; the description names the field."""


class NotFound(APIError):
    """Nothing at this address for this caller."""

    status = 404
    error = "not_found"


class Conflict(APIError):
    """The request collides with existing state."""

    status = 409
    error = "conflict"


class Forbidden(APIError):
    """The server refuses the action whoever asks."""

    status = 403
    error = "forbidden"


def seconds(count: int) -> str:
    """A number of seconds in words: "1 second", "2 seconds"."""
    return f"{count} second" if count == 1 else f"{count} seconds"


def error_response(
    status: int, error: str, description: str, headers: dict[str, Any] | None = None
) -> Response:
    """The one JSON shape of every error: {"error", "error_description"}."""
    response = jsonify(error=error, error_description=description)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def http_error(exc: HTTPException) -> Response | WerkzeugResponse:
    """Werkzeug's own errors (404, 405, 413...) in the one JSON shape, their Allow kept."""
    status = exc.code or 500
    response = exc.get_response()
    if response.mimetype == "application/json" and exc.response is not None:
        return response  # already rendered as JSON (e.g. by Authlib's ResourceProtector)
    headers = {k: v for k, v in response.headers.items() if k in ("Allow", "WWW-Authenticate")}
    return error_response(status, error_code(status), exc.description or exc.name, headers)


_tracebacks = Tracebacks()


def _database_error(exc: DBAPIError) -> Response:
    # One line per failed request, at the level alerts watch; the traceback at most once a
    # minute (an outage fails every request alike, and kilobytes each would flood the log).
    log.error(
        "database unavailable: %s (%s %s, request id %s)",
        one_line(exc),
        request.method,
        request.url_rule.rule if request.url_rule else "<unmatched>",
        g.get("request_id", "-"),
        exc_info=exc if _tracebacks.due() else None,
    )
    return error_response(
        503,
        "service_unavailable",
        "The database is unavailable; try again shortly.",
        {"Retry-After": "1"},
    )


def _pool_exhausted(exc: PoolTimeout) -> Response:
    # Every pooled connection stayed busy for pool_timeout: an overload, not our bug.
    log.warning("no database connection free: %s", exc.__class__.__name__)
    return error_response(
        503, "service_unavailable", "The service is busy; try again shortly.", {"Retry-After": "1"}
    )


def schema_missing(exc: DBAPIError) -> bool:
    """Whether the database answered but lacks our tables or columns (not migrated to head)."""
    orig = exc.orig
    if type(orig).__name__ in ("UndefinedTable", "UndefinedColumn"):  # psycopg
        return True
    message = str(orig)
    return message.startswith(("no such table", "no such column"))  # sqlite3


def _schema_error(exc: DBAPIError) -> Response:
    log.error("database schema is not at head: %s", exc.__class__.__name__)
    return error_response(
        503,
        "service_unavailable",
        "The database schema is not at the newest version; run `tokenserver db upgrade`.",
        {"Retry-After": "30"},
    )


def keys_sealed(exc: Exception) -> Response:
    """The answer while the signing keys cannot be opened (keywrap.KeyEncryptionError)."""
    # A wrong TOKENSERVER_KEY_ENCRYPTION_KEY (one missed by the start-up check, or keys
    # rewrapped under a key this node lacks): an outage to fix in the configuration, not a bug.
    # The message names the variable, never its value.
    log.error("signing key cannot be opened: %s", exc)
    return error_response(
        503,
        "service_unavailable",
        "The signing keys cannot be opened; try again shortly.",
        {"Retry-After": "30"},
    )


def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error (request id %s)", g.get("request_id", "-"))
    return error_response(500, "server_error", "An unexpected error occurred.")


def register_error_handlers(app: Flask) -> None:
    """Route every failure through error_response()."""
    app.register_error_handler(
        APIError, lambda e: error_response(e.status, e.error, e.description, e.headers)
    )
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(ClientDisconnected, _body_cut_short)
    app.register_error_handler(DBAPIError, _database_error_or_bug)
    app.register_error_handler(PoolTimeout, _pool_exhausted)
    app.register_error_handler(Exception, _unexpected)


def _body_cut_short(_exc: ClientDisconnected) -> Response:
    # Werkzeug's own text ("The browser (or proxy) sent a request...") says nothing of why.
    return error_response(
        400, "invalid_request", "The body ended before the length its Content-Length gave."
    )


def _database_error_or_bug(exc: DBAPIError) -> Response:
    # A lost connection or an unmigrated schema is an outage (503); anything else from the
    # driver is our bug (500).
    if schema_missing(exc):
        return _schema_error(exc)
    if exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError)):
        return _database_error(exc)
    return _unexpected(exc)
