"""Deleting what has long expired (token records, keys, codes, sessions...), in short batches."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Table, and_, exists

from .config import current_settings
from .extensions import db
from .models import TokenFamily, TokenRecord, utcnow
from .store import codes, delete_in_batches, devices, initial_tokens, keys, replay, sessions

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
    records_table: Table = TokenRecord.__table__
    families_table: Table = TokenFamily.__table__
    records = delete_in_batches(
        records_table, records_table.c.id, TokenRecord.expires_at < cutoff, batch_size
    )
    empty_family = and_(
        TokenFamily.created_at < cutoff,
        ~exists().where(TokenRecord.family_id == TokenFamily.id),
    )
    families = delete_in_batches(
        families_table, families_table.c.id, empty_family, batch_size, walk=True
    )
    # A retired key is useless once every token it signed has expired.
    ttl = timedelta(seconds=current_settings().access_token_ttl)
    retired_keys = keys.purge(db.engine, cutoff - ttl - _KEY_GRACE, batch_size)
    return {
        "token records": records,
        "token families": families,
        "retired signing keys": retired_keys,
        "initial access tokens": initial_tokens.purge(cutoff),
        "device authorizations": devices.purge(cutoff, batch_size),
        "authorization codes": codes.purge(cutoff, batch_size),
        "browser sessions": sessions.purge(cutoff, batch_size),
        # Kept until its JWT can no longer pass the exp check (leeway included); after that
        # the JWT itself is refused, so the id is dead weight whatever --older-than says.
        "spent JWT ids": replay.purge(),
    }
