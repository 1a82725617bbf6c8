"""Pushed authorization requests (RFC 9126): stored by the digest of their request_uri."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import String, Table, bindparam, insert, or_, select, update

from ..browser_models import PushedAuthorization
from ..extensions import db, reader
from ..models import UTCDateTime, utcnow
from . import delete_in_batches, single_write

_pushed: Table = PushedAuthorization.__table__
_now = bindparam("now", type_=UTCDateTime())
_session = bindparam("session", type_=String())
# A live request for this browser session: unexpired, and not answered yet or answered by this
# session (a session of None answers nothing again: NULL equals nothing).
_LIVE = (
    _pushed.c.request_uri_hash == bindparam("hash"),
    or_(_pushed.c.used_at.is_(None), _pushed.c.session_id == _session),
    _pushed.c.expires_at > _now,
)
_FIND = select(_pushed.c.client_id, _pushed.c.parameters, _pushed.c.created_at).where(*_LIVE)
# Answered again only as it was first: an error (Deny) is never followed by a code.
_answer = bindparam("answer", type_=String())
_SPEND = (
    update(_pushed)
    .where(*_LIVE, or_(_pushed.c.used_at.is_(None), _pushed.c.answer == _answer))
    .values(used_at=_now, session_id=_session, answer=_answer)
)

Answer = Literal["code", "error"]


@dataclass(frozen=True)
class Pushed:
    """A live pushed request: whose it is, its parameters in order, and when it was pushed."""

    client_id: str
    parameters: list[tuple[str, str]]
    pushed_at: datetime


def save(
    request_uri_hash: str, client_id: str, parameters: list[tuple[str, str]], ttl: int
) -> None:
    """Store a pushed request under its request_uri's digest, alive for `ttl` seconds."""
    now = utcnow()
    values = {
        "request_uri_hash": request_uri_hash,
        "client_id": client_id,
        "parameters": json.dumps(parameters),
        "created_at": now,
        "expires_at": now + timedelta(seconds=ttl),
    }
    with db.engine.begin() as conn:
        conn.execute(insert(_pushed).values(values))


def find(request_uri_hash: str, session_id: str | None) -> Pushed | None:
    """The live pushed request with this digest, or None: unexpired, and unanswered or
    answered by this browser session."""
    params = {"hash": request_uri_hash, "session": session_id, "now": utcnow()}
    row = reader().execute(_FIND, params).first()
    if row is None:
        return None
    parameters = [(str(name), str(value)) for name, value in json.loads(row.parameters)]
    return Pushed(row.client_id, parameters, row.created_at)


def spend(request_uri_hash: str, session_id: str | None, answer: Answer) -> bool:
    """Mark a pushed request answered by this browser session (None: by none) with a code or
    an error; False if another answered it (or any did, for None), this one answered it the
    other way, or it has expired.

    One conditional UPDATE decides, so two browsers racing to finish it cannot both get a code.
    """
    params = {"hash": request_uri_hash, "session": session_id, "now": utcnow(), "answer": answer}
    with single_write() as conn:
        done = conn.execute(_SPEND, params)
    return bool(done.rowcount)


def purge(cutoff: datetime, batch_size: int) -> int:
    """Delete pushed requests that expired before `cutoff`, answered or not; how many."""
    expired = _pushed.c.expires_at < cutoff
    return delete_in_batches(_pushed, _pushed.c.request_uri_hash, expired, batch_size)
