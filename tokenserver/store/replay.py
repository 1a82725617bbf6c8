"""Single-use JWT ids (RFC 7523 §3 client assertions, RFC 9449 §11.1 DPoP proofs).

`spend` records an id the first time it is seen and refuses it every time after, across
every worker and node: one INSERT that a primary key makes atomic.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Table, delete
from sqlalchemy.dialects import postgresql, sqlite

from ..digests import digest
from ..extensions import db
from ..models import SpentJti, utcnow

_spent: Table = SpentJti.__table__
# RETURNING tells a fresh id from a replay on both databases (psycopg's rowcount is -1 here).
_INSERT = {
    "postgresql": postgresql.insert(_spent).on_conflict_do_nothing().returning(_spent.c.key),
    "sqlite": sqlite.insert(_spent).on_conflict_do_nothing().returning(_spent.c.key),
}


def spend(kind: str, issuer: str, jti: str, expires_at: datetime) -> bool:
    """True the first time (`kind`, `issuer`, `jti`) is presented; False on any replay.

    Keep the id at least until the JWT carrying it expires (`expires_at`): after that the JWT
    itself is refused, so the id may be forgotten.
    """
    key = digest(f"{kind}\x00{issuer}\x00{jti}")
    with db.engine.begin() as conn:
        fresh = conn.execute(
            _INSERT[conn.dialect.name], {"key": key, "expires_at": expires_at}
        ).scalar()
    return fresh is not None


def purge(before: datetime | None = None) -> int:
    """Forget ids whose JWTs expired before `before` (now by default); returns how many."""
    with db.engine.begin() as conn:
        result = conn.execute(delete(_spent).where(_spent.c.expires_at < (before or utcnow())))
    return int(result.rowcount)
