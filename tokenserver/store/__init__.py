"""The store: the only place with SQL.

One module per aggregate: users, clients, tokens, keys, throttles, junk, and the browser's
codes, consents, sessions and devices (plus initial access tokens, spent JWT ids and
the schema's version). Tokens, the largest, are a package: issuing, lookups and revoking.
Each owns its statements (prebuilt Core where a request runs them; ORM where only the CLI
does) and hands its callers typed results (frozen dataclasses), never a session, a row or a
statement. Callers apply the rules; the store knows nothing of HTTP.

Reads run on the request's pooled reader connection (`extensions.reader()`). Writes commit
before the store function returns, each in a transaction of its own; a change that must land
with another or not at all runs in one `transaction()`, handed to each store function that
writes as `tx`. A write that is one statement runs in `single_write()`: on PostgreSQL that is
the request's connection in autocommit, one round trip. The signing keys' functions take
the engine their caller holds: a key ring is bound to its app's, and the start-up check runs
before any app.

Each table is written by one module (the tokens' by their package), and only there:

    users                  users.py          junk_items             junk.py
    clients                clients.py        login_throttles        throttles.py
    signing_keys           keys.py           spent_jtis             replay.py
    token_families         tokens/           initial_access_tokens  initial_tokens.py
    token_records          tokens/           authorization_codes    codes.py
    consents               consents.py       browser_sessions       sessions.py
    device_authorizations  devices.py
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    Table,
    bindparam,
    delete,
    select,
)

from ..extensions import db, reader


@contextmanager
def transaction(
    tx: Connection | None = None, *, engine: Engine | None = None
) -> Iterator[Connection]:
    """A write transaction, committed when the block ends (rolled back if it raises); inside
    a caller's `tx`, that one. On the app's engine unless given another."""
    if tx is not None:
        yield tx
        return
    with (engine or db.engine).begin() as conn:
        yield conn


@contextmanager
def single_write() -> Iterator[Connection]:
    """A connection for one write statement, committed when the block ends.

    On PostgreSQL it is the request's connection (`extensions.reader`), in autocommit: the
    statement commits alone, without a ping, BEGIN and COMMIT of its own (four round trips
    become one). On SQLite, a transaction of its own.
    """
    if db.engine.dialect.name == "sqlite":
        with db.engine.begin() as conn:
            yield conn
    else:
        yield reader()


@contextmanager
def fleeting(engine: Engine | None = None) -> Iterator[Connection]:
    """A write that need not survive a power cut (a spent JWT id, a password guard's count),
    as every other does: on SQLite it is committed without an fsync of its own, and lands on
    disk with the next durable commit. A process crash loses nothing.

    Each such write is one statement: on PostgreSQL it commits alone (`single_write`)."""
    if engine is None and db.engine.dialect.name != "sqlite":
        with single_write() as conn:
            yield conn
        return
    with (engine or db.engine).connect() as conn:
        if conn.dialect.name != "sqlite":
            conn.execution_options(isolation_level="AUTOCOMMIT")  # undone when pooled again
            yield conn
            return
        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.execute("PRAGMA synchronous=NORMAL")  # this connection's commits only
        try:
            with conn.begin():
                yield conn
        finally:
            # A connection the failure invalidated is closed and never pooled again: its
            # error (the outage's 503) is the one to raise, not a closed database's.
            if not conn.invalidated:
                try:
                    raw.execute("PRAGMA synchronous=FULL")  # as every other write expects
                except Exception:
                    conn.invalidate()  # never pooled again with commits that are not durable
                    raise


def typed_parameter(column: Any) -> Any:
    """A parameter named and typed as `column`, for the select list of an INSERT ... SELECT."""
    return bindparam(column.name, type_=column.type)


def delete_in_batches(
    table: Table,
    key: Column[Any],
    where: ColumnElement[bool],
    size: int,
    *,
    walk: bool = False,
    engine: Engine | None = None,
) -> int:
    """Delete the rows `where` holds, at most `size` per transaction (no lock is held long);
    how many went.

    The condition is checked again by each DELETE, so a row that changed since it was chosen
    stays, and no list of keys travels as parameters. With `walk`, each batch starts after the
    last key deleted, so rows the condition must look at but keeps are read once per run, not
    once per batch. On the app's engine unless given another.
    """
    total, after = 0, None
    while True:
        chosen = select(key).where(where).limit(size)
        if walk:
            chosen = chosen.order_by(key)
            if after is not None:
                chosen = chosen.where(key > after)
        statement = delete(table).where(key.in_(chosen.scalar_subquery()), where).returning(key)
        with (engine or db.engine).begin() as conn:
            gone = conn.execute(statement).scalars().all()
        if not gone:
            return total
        total += len(gone)
        after = max(gone)
