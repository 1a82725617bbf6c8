"""Tokens: logins (token families) and the records of the tokens they issued.

The token grants and the bearer check run these statements on every request, so they are
Core, built once on the tables: composing a statement, or loading and tracking ORM objects,
costs more than executing it (statement caching skips compilation, not construction). The
rules they serve (rotation, reuse detection, liveness) are in oauth/records.py.

By what is done to them: issuing.py stores them, lookups.py finds them, revoking.py ends
them; here, their kinds and the purge of the expired.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Table, and_, exists

from ...models import TokenFamily, TokenRecord
from .. import delete_in_batches

ACCESS = "access"
REFRESH = "refresh"

_families: Table = TokenFamily.__table__
_records: Table = TokenRecord.__table__


def purge(cutoff: datetime, batch_size: int) -> tuple[int, int]:
    """Delete token records that expired before `cutoff`, then logins made before it with no
    record left; how many of each went, at most `batch_size` per transaction.

    A spent refresh token's record stays until it expires like any other: presenting it again
    must still be recognised as reuse and revoke its family.
    """
    records = delete_in_batches(_records, _records.c.id, _records.c.expires_at < cutoff, batch_size)
    empty = and_(
        _families.c.created_at < cutoff,
        ~exists().where(_records.c.family_id == _families.c.id),
    )
    families = delete_in_batches(_families, _families.c.id, empty, batch_size, walk=True)
    return records, families
