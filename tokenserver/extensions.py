"""The database extension, created once here and bound to the app in create_app().

The per-IP limiter is built in limits.py, with its rules.
"""

from __future__ import annotations

from flask import g
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Connection, MetaData
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names so Alembic can alter them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base for every model."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)


_READER = "tokenserver_reader"


def reader() -> Connection:
    """This app context's connection for the hot paths' prebuilt Core reads.

    A bearer check or an introspection reads a row or two: a pooled connection kept for the
    request costs a fraction of starting and ending an ORM session. Closed by close_reader().
    On PostgreSQL it runs in autocommit: each read is its own statement (as READ COMMITTED
    sees it anyway), without a BEGIN and a ROLLBACK round trip around it, which cost the
    server four times the read itself; there it also takes writes of one statement, which
    commit alone (`store.single_write`).
    """
    conn: Connection | None = g.get(_READER)
    if conn is None:
        conn = db.engine.connect()
        if conn.dialect.name != "sqlite":  # as store.single_write tells the two apart
            conn.execution_options(isolation_level="AUTOCOMMIT")  # undone when pooled again
        setattr(g, _READER, conn)
    return conn


def close_reader() -> None:
    """Return this app context's reader to the pool, if it took one."""
    conn: Connection | None = g.pop(_READER, None)
    if conn is None:
        return
    try:
        conn.close()
    except DBAPIError:
        # The database died under it: its pool entry is dropped, and the pool reconnects later.
        if not conn.closed:
            conn.invalidate()
