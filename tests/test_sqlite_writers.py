"""SQLite writers take turns at one lock, handed over at commit or rollback; reads never wait."""

from __future__ import annotations

import sqlite3
import threading
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
