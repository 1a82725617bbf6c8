"""gunicorn's own logs as JSON lines: the access log and the error log, like the app's logs."""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from gunicorn import glogging

from .observability import JSONFormatter, configure_logging

# The balancer's readiness checks that pass are not access-logged: it checks each node several
# times a second (deploy/haproxy.cfg), which would bury every other line. A failing one is.
# /healthz is logged like any route: it is the floor the bench measures every route against.
_READINESS_CHECK = "/readyz"


class JSONLogger(glogging.Logger):
    """gunicorn's Logger writing JSON objects built with json.dumps, never by string formatting.

    A format-string access log breaks on a quote in a path or user agent (and lets a client
    forge fields); json.dumps escapes whatever the client sent.
    """

    def setup(self, cfg: Any) -> None:
        """gunicorn's handlers, with every error-log line formatted as JSON."""
        super().setup(cfg)
        configure_logging()
        for handler in self.error_log.handlers:
            handler.setFormatter(JSONFormatter())
        self.error_log.addFilter(_without_request_text)

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: timedelta) -> None:
        """One JSON line per request; no query string, as it may carry a token."""
        if not self.access_log_enabled or (_is_readiness_check(environ) and _succeeded(resp)):
            return
        self.access_log.info(json.dumps(access_entry(resp, environ, request_time)))


# gunicorn's own line about a request it could not parse quotes what was sent: its
# request line with the query (`?code=...`), or a malformed header line whole (`Authorization
# Bearer <token>` without its colon). The kind of error stays; what the client sent goes.
_INVALID_REQUEST = "Invalid request from ip="
_QUOTED = re.compile(r"(?::\s*)?(?<!\w)b?['\"].*", re.DOTALL)  # the first repr() to the end


# Its line about a request whose handling raised past the app names the request by its URI,
# query and all: "Error handling request GET /cb?code=...".
_FAILED_REQUEST = "Error handling request %s"


def _without_request_text(record: logging.LogRecord) -> bool:
    """Strip what the client sent from gunicorn's lines about a request it refused or failed."""
    message = record.msg if isinstance(record.msg, str) else ""
    if message.startswith(_INVALID_REQUEST):
        record.msg = _QUOTED.sub("", message)
        record.args = ()
    elif message.startswith(_FAILED_REQUEST) and isinstance(record.args, tuple):
        record.args = tuple(str(arg).split("?", 1)[0] for arg in record.args)
    return True


def access_entry(resp: Any, environ: dict[str, Any], request_time: timedelta) -> dict[str, Any]:
    """The fields of one access-log line."""
    status = resp.status
    if isinstance(status, str):
        status = status.split(None, 1)[0]
    return {
        "time": datetime.now(UTC).isoformat(),
        "level": "info",
        "logger": "gunicorn.access",
        "pid": os.getpid(),
        "request_id": _response_header(resp, "x-request-id"),
        "remote": environ.get("REMOTE_ADDR"),
        "method": environ.get("REQUEST_METHOD"),
        "path": environ.get("PATH_INFO"),
        "status": int(status) if str(status).isdigit() else status,
        "bytes": getattr(resp, "sent", None),
        "duration_ms": round(request_time.total_seconds() * 1000, 3),
        "user_agent": environ.get("HTTP_USER_AGENT"),
    }


def _is_readiness_check(environ: dict[str, Any]) -> bool:
    path, method = environ.get("PATH_INFO"), environ.get("REQUEST_METHOD")
    return path == _READINESS_CHECK and method in ("GET", "HEAD")


def _succeeded(resp: Any) -> bool:
    code = getattr(resp, "status_code", None)  # gunicorn's Response, once it has started
    return isinstance(code, int) and 200 <= code < 300


def _response_header(resp: Any, name: str) -> str | None:
    for key, value in resp.headers:
        if key.lower() == name:
            return str(value)
    return None
