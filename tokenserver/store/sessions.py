"""Browser sessions on our pages: server-side, so they can be listed, ended and outlived."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Table, bindparam, insert, or_, select, update

from ..browser_models import BrowserSession
from ..digests import digest, new_secret
from ..extensions import db, reader
from ..models import USER_COLUMNS, Subject, User, UTCDateTime, utcnow
from . import delete_in_batches, transaction, typed_parameter

_sessions: Table = BrowserSession.__table__
_users: Table = User.__table__
_now = bindparam("now", type_=UTCDateTime())
_MAX_SECRET_LENGTH = 128  # ours are 43 characters
_ID = re.compile(r"[0-9a-f]{32}")  # secrets.token_hex(16)


@dataclass(frozen=True)
class Session:
    """A live browser session and its (active) user."""

    id: str
    user: Subject
    auth_time: datetime
    expires_at: datetime
    user_agent: str


@dataclass(frozen=True)
class SessionInfo:
    """A live session as /account lists it."""

    id: str
    user_agent: str
    auth_time: datetime
    expires_at: datetime


_STARTED = ("id", "secret_hash", "user_agent", "auth_time", "expires_at")
# Stored only while the user is enabled and the password they proved is still theirs, in one
# statement, with the user's row share-locked (PostgreSQL): a sign-in racing `users disable` or
# a password change lands first (and is ended with the rest) or not at all.
_START = (
    insert(_sessions)
    .from_select(
        [*_STARTED, "user_id"],
        select(*(typed_parameter(_sessions.c[name]) for name in _STARTED), _users.c.id)
        .where(
            _users.c.id == bindparam("user_id"),
            _users.c.disabled.is_(False),
            _users.c.password_hash == bindparam("checked_hash"),
        )
        .with_for_update(read=True, of=_users),
    )
    .returning(_sessions.c.id)
)


def start(user: Subject, max_age: int, user_agent: str) -> tuple[str, str] | None:
    """A new session for a user who has just proven their password: (cookie secret, id); None
    if they were disabled or their password changed since it was checked."""
    secret, now = new_secret(32), utcnow()
    session_id = secrets.token_hex(16)
    row = {
        "id": session_id,
        "secret_hash": digest(secret),  # a stolen database holds no usable cookie
        "user_id": user.id,
        "checked_hash": user.checked_hash,
        "user_agent": "".join(ch for ch in user_agent if ch.isprintable())[:200],
        "auth_time": now,
        "expires_at": now + timedelta(seconds=max_age),
    }
    with db.engine.begin() as conn:
        started = conn.execute(_START, row).first()
    return (secret, session_id) if started is not None else None


_LIVE = (
    select(
        _sessions.c.id.label("session_id"),
        _sessions.c.auth_time,
        _sessions.c.expires_at,
        _sessions.c.user_agent,
        *USER_COLUMNS,
    )
    .join(_users, _users.c.id == _sessions.c.user_id)
    .where(
        _sessions.c.secret_hash == bindparam("secret_hash"),
        _sessions.c.ended_at.is_(None),
        _sessions.c.expires_at > _now,
        _users.c.disabled.is_(False),  # a disabled user loses their browser sessions at once
    )
)


def find(secret: str) -> Session | None:
    """The live session whose cookie holds `secret`, if its user is active."""
    if not secret.isascii() or len(secret) > _MAX_SECRET_LENGTH:
        return None
    row = reader().execute(_LIVE, {"secret_hash": digest(secret), "now": utcnow()}).first()
    if row is None:
        return None
    user = Subject.from_row(row)
    return Session(row.session_id, user, row.auth_time, row.expires_at, row.user_agent)


_ENDED = (
    select(_sessions.c.ended_at)
    .where(_sessions.c.id == bindparam("session_id"))
    .with_for_update(read=True)
)


def signed_in(conn: Connection, session_id: str) -> bool:
    """Whether a session is still signed in (not ended, not gone), read in the caller's write
    transaction, so that what the caller stores cannot outlive a sign-out racing it.

    On PostgreSQL the row is share-locked until the caller commits: a sign-out waits for the
    caller and then revokes what it stored, or comes first and this says False. On SQLite the
    caller's transaction holds the database's one write lock from its start
    (tokens.issuing._issuing).
    """
    row = conn.execute(_ENDED, {"session_id": session_id}).first()
    return row is not None and row.ended_at is None


def list_live(user_id: int) -> list[SessionInfo]:
    """The user's live sessions, newest first."""
    query = (
        select(
            _sessions.c.id, _sessions.c.user_agent, _sessions.c.auth_time, _sessions.c.expires_at
        )
        .where(
            _sessions.c.user_id == user_id,
            _sessions.c.ended_at.is_(None),
            _sessions.c.expires_at > utcnow(),
        )
        .order_by(_sessions.c.auth_time.desc())
    )
    with db.engine.connect() as conn:
        return [SessionInfo(*row) for row in conn.execute(query)]


def end(
    user_id: int,
    session_id: str | None = None,
    *,
    keep: str | None = None,
    tx: Connection | None = None,
) -> int:
    """End one of the user's sessions (or, with no id, all but `keep`); returns how many.

    Inside a caller's `tx`, before it revokes the user's logins: on PostgreSQL the UPDATE
    waits for a code exchange holding the session's row (sessions.signed_in), so the revocation
    that follows sees the login that exchange stored."""
    if session_id is not None and not _ID.fullmatch(session_id):
        return 0  # cannot be ours, and PostgreSQL refuses NUL in text (a 500, not a no-op)
    condition = [_sessions.c.user_id == user_id, _sessions.c.ended_at.is_(None)]
    if session_id is not None:
        condition.append(_sessions.c.id == session_id)
    if keep is not None:
        condition.append(_sessions.c.id != keep)
    with transaction(tx) as conn:
        ended: int = conn.execute(
            update(_sessions).where(*condition).values(ended_at=utcnow())
        ).rowcount
    return ended


def purge(cutoff: datetime, batch_size: int) -> int:
    """Delete browser sessions that expired or ended before `cutoff`; how many."""
    gone = or_(_sessions.c.expires_at < cutoff, _sessions.c.ended_at < cutoff)
    return delete_in_batches(_sessions, _sessions.c.id, gone, batch_size)
