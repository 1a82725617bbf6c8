"""Signing keys (signing_keys): their states, private parts at rest and public JWKs.

keys.py owns the rules (when to rotate, what replaces a revoked key) and keywrap.py the
wrapping; the statements are here. Every function takes the engine its caller holds (a key
ring is bound to its app's, and the start-up check runs before any app exists); the writes that
must land together take a `tx` from `transaction(engine=...)`. The database's unique index
allows one next and one current key: a write that would make a second raises KeyConflict.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Table, Update, bindparam, exists, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from ..models import SigningKey
from . import delete_in_batches

NEXT, CURRENT, RETIRED, REVOKED = "next", "current", "retired", "revoked"
_keys: Table = SigningKey.__table__


class KeyConflict(Exception):
    """Another key already holds that state (one next, one current), or that kid."""


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key to store: its private part already wrapped (keywrap.py), its public JWK as JSON."""

    kid: str
    private_key: str
    public_jwk: str


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A signing key's public facts, for `keys list`."""

    kid: str
    state: str
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None


@dataclass(frozen=True, slots=True)
class Pending:
    """The next key: published, not yet signing."""

    kid: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Published:
    """A key the JWKS shows, with its public JWK as stored (JSON)."""

    kid: str
    public_jwk: str
    state: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Wrapped:
    """A private key as stored (wrapped, or a plain PEM)."""

    kid: str
    private_key: str


_PENDING = select(_keys.c.kid, _keys.c.created_at).where(_keys.c.state == NEXT)
_CURRENT_SINCE = select(_keys.c.activated_at, _keys.c.created_at).where(_keys.c.state == CURRENT)
_CURRENT_KID = select(_keys.c.kid).where(_keys.c.state == CURRENT)
_ALL = select(
    _keys.c.kid, _keys.c.state, _keys.c.created_at, _keys.c.activated_at, _keys.c.retired_at
).order_by(_keys.c.created_at.desc())
_PUBLIC_BY_KID = select(_keys.c.state, _keys.c.public_jwk).where(_keys.c.kid == bindparam("kid"))
_WRAPPED = select(_keys.c.kid, _keys.c.private_key).where(_keys.c.private_key != "")


@contextmanager
def _reading(bind: Engine | Connection) -> Iterator[Connection]:
    if isinstance(bind, Connection):
        yield bind
        return
    with bind.connect() as conn:
        yield conn


def pending(engine: Engine) -> Pending | None:
    """The next key, if one is published."""
    with engine.connect() as conn:
        row = conn.execute(_PENDING).first()
    return Pending(row.kid, row.created_at) if row is not None else None


def current_since(engine: Engine) -> datetime | None:
    """When the current key began to sign; None if there is none."""
    with engine.connect() as conn:
        row = conn.execute(_CURRENT_SINCE).first()
    return (row.activated_at or row.created_at) if row is not None else None


def every(engine: Engine) -> list[KeyInfo]:
    """Every stored key, newest first."""
    with engine.connect() as conn:
        return [KeyInfo(*row) for row in conn.execute(_ALL)]


def published(engine: Engine, retired_after: datetime) -> list[Published]:
    """The next and current keys, and those retired after `retired_after`; newest first."""
    statement = (
        select(_keys.c.kid, _keys.c.public_jwk, _keys.c.state, _keys.c.created_at)
        .where(
            _keys.c.state.in_((NEXT, CURRENT))
            | ((_keys.c.state == RETIRED) & (_keys.c.retired_at > retired_after))
        )
        .order_by(_keys.c.created_at.desc())
    )
    with engine.connect() as conn:
        return [Published(*row) for row in conn.execute(statement)]


def public_by_kid(engine: Engine, kid: str) -> tuple[str, str] | None:
    """The state and public JWK (JSON) of key `kid`, whatever its state; None if there is no
    such key (never ours, or purged)."""
    with engine.connect() as conn:
        row = conn.execute(_PUBLIC_BY_KID, {"kid": kid}).first()
        return None if row is None else (row.state, row.public_jwk)


def private_key(engine: Engine, kid: str) -> str:
    """The stored private part of key `kid` (NoResultFound if there is no such key)."""
    with engine.connect() as conn:
        stored: str = conn.execute(
            select(_keys.c.private_key).where(_keys.c.kid == kid)
        ).scalar_one()
    return stored


def wrapped(bind: Engine | Connection) -> list[Wrapped]:
    """Every stored private part (keys that can never sign again keep none)."""
    with _reading(bind) as conn:
        return [Wrapped(*row) for row in conn.execute(_WRAPPED)]


def state(tx: Connection, kid: str) -> str | None:
    """The state of key `kid`, in the caller's transaction; None if there is no such key."""
    found: str | None = tx.execute(select(_keys.c.state).where(_keys.c.kid == kid)).scalar()
    return found


def current_kid(tx: Connection) -> str | None:
    """The current key's kid, in the caller's transaction."""
    kid: str | None = tx.execute(_CURRENT_KID).scalar()
    return kid


def add(tx: Connection, key: NewKey, state: str, now: datetime) -> str:
    """Store a key in `state` (a current one signs from `now`); its kid.

    KeyConflict if another key holds that state: the caller's transaction is then done for.
    """
    try:
        tx.execute(
            insert(_keys).values(
                kid=key.kid,
                private_key=key.private_key,
                public_jwk=key.public_jwk,
                state=state,
                created_at=now,
                activated_at=now if state == CURRENT else None,
            )
        )
    except IntegrityError:
        raise KeyConflict from None
    return key.kid


def _retire(state: str, now: datetime) -> Update:
    # A key that will never sign again keeps no private part: a stolen backup cannot mint with it.
    return (
        update(_keys)
        .where(_keys.c.state == state)
        .values(state=RETIRED, retired_at=now, private_key="")
    )


def retire(tx: Connection, state: str, now: datetime) -> None:
    """Retire the key in `state` (next or current), if there is one, wiping its private part."""
    tx.execute(_retire(state, now))


def withdraw(tx: Connection, kid: str, state: str, now: datetime) -> bool:
    """Revoke key `kid` if it is still in `state`, wiping its private part; whether it was."""
    changed = tx.execute(
        update(_keys)
        .where(_keys.c.kid == kid, _keys.c.state == state)
        .values(state=REVOKED, retired_at=now, private_key="")
    )
    return bool(changed.rowcount == 1)


def promote_next(tx: Connection, now: datetime) -> bool:
    """Make the next key current (the caller has retired or revoked the current one)."""
    promoted = tx.execute(
        update(_keys).where(_keys.c.state == NEXT).values(state=CURRENT, activated_at=now)
    )
    return bool(promoted.rowcount == 1)


def promote_due(engine: Engine, published_before: datetime, now: datetime) -> bool:
    """Retire the current key and make the next one current, if the next was published before
    `published_before`; True if this did it, in one transaction.

    The first statement writes the current key's row, which serialises concurrent promoters:
    the others wait, then find nothing left to do.
    """
    pending_key = _keys.alias("pending")  # not correlated with the row being updated
    due_pending = (pending_key.c.state == NEXT) & (pending_key.c.created_at <= published_before)
    due = (_keys.c.state == NEXT) & (_keys.c.created_at <= published_before)
    with engine.connect() as conn, conn.begin() as transaction:
        conn.execute(_retire(CURRENT, now).where(exists().where(due_pending)))
        promoted = conn.execute(update(_keys).where(due).values(state=CURRENT, activated_at=now))
        if promoted.rowcount != 1:
            transaction.rollback()  # promoted (or revoked) by someone else meanwhile
            return False
    return True


def rewrap(tx: Connection, kid: str, stored: str, fresh: str) -> bool:
    """Replace key `kid`'s private part with `fresh` if it is still `stored`; whether it was.

    Conditional: a key retired meanwhile keeps its wiped private part.
    """
    result = tx.execute(
        update(_keys)
        .where(_keys.c.kid == kid, _keys.c.private_key == stored)
        .values(private_key=fresh)
    )
    return bool(result.rowcount == 1)


def purge(engine: Engine, retired_before: datetime, size: int) -> int:
    """Delete the keys (retired or revoked) that stopped signing before `retired_before`, in
    batches of `size`; how many went."""
    return delete_in_batches(
        _keys, _keys.c.kid, _keys.c.retired_at < retired_before, size, engine=engine
    )
