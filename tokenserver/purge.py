"""Deleting what has long expired (token records, keys, codes, sessions...), in short batches."""

from __future__ import annotations

from datetime import timedelta

from .config import current_settings
from .extensions import db
from .guard import DatabaseGuard
from .keys import retention
from .models import utcnow
from .store import codes, devices, initial_tokens, keys, pushed, replay, sessions, tokens

# Retired keys outlive their last token by this much more, for resource servers with skewed clocks.
_KEY_GRACE = timedelta(minutes=5)


def purge(older_than: int, batch_size: int) -> dict[str, int]:
    """Delete what expired over `older_than` seconds ago and nothing can need any more.

    Token records, families left empty, retired signing keys none of whose tokens can be
    alive, initial access tokens (RFC 7591), device authorizations (an expired device code
    only ever answers expired_token), authorization codes, pushed authorization requests,
    browser sessions expired or ended, spent JWT ids whose JWTs have expired, and the password
    guard's counts forgotten a day after their last attempt. Returns how many of each went,
    by name.
    """
    cutoff = utcnow() - timedelta(seconds=older_than)
    records, families = tokens.purge(cutoff, batch_size)
    # A retired key is useless once every token it signed has expired, and the workers no
    # longer publish it (however long they cache their keys).
    settings = current_settings()
    published = retention(settings.access_token_ttl, settings.key_cache_seconds)
    retired_keys = keys.purge(db.engine, cutoff - published - _KEY_GRACE, batch_size)
    return {
        "token records": records,
        "token families": families,
        "retired signing keys": retired_keys,
        "initial access tokens": initial_tokens.purge(cutoff, batch_size),
        "device authorizations": devices.purge(cutoff, batch_size),
        "authorization codes": codes.purge(cutoff, batch_size),
        # Dead once expired, whatever --older-than says: an unknown or expired request_uri
        # gets the same page.
        "pushed authorization requests": pushed.purge(utcnow(), batch_size),
        "browser sessions": sessions.purge(cutoff, batch_size),
        # Kept until its JWT can no longer pass the exp check (leeway included); after that
        # the JWT itself is refused, so the id is dead weight whatever --older-than says.
        "spent JWT ids": replay.purge(batch_size=batch_size),
        # Anyone can make one by typing a name. The guard prunes them in passing, only as fast
        # as sign-ins come; rows left by a spray of names (or by a switch to Redis) go here.
        "login throttles": DatabaseGuard(db.engine).purge(utcnow(), batch_size),
    }
