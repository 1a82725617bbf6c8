"""Request ids and structured JSON logs: every line logged inside a request names that request."""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import threading
import time
from datetime import UTC, datetime

from flask import Flask, Response, g, has_request_context, request

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
HEADER = "X-Request-ID"
_ENVIRON_KEY = "HTTP_X_REQUEST_ID"  # the header as WSGI names it: no Headers lookup per request


def request_id() -> str:
    """This request's id: the caller's X-Request-ID if short and plain, else a new one."""
    current: str | None = g.get("request_id")
    if current is None:
        current = g.request_id = _new_request_id(request.environ)
    return current


def _new_request_id(environ: dict[str, object]) -> str:
    supplied = environ.get(_ENVIRON_KEY)
    # Accept a caller's id only if it is short and plain: it ends up in logs and headers,
    # so anything else could forge log lines or split headers.
    if isinstance(supplied, str) and _REQUEST_ID.fullmatch(supplied):
        return supplied
    return secrets.token_hex(16)


class JSONFormatter(logging.Formatter):
    """One JSON object per line, with the request id when the line is logged in a request."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if has_request_context():
            entry["request_id"] = request_id()
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class Tracebacks:
    """Whether a failure's full traceback is due: at most one per `interval` seconds per
    process. In an outage every request fails alike; one traceback a minute keeps the cause on
    record without a log storm of kilobytes per request."""

    def __init__(self, interval: float = 60.0) -> None:
        self._interval = interval
        self._last = float("-inf")
        self._lock = threading.Lock()

    def due(self) -> bool:
        """True at most once per interval (and the first time)."""
        now = time.monotonic()
        with self._lock:
            if now - self._last < self._interval:
                return False
            self._last = now
            return True


def one_line(exc: BaseException) -> str:
    """An exception in one short line: its class and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class TracebacksOncePerMinute(logging.Filter):
    """For a library logger that logs a traceback per request in an outage (flask-limiter,
    when its Redis is down): each line stays, naming the exception; its traceback only when due.
    """

    def __init__(self) -> None:
        super().__init__()
        self._tracebacks = Tracebacks()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and not self._tracebacks.due():
            record.msg = f"{record.getMessage()} ({one_line(exc)})"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


def configure_logging() -> None:
    """Send every logger's lines to stderr as JSON (once per process); ours from INFO up."""
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JSONFormatter) for h in root.handlers):
        # The process's own stderr (file descriptor 2), whatever sys.stderr has been swapped
        # for: a command's output captured from sys.stdout/sys.stderr stays free of log lines.
        handler = logging.StreamHandler(sys.__stderr__ or sys.stderr)
        handler.setFormatter(JSONFormatter())
        root.addHandler(handler)
    # Our own INFO lines (audit, operations) are wanted; libraries stay at WARNING.
    logging.getLogger("tokenserver").setLevel(logging.INFO)
    # Authlib logs every token response it issues at DEBUG: never, whatever the root's level.
    logging.getLogger("authlib").setLevel(logging.INFO)
    limiter = logging.getLogger("flask-limiter")
    if not any(isinstance(f, TracebacksOncePerMinute) for f in limiter.filters):
        limiter.addFilter(TracebacksOncePerMinute())


def _assign_request_id() -> None:
    g.request_id = _new_request_id(request.environ)


def _echo_request_id(response: Response) -> Response:
    # Assigned by the first before_request hook, so every response has one (g.get: a request
    # that failed before any hook ran still gets one here).
    response.headers[HEADER] = g.get("request_id") or request_id()
    return response


def init_app(app: Flask) -> None:
    """Hook request ids and JSON logging into the app."""
    configure_logging()
    # First of all hooks, so a request refused by an earlier one (a rate limit) still has its id.
    app.before_request_funcs.setdefault(None, []).insert(0, _assign_request_id)
    app.after_request(_echo_request_id)
