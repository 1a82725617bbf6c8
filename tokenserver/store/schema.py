"""The schema's version: the Alembic revision the database was last migrated to."""

from __future__ import annotations

from sqlalchemy import text

from ..extensions import db

_VERSION = text("SELECT version_num FROM alembic_version")


def version() -> str | None:
    """The database's schema revision, on a connection of its own (not the request's reader).

    Raises what the database raises: a DBAPIError when it is unreachable or never migrated.
    """
    with db.engine.connect() as conn:
        current: str | None = conn.execute(_VERSION).scalar()
    return current
