"""Deleting token records and device authorizations long past expiry, in short batches."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, delete, exists, select

from .config import current_settings
from .extensions import db
from .models import SigningKey, TokenFamily, TokenRecord, utcnow
from .store import codes, devices, initial_tokens, replay, sessions

# Retired keys outlive their last token by this much more, for resource servers with skewed clocks.
_KEY_GRACE = timedelta(minutes=5)


def purge(older_than: int, batch_size: int) -> dict[str, int]:
    """Delete what expired over `older_than` seconds ago and nothing can need any more.

    Token records, families left empty, retired signing keys none of whose tokens can be
    alive, initial access tokens (RFC 7591), device authorizations (an expired device code
    only ever answers expired_token), authorization codes, browser sessions expired or ended,
    and spent JWT ids whose JWTs have expired. Returns how many of each went, by name.

    A spent refresh token's record stays until it expires like any other: presenting it again
    must still be recognised as reuse and revoke its family.
    """
    cutoff = utcnow() - timedelta(seconds=older_than)
    records = _delete_in_batches(
        _table(TokenRecord), [TokenRecord.expires_at < cutoff], batch_size, walk=False
    )
    empty_family = [
        TokenFamily.created_at < cutoff,
        ~exists().where(TokenRecord.family_id == TokenFamily.id),
    ]
    families = _delete_in_batches(_table(TokenFamily), empty_family, batch_size, walk=True)
    # A retired key is useless once every token it signed has expired.
    ttl = timedelta(seconds=current_settings().access_token_ttl)
    keys = db.session.execute(
        delete(SigningKey).where(SigningKey.retired_at < cutoff - ttl - _KEY_GRACE)
    )
    db.session.commit()
    return {
        "token records": records,
        "token families": families,
        "retired signing keys": int(keys.rowcount),  # type: ignore[attr-defined]
        "initial access tokens": initial_tokens.purge(cutoff),
        "device authorizations": devices.purge(cutoff, batch_size),
        "authorization codes": codes.purge(cutoff, batch_size),
        "browser sessions": sessions.purge(cutoff, batch_size),
        # Kept until its JWT can no longer pass the exp check (leeway included); after that
        # the JWT itself is refused, so the id is dead weight whatever --older-than says.
        "spent JWT ids": replay.purge(),
    }


def _table(model: Any) -> Table:
    table: Table = model.__table__
    return table


def _delete_in_batches(
    table: Table, where: list[ColumnElement[bool]], batch_size: int, *, walk: bool
) -> int:
    """Delete matching rows, at most `batch_size` per transaction; returns how many went.

    With `walk`, each batch starts after the last id deleted, so rows the query must look at
    but keep (families still in use) are read once per run, not once per batch.
    """
    key = table.c.id
    total, after = 0, None
    while True:
        chosen = select(key).where(*where).limit(batch_size)
        if walk:
            chosen = chosen.order_by(key)
            if after is not None:
                chosen = chosen.where(key > after)
        # The conditions are checked again by the DELETE itself, so a row that changed since
        # it was chosen is left alone; no list of ids travels as parameters.
        gone = db.session.scalars(
            delete(table).where(key.in_(chosen.scalar_subquery()), *where).returning(key)
        ).all()
        db.session.commit()
        if not gone:
            return total
        total += len(gone)
        after = max(gone)
