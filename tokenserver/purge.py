"""Deleting token records long past expiry, in short batches that never hold a lock for long."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, exists, select

from .config import current_settings
from .extensions import db
from .models import SigningKey, TokenFamily, TokenRecord, utcnow


def purge(older_than: int, batch_size: int) -> tuple[int, int]:
    """Delete records expired over `older_than` seconds ago and families with none left."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    records = _in_batches(
        select(TokenRecord.id).where(TokenRecord.expires_at < cutoff), TokenRecord.id, batch_size
    )
    empty = select(TokenFamily.id).where(
        TokenFamily.created_at < cutoff,
        ~exists().where(TokenRecord.family_id == TokenFamily.id),
    )
    families = _in_batches(empty, TokenFamily.id, batch_size)
    # A retired key is useless once every token it signed has expired.
    key_cutoff = cutoff - timedelta(seconds=current_settings().access_token_ttl)
    db.session.execute(delete(SigningKey).where(SigningKey.retired_at < key_cutoff))
    db.session.commit()
    return records, families


def _in_batches(ids: select, column: object, batch_size: int) -> int:  # type: ignore[valid-type]
    total = 0
    table = column.class_  # type: ignore[attr-defined]
    while True:
        batch = db.session.scalars(ids.limit(batch_size)).all()  # type: ignore[attr-defined]
        if not batch:
            return total
        db.session.execute(delete(table).where(column.in_(batch)))  # type: ignore[attr-defined]
        db.session.commit()
        total += len(batch)
