"""Issuing: a token response's records stored with the login, refresh token or code they
come from, and the tokens exchanged (RFC 8693) from an access token."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, bindparam, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from ...extensions import db
from ...models import Client, SigningKey, TokenFamily, TokenRecord, User, UTCDateTime, utcnow
from .. import codes, devices, replay, sessions, typed_parameter
from . import ACCESS, REFRESH

_families: Table = TokenFamily.__table__
_records: Table = TokenRecord.__table__
_clients: Table = Client.__table__
_users: Table = User.__table__
_keys: Table = SigningKey.__table__
_now = bindparam("now", type_=UTCDateTime())


class ClientGone(Exception):
    """The client was deleted since it authenticated (another worker's copy may lag a second)."""


class Issued(enum.Enum):
    """What became of a token response's records."""

    STORED = "stored"
    CODE_SPENT = "code spent"  # another request spent the authorization code first
    PARENT_SPENT = "parent spent"  # the refresh token was spent (or revoked) meanwhile
    USER_DISABLED = "user disabled"  # its user was disabled, or got a new password, meanwhile
    SIGNED_OUT = "signed out"  # the browser session that got the code has ended, or the
    # device approval was withdrawn
    BOUND_ELSEWHERE = "bound elsewhere"  # a racing refresh bound the login to another DPoP key
    CLIENT_PUBLIC = "client public"  # the client authenticated, and was made public meanwhile


@dataclass(frozen=True, slots=True)
class NewLogin:
    """A login (token family) to store with its first tokens."""

    family_id: str
    client_id: str
    user_id: int | None  # None for client credentials
    created_at: datetime
    resources: str  # RFC 8707 resources, space separated
    dpop_jkt: str | None
    checked_hash: str | None = None  # a password login's: stored only while it is the user's
    # The browser session a code or a device approval was given in: stored only while it is live.
    session_id: str | None = None
    auth_time: datetime | None = None  # when the user signed in for it, if known
    # The device code (its digest) it comes from: stored only while that approval stands.
    device_code_hash: str | None = None
    # The client authenticated with a secret or a key: stored only while it still must.
    confidential: bool = False


_INSERT_RECORDS = insert(_records)
# A new login's family is stored only while its user is still enabled, in one statement: a
# login racing `users disable` either lands first (and is revoked with the rest) or not at all.
_FAMILY_COLUMNS = (
    "id",
    "client_id",
    "created_at",
    "resources",
    "dpop_jkt",
    "auth_time",
    "session_id",
)
_ACTIVE_USER = select(
    *(typed_parameter(_families.c[name]) for name in _FAMILY_COLUMNS), _users.c.id
).where(_users.c.id == bindparam("user_id"), _users.c.disabled.is_(False))
_INSERT_USER_FAMILY = (
    insert(_families).from_select([*_FAMILY_COLUMNS, "user_id"], _ACTIVE_USER)
).returning(_families.c.id)  # psycopg reports no rowcount for INSERT ... SELECT
# A password login's, also only while the password it proved is still theirs. The user's row is
# share-locked (PostgreSQL): a password change committing meanwhile is waited for and then seen
# (none is stored), or waits for this login and then revokes it. Codes and device logins are
# held by their browser session's row instead (sessions.signed_in), never by the user's.
_INSERT_PASSWORD_FAMILY = (
    insert(_families).from_select(
        [*_FAMILY_COLUMNS, "user_id"],
        _ACTIVE_USER.where(_users.c.password_hash == bindparam("checked_hash")).with_for_update(
            read=True, of=_users
        ),
    )
).returning(_families.c.id)
_INSERT_CLIENT_FAMILY = insert(_families)
# A client that must still authenticate, share-locked (PostgreSQL): an RFC 7592 update making
# it public waits for the login being stored and then revokes it (clients.update_client), or
# commits first and this finds nothing.
_STILL_CONFIDENTIAL = (
    select(_clients.c.id)
    .where(_clients.c.client_id == bindparam("client_id"), ~Client.is_public)
    .with_for_update(read=True)
)
# Spending a refresh token: one conditional UPDATE decides, so concurrent refreshes with the
# same token cannot both pass (RFC 9700 §4.14.2).
_SPEND = (
    update(_records)
    .where(
        _records.c.token_hash == bindparam("spent_hash"),  # a column's name is reserved here
        _records.c.kind == REFRESH,
        _records.c.spent_at.is_(None),
        _records.c.revoked_at.is_(None),
        _records.c.expires_at > _now,
    )
    .values(spent_at=_now)
)
# The grace case: still spent less than the grace ago, decided by the same kind of conditional
# UPDATE (it rewrites spent_at unchanged, taking the row's lock), so a reuse racing the end of
# the grace, or a revocation, is judged once.
_SPEND_AGAIN = (
    update(_records)
    .where(
        _records.c.token_hash == bindparam("spent_hash"),
        _records.c.kind == REFRESH,
        _records.c.spent_at > bindparam("grace_start", type_=UTCDateTime()),
        _records.c.revoked_at.is_(None),
        _records.c.expires_at > _now,
    )
    .values(spent_at=_records.c.spent_at)
)

# RFC 9449 §5: a public client's unbound login, refreshed with a DPoP proof, is bound to that
# proof's key from then on. Conditional, so of two refreshes racing with different keys one
# binds and the other finds the login bound elsewhere.
_BIND_FAMILY = (
    update(_families)
    .where(
        _families.c.id == bindparam("family_id"),
        or_(_families.c.dpop_jkt.is_(None), _families.c.dpop_jkt == bindparam("jkt")),
    )
    .values(dpop_jkt=bindparam("jkt"))
)


def store_issued(
    records: list[dict[str, Any]],
    *,
    login: NewLogin | None = None,
    parent_hash: str | None = None,
    reuse_grace: int = 0,
    code: tuple[str, str] | None = None,
    bind: tuple[str, str] | None = None,
) -> Issued:
    """Store a token response's `records` (rows of token_records), in one transaction with
    what they come from: a new `login`, or the refresh token they replace (`parent_hash`,
    spent here; one spent less than `reuse_grace` seconds ago passes too), and the
    authorization `code` (its hash and the family it issues) being exchanged, spent here.
    With `bind` (a family and a DPoP key thumbprint), the refreshed login is bound to that key.

    The request's deferred single-use JWT ids are spent in the same commit (replay.Replayed).
    Anything but STORED stores nothing. ClientGone if the client no longer exists.
    """
    outcome = Issued.STORED

    def write(conn: Connection) -> bool:
        nonlocal outcome
        outcome = _issue(conn, login, parent_hash, reuse_grace, code)
        if outcome is Issued.STORED and bind is not None:
            params = {"family_id": bind[0], "jkt": bind[1]}
            if conn.execute(_BIND_FAMILY, params).rowcount != 1:
                outcome = Issued.BOUND_ELSEWHERE
        if outcome is Issued.STORED:
            conn.execute(_INSERT_RECORDS, records)
        return outcome is Issued.STORED

    _issuing(write)
    return outcome


# On SQLite a transaction begins at its first write; this one begins as a write at once, in
# place of that implicit BEGIN (sqlite_writers.py takes the writers' lock for it).
_BEGIN_WRITING = "BEGIN IMMEDIATE"


def _issuing(write: Callable[[Connection], bool]) -> bool:
    """Run `write` in one transaction with the request's deferred single-use JWT ids (its
    client assertion and DPoP proof): all of it commits, or nothing if `write` says False.
    On SQLite the transaction holds the write lock from its start, so what `write` reads
    stays true until it commits, as PostgreSQL's share locks keep it there.
    ClientGone if the client was deleted meanwhile (its rows are gone: a foreign key fails)."""
    try:
        with db.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                # Before the reads that decide what is stored (a session still signed in, an
                # approval standing): a sign-out committing between them and the first write
                # would miss the tokens stored after it.
                conn.exec_driver_sql(_BEGIN_WRITING)
            replay.spend_pending(conn)
            stored = write(conn)
            if not stored:
                conn.rollback()
    except IntegrityError:
        raise ClientGone() from None
    if stored:
        replay.settled()
    return stored


def _issue(
    conn: Connection,
    login: NewLogin | None,
    parent_hash: str | None,
    reuse_grace: int,
    code: tuple[str, str] | None,
) -> Issued:
    session_id = login.session_id if login is not None else None
    if code is not None:
        session_id = codes.spend(conn, *code)  # the code's browser session, read as it is spent
        if session_id is None:
            return Issued.CODE_SPENT
    if parent_hash is not None:
        return Issued.STORED if _spend(conn, parent_hash, reuse_grace) else Issued.PARENT_SPENT
    assert login is not None, "a token response comes from a new login or a refresh token"
    # A login granted under the client's secret or keys must not outlive them: made public
    # since, anyone holding its refresh token could spend it with no credential. (A refresh
    # needs no such check: making the client public revokes the family it lands in.)
    if login.confidential and not _still_confidential(conn, login.client_id):
        return Issued.CLIENT_PUBLIC
    # As at Keycloak, a code (or a device approval) dies with the browser session that got it:
    # one taken just before the user signed out (or changed their password) never outlives it.
    if session_id is not None and not sessions.signed_in(conn, session_id):
        return Issued.SIGNED_OUT
    # An approval withdrawn (the app signed out) after its code was spent stores nothing.
    if login.device_code_hash is not None and not devices.still_allowed(
        conn, login.device_code_hash
    ):
        return Issued.SIGNED_OUT
    family = {
        "id": login.family_id,
        "client_id": login.client_id,
        "created_at": login.created_at,
        "resources": login.resources,
        "dpop_jkt": login.dpop_jkt,
        "auth_time": login.auth_time,
        "session_id": session_id,
    }
    if login.user_id is None:
        conn.execute(_INSERT_CLIENT_FAMILY, family)
        return Issued.STORED
    params = family | {"user_id": login.user_id, "checked_hash": login.checked_hash}
    statement = _INSERT_USER_FAMILY if login.checked_hash is None else _INSERT_PASSWORD_FAMILY
    inserted = conn.execute(statement, params).first()
    return Issued.STORED if inserted is not None else Issued.USER_DISABLED


def _still_confidential(conn: Connection, client_id: str) -> bool:
    """Whether the client still authenticates (has a secret or keys), read in the caller's
    write transaction; False if it was deleted, too."""
    return conn.execute(_STILL_CONFIDENTIAL, {"client_id": client_id}).first() is not None


def _spend(conn: Connection, token_hash: str, reuse_grace: int) -> bool:
    """Mark a refresh token spent; False if it no longer could be (the loser of a race
    presented a spent token, unless within the grace)."""
    now = utcnow()
    if conn.execute(_SPEND, {"spent_hash": token_hash, "now": now}).rowcount == 1:
        return True
    if reuse_grace <= 0:
        return False
    params = {
        "spent_hash": token_hash,
        "now": now,
        "grace_start": now - timedelta(seconds=reuse_grace),
    }
    return bool(conn.execute(_SPEND_AGAIN, params).rowcount == 1)


# An exchanged token joins its subject token's family, naming that token as its parent, only
# while the subject token and its signing key are unrevoked, its login alive and its user
# enabled, in one statement: an exchange racing a revocation lands first (and dies with the
# rest) or not at all. The subject token's row and its key's are share-locked (PostgreSQL):
# revoking either meanwhile waits for this insert, then revokes what it stored
# (revoking.revoke_access_token, revoking.revoke_exchanged_from_key), or is waited for, and
# then this finds it revoked and stores nothing.
_exchanged_from = _records.alias("exchanged_from")
_EXCHANGED_COLUMNS = ("jti", "kid", "scope", "issued_at", "expires_at", "client_id", "audience")
_INSERT_EXCHANGED = (
    insert(_records)
    .from_select(
        ["family_id", "parent_jti", "kind", *_EXCHANGED_COLUMNS],
        select(
            _exchanged_from.c.family_id,
            _exchanged_from.c.jti,
            bindparam("kind", type_=_records.c.kind.type),
            *(typed_parameter(_records.c[name]) for name in _EXCHANGED_COLUMNS),
        )
        .join(_families, _families.c.id == _exchanged_from.c.family_id)
        .join(_users, _users.c.id == _families.c.user_id)
        .join(_keys, _keys.c.kid == _exchanged_from.c.kid)
        .where(
            _exchanged_from.c.jti == bindparam("parent_jti"),
            _exchanged_from.c.kind == ACCESS,
            _exchanged_from.c.revoked_at.is_(None),
            _families.c.revoked_at.is_(None),
            _users.c.disabled.is_(False),
            _keys.c.state != "revoked",
        )
        .with_for_update(read=True, of=[_exchanged_from, _keys]),
    )
    .returning(_records.c.id)
)


def store_exchanged(record: dict[str, Any]) -> bool:
    """Store an exchanged access token's `record` in the family of the token it was exchanged
    from (`parent_jti`); False if that token or its login was revoked, or its user disabled,
    meanwhile. ClientGone as above."""
    return _issuing(lambda conn: conn.execute(_INSERT_EXCHANGED, record).first() is not None)
