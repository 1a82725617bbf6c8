"""gunicorn settings as deployed; PORT, WEB_CONCURRENCY and the metrics directory from the env."""

import multiprocessing
import os
import sys

# Neither imports prometheus_client, which picks multiprocess mode once, when first imported.
from tokenserver import metric_files
from tokenserver.config import ConfigError, Settings
from tokenserver.keywrap import check_at_startup


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) <= 0:
        sys.stderr.write(f"Error: {name}={raw!r} is not valid: expected a positive whole number\n")
        sys.exit(2)
    return int(raw)


# Fail before forking workers, with one line naming the bad variable (or the key that does
# not open the signing keys); a warning, if any, is logged once gunicorn's logger is up.
try:
    _STARTUP_WARNING = check_at_startup(Settings.from_env())
except ConfigError as exc:
    sys.stderr.write(f"Error: {exc}\n")
    sys.exit(2)

bind = f"0.0.0.0:{_int_env('PORT', 8000)}"
workers = _int_env("WEB_CONCURRENCY", 2 * multiprocessing.cpu_count() + 1)
worker_class = "sync"

# Once the settings are known good (a refused start leaves nothing behind), and before the
# workers (forked from here) import prometheus_client: they all write their metrics here.
METRICS_DIR = metric_files.choose_directory()
# Bounds on what a web worker's PostgreSQL session may do, so a stuck statement or an abandoned
# transaction answers 503 long before `timeout` below kills the worker. Only the server gets
# them (migrations may run longer). libpq reads PGOPTIONS: set it yourself to choose others,
# or to "" behind a PgBouncer that refuses the `options` startup parameter.
os.environ.setdefault(
    "PGOPTIONS", "-c statement_timeout=10s -c idle_in_transaction_session_timeout=60s"
)

timeout = 30  # a worker stuck longer than this is killed and replaced
graceful_timeout = 30  # on SIGTERM/HUP, in-flight requests get this long to finish
keepalive = 5
max_requests = 50_000  # recycle workers now and then, so slow leaks cannot accumulate
max_requests_jitter = 5_000  # ...but not all at once
# No control socket: its default path is shared by every gunicorn of the same user, and
# signals (HUP to reload, TTIN/TTOU, TERM) already do what it offers.
control_socket_disable = True
if os.path.isdir("/dev/shm"):  # noqa: S108 (gunicorn's own advice; only heartbeat files)
    # Worker heartbeats on tmpfs: a slow or full disk must not get healthy workers killed.
    worker_tmp_dir = "/dev/shm"  # noqa: S108
# Header limits (hostile clients): request line, header count and size.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
# Every line JSON: the access log (stdout), gunicorn's error log and the app's logs (stderr).
logger_class = "tokenserver.gunicorn_logging.JSONLogger"
accesslog = "-"
errorlog = "-"


def on_starting(server: object) -> None:
    """Counters start at zero with each master: drop files an earlier one left behind."""
    metric_files.reset(METRICS_DIR)
    if _STARTUP_WARNING:
        server.log.warning(_STARTUP_WARNING)  # type: ignore[attr-defined]


def child_exit(server: object, worker: object) -> None:
    """Keep a dead worker's counts (folded into the archive) and forget its process."""
    metric_files.worker_exited(worker.pid, METRICS_DIR)  # type: ignore[attr-defined]


def on_exit(server: object) -> None:
    """Remove the metrics directory if it was made for this master (never the operator's)."""
    metric_files.remove_if_own(METRICS_DIR)
