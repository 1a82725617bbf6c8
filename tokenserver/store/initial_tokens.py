"""RFC 7591 initial access tokens: issued by the operator, each spent on one registration."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, Table, exists, insert, select, update

from ..extensions import db
from ..models import InitialAccessToken, utcnow
from . import delete_in_batches, transaction

_tokens: Table = InitialAccessToken.__table__


def issue(token_hash: str, expires_at: datetime) -> None:
    """Store a new token by its digest, live until `expires_at`."""
    with db.engine.begin() as conn:
        conn.execute(
            insert(_tokens),
            {"token_hash": token_hash, "created_at": utcnow(), "expires_at": expires_at},
        )


def usable(token_hash: str) -> bool:
    """Whether the token is known, unexpired and not yet spent."""
    query = select(
        exists().where(
            _tokens.c.token_hash == token_hash,
            _tokens.c.spent_at.is_(None),
            _tokens.c.expires_at > utcnow(),
        )
    )
    with db.engine.connect() as conn:
        return bool(conn.execute(query).scalar())


def spend(token_hash: str, client_id: str, tx: Connection | None = None) -> bool:
    """Spend the token on registering `client_id`: True once, False if unusable or spent.

    One conditional UPDATE: however many requests present the token at once, one wins.
    """
    now = utcnow()
    with transaction(tx) as conn:
        spent = conn.execute(
            update(_tokens)
            .where(
                _tokens.c.token_hash == token_hash,
                _tokens.c.spent_at.is_(None),
                _tokens.c.expires_at > now,
            )
            .values(spent_at=now, client_id=client_id)
        ).rowcount
    return spent == 1


def purge(before: datetime, batch_size: int) -> int:
    """Forget tokens that expired before `before`, spent or not, a batch per transaction;
    returns how many."""
    expired = _tokens.c.expires_at < before
    return delete_in_batches(_tokens, _tokens.c.token_hash, expired, batch_size)
