"""SQLite writers take turns at one lock, handed over at commit or rollback; reads never wait."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tokenserver.sqlite_writers import WriterConnection


@pytest.fixture
def connect(tmp_path: Path) -> Iterator[Callable[..., WriterConnection]]:
    path = tmp_path / "writers.db"
    made: list[WriterConnection] = []

    def connect(timeout: float = 30) -> WriterConnection:
        conn = sqlite3.connect(
            path, timeout=timeout, factory=WriterConnection, check_same_thread=False
        )
        made.append(conn)
        return conn

    setup = connect()
    setup.execute("PRAGMA journal_mode=WAL")
    setup.cursor().execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
    setup.commit()
    yield connect
    for conn in made:
        conn.close()


def _in_thread(work: Callable[[], object]) -> threading.Event:
    done = threading.Event()

    def run() -> None:
        work()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done


def test_a_writer_waits_for_the_one_writing_and_goes_at_its_commit(connect) -> None:
    first, second = connect(), connect()
    first.cursor().execute("INSERT INTO items (id) VALUES (1)")
    assert first.writing

    def write() -> None:
        second.cursor().execute("INSERT INTO items (id) VALUES (2)")
        second.commit()

    done = _in_thread(write)
    assert not done.wait(0.3)  # still waiting: the first transaction holds the turn
    first.commit()
    assert done.wait(5)
    assert not first.writing and not second.writing
    rows = connect().cursor().execute("SELECT id FROM items ORDER BY id").fetchall()
    assert rows == [(1,), (2,)]


def test_a_failed_write_and_a_rollback_give_the_turn_back(connect) -> None:
    first, second = connect(), connect()
    first.cursor().execute("INSERT INTO items (id) VALUES (1)")
    first.commit()
    with pytest.raises(sqlite3.IntegrityError):
        first.cursor().execute("INSERT INTO items (id) VALUES (1)")
    first.rollback()
    assert not first.writing

    def write() -> None:
        second.cursor().execute("INSERT INTO items (id) VALUES (2)")
        second.commit()

    assert _in_thread(write).wait(5)


def test_reads_never_wait_for_a_writer(connect) -> None:
    writer, reader = connect(), connect()
    writer.cursor().execute("INSERT INTO items (id) VALUES (1)")
    rows: list[object] = []
    done = _in_thread(lambda: rows.extend(reader.cursor().execute("SELECT id FROM items")))
    assert done.wait(5)
    assert rows == [] and not reader.writing  # the uncommitted row is not seen
    writer.rollback()


def test_one_thread_writing_through_two_connections_meets_sqlite_not_a_hang(connect) -> None:
    first, second = connect(), connect(timeout=0.1)
    first.cursor().execute("INSERT INTO items (id) VALUES (1)")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        second.cursor().execute("INSERT INTO items (id) VALUES (2)")
    second.rollback()
    first.commit()
    assert not first.writing and not second.writing


def test_writers_queued_behind_an_outside_lock_share_one_busy_timeout(
    connect, tmp_path: Path
) -> None:
    # A process writing without our lock (the sqlite3 shell, a VACUUM) holds SQLite's lock past
    # the busy timeout: each writer queued behind it fails once its own budget is spent, rather
    # than the k-th one waiting k busy timeouts (every writer before it, then its own).
    outsider = sqlite3.connect(tmp_path / "writers.db", isolation_level=None)
    outsider.execute("BEGIN IMMEDIATE")
    timeout = 1.0
    writers = [connect(timeout=timeout) for _ in range(4)]
    answers: list[tuple[str, float]] = []

    def write(conn: WriterConnection) -> None:
        started = time.monotonic()
        try:
            conn.cursor().execute("INSERT INTO items (id) VALUES (NULL)")
            error = ""
        except sqlite3.OperationalError as exc:
            error = str(exc)
        conn.rollback()
        answers.append((error, time.monotonic() - started))

    threads = [threading.Thread(target=write, args=(conn,)) for conn in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    outsider.execute("ROLLBACK")

    assert [error for error, _ in answers] == ["database is locked"] * 4
    assert max(elapsed for _, elapsed in answers) < 2 * timeout, answers
    for conn in writers:  # the next transaction has its whole budget again
        assert conn.execute("PRAGMA busy_timeout").fetchone() == (1000,)
        assert not conn.writing
    writers[0].cursor().execute("INSERT INTO items (id) VALUES (1)")
    writers[0].commit()
