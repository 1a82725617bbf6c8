"""gunicorn settings as deployed; PORT and WEB_CONCURRENCY come from the environment."""

import multiprocessing
import os
import sys

from tokenserver.config import ConfigError, Settings


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) <= 0:
        sys.stderr.write(f"Error: {name}={raw!r} is not valid: expected a positive whole number\n")
        sys.exit(2)
    return int(raw)


# Fail before forking workers, with one line naming the bad variable.
try:
    Settings.from_env()
except ConfigError as exc:
    sys.stderr.write(f"Error: {exc}\n")
    sys.exit(2)

bind = f"0.0.0.0:{_int_env('PORT', 8000)}"
workers = _int_env("WEB_CONCURRENCY", 2 * multiprocessing.cpu_count() + 1)
worker_class = "sync"
timeout = 30  # a worker stuck longer than this is killed and replaced
graceful_timeout = 30  # on SIGTERM/HUP, in-flight requests get this long to finish
keepalive = 5
max_requests = 10_000  # recycle workers now and then, so slow leaks cannot accumulate
max_requests_jitter = 1_000  # ...but not all at once
# Header limits (hostile clients): request line, header count and size.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
accesslog = "-"
access_log_format = (
    '{"time": "%(t)s", "remote": "%(h)s", "method": "%(m)s", "path": "%(U)s", '
    '"status": %(s)s, "bytes": "%(B)s", "duration_us": %(D)s, "request_id": "%({x-request-id}o)s", '
    '"user_agent": "%(a)s"}'
)
errorlog = "-"
