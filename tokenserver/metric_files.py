"""The files behind multiprocess metrics: wiped per gunicorn master, dead workers folded in.

prometheus_client's multiprocess mode keeps one file per worker process and per metric type in
PROMETHEUS_MULTIPROC_DIR and sums them on every scrape. Workers are recycled (max_requests), so
left alone the directory would gain files for ever and scrapes would slow down year after year.
When a worker exits, the master adds its counters and histograms into one archive file per type
and deletes the worker's own; an exclusive lock keeps a scrape from seeing a total twice or not
at all in between.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable; gunicorn.conf.py sets it
_LOCK = ".lock"
_OWNER = ".owner"  # in a directory made for one master: that master's pid
_ARCHIVE = "archive"  # dead workers' counts live on in <type>_archive.db
_SUMMABLE = ("counter", "histogram")  # values add up by key; this service has no gauges
# This module imports prometheus_client only inside functions: choose_directory() must run
# before it is first imported, as it picks multiprocess mode at import time.


def directory() -> str | None:
    """The multiprocess directory, or None when metrics are single-process (tests, the CLI)."""
    return os.environ.get(ENV) or None


def choose_directory() -> str:
    """Set PROMETHEUS_MULTIPROC_DIR for this master and its workers, and return it.

    The operator's own directory if set; else one made for this master. A directory made for
    another master (inherited through a USR2 upgrade) is not shared: that master removes it
    when it exits.
    """
    chosen = directory()
    if chosen is None or _owner(chosen) not in (None, os.getpid()):
        chosen = tempfile.mkdtemp(prefix="tokenserver-metrics-")
        Path(chosen, _OWNER).write_text(str(os.getpid()))
        os.environ[ENV] = chosen
    return chosen


def check(path: str) -> None:
    """Refuse a directory the master cannot make or write to, with one line naming the
    variable (ConfigError), before gunicorn starts rather than as a traceback once it has."""
    from .config import ConfigError

    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with _locked(path, fcntl.LOCK_SH):
            pass  # the lock file is made, so the directory takes the workers' files too
    except OSError as exc:
        problem = exc.strerror or exc.__class__.__name__
        raise ConfigError(f"{ENV}={path!r} is not a directory we can write to: {problem}") from None


def reset(path: str) -> None:
    """Start counting from zero: delete every metric file a previous master left behind."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(path, fcntl.LOCK_EX):
        for stale in folder.glob("*.db"):
            stale.unlink()


def remove_if_own(path: str) -> None:
    """Delete the directory if it was made for this master (never an operator's own)."""
    if _owner(path) != os.getpid():
        return
    folder = Path(path)
    for entry in folder.iterdir():
        entry.unlink()
    folder.rmdir()


def _owner(path: str) -> int | None:
    try:
        return int(Path(path, _OWNER).read_text())
    except (OSError, ValueError):
        return None


def worker_exited(pid: int, path: str) -> None:
    """Fold a dead worker's counters and histograms into the archive and drop its files."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)
    with _locked(path, fcntl.LOCK_EX):
        for kind in _SUMMABLE:
            dead = Path(path, f"{kind}_{pid}.db")
            if dead.exists():
                _fold(dead, Path(path, f"{kind}_{_ARCHIVE}.db"))
                dead.unlink()


def readable(path: str) -> list[str]:
    """The metric files a scrape can read now.

    A starting worker's file exists empty for an instant before prometheus_client sizes it, and
    reading it then raises, which would fail the whole scrape: such a file holds nothing yet.
    """
    return [str(f) for f in Path(path).glob("*.db") if _sized(f)]


def _sized(file: Path) -> bool:
    try:
        return file.stat().st_size > 0
    except FileNotFoundError:  # a fold removed it since the listing
        return False


@contextmanager
def scrape_lock(path: str) -> Iterator[None]:
    """Held while a scrape reads the files, so it never meets a half-done fold."""
    with _locked(path, fcntl.LOCK_SH):
        yield


@contextmanager
def _locked(path: str, mode: int) -> Iterator[None]:
    with open(Path(path, _LOCK), "a") as lock:
        fcntl.flock(lock, mode)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _fold(dead: Path, archive: Path) -> None:
    """Write archive + dead, key by key, to a new archive that replaces the old in one step."""
    from prometheus_client.mmap_dict import MmapedDict

    totals: dict[str, float] = defaultdict(float)
    for source in (archive, dead):
        if _sized(source):  # an archive not made yet, or a file never sized, adds nothing
            for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(source):
                totals[key] += value
    partial = archive.with_suffix(".partial")  # not *.db: scrapes never read it
    partial.unlink(missing_ok=True)
    out = MmapedDict(str(partial))
    try:
        for key, value in totals.items():
            out.write_value(key, value, 0.0)
    finally:
        out.close()
    os.replace(partial, archive)
