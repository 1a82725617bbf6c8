"""SQLite writers take turns at a lock that hands over at once, not in SQLite's busy handler.

SQLite lets one connection write at a time. A connection that finds the database locked
waits in the busy handler, which sleeps 1, 2, 5, 10... ms between tries: with several
processes of several threads writing at once, a waiter often sleeps long after the lock
was free (the write routes ran a third slower with four threads per worker than with one).
Here a connection takes the writers' lock before the first write of its transaction and
gives it back when the transaction ends: a re-entrant lock among this process's threads,
and an exclusive flock(2) on a file beside the database among processes, which the kernel
hands to the next waiter the moment it is released. Reads never wait: WAL readers take no lock.

The turn and SQLite's busy handler share one budget, the connection's busy timeout: a writer
whose turn came late waits in SQLite only for what is left of it. A process that writes without
our lock (the sqlite3 shell, a VACUUM) can hold SQLite's lock past the timeout; then each writer
in the queue fails ("database is locked", a 503) once its budget is spent, rather than the k-th
one waiting k busy timeouts.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from typing import Any

# Statements after which SQLite holds the write lock until the transaction ends: the writes,
# and BEGIN IMMEDIATE, for a transaction whose reads decide what it writes.
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "BEGIN IMMEDIATE")
# A turn that came sooner than this leaves SQLite the whole busy timeout (no PRAGMA round trip).
_LATE_TURN_SECONDS = 0.05


class _Writers:
    """This process's side of the writers' lock of one database file."""

    def __init__(self, database: str) -> None:
        self.path = database + "-writers.lock"
        self.turn = threading.RLock()  # re-entrant: one thread may write through two connections
        self.depth = 0
        self.fd: int | None = None

    def take(self) -> None:
        self.turn.acquire()
        if self.depth == 0:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.depth += 1

    def give_back(self) -> None:
        self.depth -= 1
        if self.depth == 0 and self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.turn.release()


_BY_DATABASE: dict[str, _Writers] = {}
_REGISTRY = threading.Lock()


def _writers(database: str) -> _Writers:
    with _REGISTRY:
        found = _BY_DATABASE.get(database)
        if found is None:
            found = _BY_DATABASE[database] = _Writers(database)
        return found


class WriterConnection(sqlite3.Connection):
    """A connection that holds the writers' lock from its first write to its transaction's end."""

    def __init__(self, database: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        name = os.fspath(database)
        in_memory = name in ("", ":memory:") or name.startswith("file:")
        self.writers = None if in_memory else _writers(os.path.abspath(name))
        self.writing = False
        self.busy_timeout = float(kwargs.get("timeout", 5.0))  # sqlite3.connect's default
        self.shortened = False

    def cursor(self, factory: Any = None) -> sqlite3.Cursor:  # type: ignore[override]
        return super().cursor(factory or WriterCursor)

    def take_writers_lock(self) -> None:
        if not self.writing and self.writers is not None:
            started = time.monotonic()
            self.writers.take()
            self.writing = True
            waited = time.monotonic() - started
            if waited > _LATE_TURN_SECONDS:
                # The turn counts against the busy timeout: if whoever holds SQLite's lock is
                # not one of our writers, the queue behind it must not wait a timeout each.
                self._set_busy_timeout(max(0.0, self.busy_timeout - waited))
                self.shortened = True

    def _set_busy_timeout(self, seconds: float) -> None:
        super().execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")

    def _give_back(self, closing: bool = False) -> None:
        if self.writing and self.writers is not None:
            self.writing = False
            try:
                if self.shortened and not closing:
                    self._set_busy_timeout(self.busy_timeout)  # the next transaction's budget
                self.shortened = False
            finally:
                self.writers.give_back()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._give_back()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._give_back()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._give_back(closing=True)


class WriterCursor(sqlite3.Cursor):
    """Takes the writers' lock before a statement that writes."""

    def execute(self, sql: str, parameters: Any = (), /) -> WriterCursor:
        self._before(sql)
        super().execute(sql, parameters)
        return self

    def executemany(self, sql: str, parameters: Any, /) -> WriterCursor:
        self._before(sql)
        super().executemany(sql, parameters)
        return self

    def _before(self, sql: str) -> None:
        if sql.lstrip()[:15].upper().startswith(_WRITES):
            connection: WriterConnection = self.connection  # type: ignore[assignment]
            connection.take_writers_lock()
