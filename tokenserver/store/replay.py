"""Single-use JWT ids (RFC 7523 §3 client assertions, RFC 9449 §11.1 DPoP proofs).

`spend` records an id the first time it is seen and refuses it every time after, across
every worker and node: one INSERT that a primary key makes atomic, or, where the rate limits
live in Redis, one SET NX there (no fsync per proof; Redis forgets the id when it expires).

An id matters only while its JWT is valid (a minute or so), so on SQLite its INSERT commits
without an fsync of its own: the next durable commit of any request makes it durable, a
process crash keeps it, and a power cut can lose only ids of proofs that are refused anyway
by the time the machine serves again. Ids spent with a token request (`deferred`) share that
request's durable commit.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from flask import Flask, current_app, g
from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite

from .. import shared_redis
from ..config import Settings
from ..extensions import db
from ..models import SpentJti, utcnow
from . import delete_in_batches, fleeting

_spent: Table = SpentJti.__table__
# RETURNING tells a fresh id from a replay on both databases (psycopg's rowcount is -1 here).
_INSERT = {
    "postgresql": postgresql.insert(_spent).on_conflict_do_nothing().returning(_spent.c.key),
    "sqlite": sqlite.insert(_spent).on_conflict_do_nothing().returning(_spent.c.key),
}
_EXTENSION = "tokenserver.spent_jtis"
_PENDING = "tokenserver_pending_jtis"


class Replayed(Exception):
    """A JWT id deferred by `deferred()` turned out to be spent already."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class RedisSpentIds:
    """Spent ids as Redis keys that expire with their JWTs: SET NX decides, atomically."""

    def __init__(self, url: str, prefix: str) -> None:
        self._redis = shared_redis.connect(url)
        self._prefix = f"{prefix}:jti:"

    def spend(self, key: str, expires_at: datetime) -> bool:
        """True if `key` was not spent yet (and now is), until `expires_at`."""
        ttl = max(1, math.ceil((expires_at - utcnow()).total_seconds()))
        # Fail closed: without the store, a replayed JWT could not be told apart.
        with shared_redis.failing_closed("replay check"):
            return bool(self._redis.set(self._prefix + key, b"1", nx=True, ex=ttl))


def init_app(app: Flask) -> None:
    """Keep spent ids in Redis when the rate limits are kept there, else in the database."""
    settings: Settings = app.extensions["tokenserver.settings"]
    uri = settings.ratelimit_storage_uri
    if shared_redis.is_redis(uri):
        app.extensions[_EXTENSION] = RedisSpentIds(uri, settings.ratelimit_key_prefix)


def spend(kind: str, issuer: str, jti: str, expires_at: datetime) -> bool:
    """True the first time (`kind`, `issuer`, `jti`) is presented; False on any replay.

    Keep the id at least until the JWT carrying it expires (`expires_at`): after that the JWT
    itself is refused, so the id may be forgotten.
    """
    key = _key(kind, issuer, jti)
    in_redis: RedisSpentIds | None = current_app.extensions.get(_EXTENSION)
    if in_redis is not None:
        return in_redis.spend(key, expires_at)
    pending: list[tuple[str, str, datetime]] | None = g.get(_PENDING)
    if pending is not None:
        pending.append((kind, key, expires_at))  # decided by spend_pending, or at the end
        return True
    with fleeting() as conn:
        return _insert(conn, key, expires_at)


def _key(kind: str, issuer: str, jti: str) -> str:
    """The SHA-256 an id is kept under: as digests.digest gives for any valid Unicode id."""
    # A JSON escape can carry a lone surrogate ("\\ud800"), which strict UTF-8 refuses to
    # encode: such an id is hashed as the code points it holds, never a 500.
    value = f"{kind}\x00{issuer}\x00{jti}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(value).hexdigest()


def _insert(conn: Connection, key: str, expires_at: datetime) -> bool:
    fresh = conn.execute(_INSERT[conn.dialect.name], {"key": key, "expires_at": expires_at})
    return fresh.scalar() is not None


@contextmanager
def deferred() -> Iterator[None]:
    """Within the block, ids kept in the database are spent by `spend_pending` in the
    transaction that stores what the request issues: one durable commit, not one more per id.

    A request that stored nothing spends them when the block ends, so an id is single use
    whatever the answer was; Replayed then names one that was spent already, and the
    answer must be that refusal.
    """
    g.setdefault(_PENDING, [])
    try:
        yield
    finally:
        left: list[tuple[str, str, datetime]] = g.pop(_PENDING, [])
        replayed = None
        if left:
            with db.engine.begin() as conn:
                for kind, key, expires_at in left:
                    if not _insert(conn, key, expires_at) and replayed is None:
                        replayed = kind
        if replayed is not None:
            raise Replayed(replayed)  # replaces whatever the block raised: this comes first


def spend_pending(conn: Connection) -> None:
    """Spend the ids deferred so far in the caller's transaction; Replayed names the first
    that was spent already (the caller rolls back and refuses the request). Once that
    transaction has committed, `settled()` says so; until then they stay pending."""
    for kind, key, expires_at in g.get(_PENDING) or []:
        if not _insert(conn, key, expires_at):
            raise Replayed(kind)


def settled() -> None:
    """The transaction that spent the pending ids has committed."""
    pending: list[tuple[str, str, datetime]] | None = g.get(_PENDING)
    if pending:
        pending.clear()


def purge(before: datetime | None = None, batch_size: int = 1000) -> int:
    """Forget ids whose JWTs expired before `before` (now by default), a batch per
    transaction; returns how many.

    Only the database's: Redis forgets its ids by itself when they expire. Anyone may spend
    ids (a DPoP proof costs nothing to make), so there may be millions of them.
    """
    expired = _spent.c.expires_at < (before or utcnow())
    return delete_in_batches(_spent, _spent.c.key, expired, batch_size)
