"""gunicorn settings as deployed; PORT, WEB_CONCURRENCY and the metrics directory from the env."""

import atexit
import os
import sys

# Neither imports prometheus_client, which picks multiprocess mode once, when first imported.
from tokenserver import metric_files
from tokenserver.config import ConfigError, Settings, unknown_variables
from tokenserver.keywrap import check_at_startup
from tokenserver.worker_memory import release_freed_heap


def _refuse(exc: ConfigError) -> None:
    """Stop start-up with one line naming the bad variable, never a traceback."""
    sys.stderr.write(f"Error: {exc}\n")
    sys.exit(2)


# Fail before forking workers, with one line naming the bad variable (or the key that does
# not open the signing keys); a warning, if any, is logged once gunicorn's logger is up.
try:
    _SETTINGS = Settings.from_env()
    _STARTUP_WARNING = check_at_startup(_SETTINGS)
except ConfigError as exc:
    _refuse(exc)
for _line in unknown_variables():
    sys.stderr.write(_line + "\n")

bind = f"0.0.0.0:{_SETTINGS.port}"
workers = _SETTINGS.web_concurrency
# Idle and slow connections must not hold the service (README "Deployment"). Measured on
# loopback with 2 workers (tests/test_gunicorn_worker.py does the same):
# - sync (one connection per worker): 4 idle sockets, or 4 clients sending a header line a
#   second, stall every other request until `timeout` kills the workers (26-30 s).
# - gthread, 4 threads: a new connection takes a thread for up to 5 s before it sends a byte
#   (4 idle sockets: 4.7 s for the next request), and a slowloris head is read by a thread
#   with no deadline at all: 4 of them were never cut, and a request that met a worker whose
#   threads they held waited over 15 s (1 of 3).
# - BufferedHeadWorker (gthread whose poller gathers each head before a thread sees it):
#   with 8 idle and 8 slowloris sockets open, /healthz answers in milliseconds, and the
#   slow ones are closed `keepalive` seconds after they connected.
# The threads run requests; waiting connections cost a file descriptor each, up to
# worker_connections per worker. Each thread may hold two pooled database connections (the
# reader and the session): 4 threads stay within SQLAlchemy's default pool (5 + 10 overflow).
worker_class = "tokenserver.gunicorn_worker.BufferedHeadWorker"
threads = 4
worker_connections = 1000


# Once the settings are known good (a refused start leaves nothing behind), and before the
# workers (forked from here) import prometheus_client: they all write their metrics here.
METRICS_DIR = metric_files.choose_directory()
try:
    metric_files.check(METRICS_DIR)
except ConfigError as exc:
    _refuse(exc)
# Removed when this master exits, however it does: gunicorn calls no hook when the master
# gives up before serving (its port taken, say). Only this master's own directory goes: the
# workers forked from it run this too, and an operator's directory is never removed.
atexit.register(metric_files.remove_if_own, METRICS_DIR)
# Bounds on what a web worker's PostgreSQL session may do, so a stuck statement or an abandoned
# transaction answers 503 long before `timeout` below kills the worker. Only the server gets
# them (migrations may run longer). libpq reads PGOPTIONS: set it yourself to choose others,
# or to "" behind a PgBouncer that refuses the `options` startup parameter.
os.environ.setdefault(
    "PGOPTIONS", "-c statement_timeout=10s -c idle_in_transaction_session_timeout=60s"
)

timeout = 30  # a worker whose main loop is stuck longer than this is killed and replaced
graceful_timeout = 30  # on SIGTERM/HUP, in-flight requests get this long to finish
# Seconds a client has to send a whole request head, from connecting or from its previous
# response; a connection idle that long is closed. Also the keep-alive idle time.
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


def post_worker_init(worker: object) -> None:
    """Before serving, give back the heap the app's loading freed (measured: 17 MiB a worker,
    the trial hash of its argon2id check; 132 to 115 MB of VmRSS after every kind of request)."""
    release_freed_heap()


def child_exit(server: object, worker: object) -> None:
    """Keep a dead worker's counts (folded into the archive) and forget its process."""
    metric_files.worker_exited(worker.pid, METRICS_DIR)  # type: ignore[attr-defined]
