"""The Redis that every worker and node shares, when the rate limits are kept in one.

The per-account password guard and the spent JWT ids live there too, so that all of them are
counted once however many processes answer.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import redis

from .config import REDIS_SCHEMES
from .errors import APIError


def is_redis(uri: str) -> bool:
    """Whether a TOKENSERVER_RATELIMIT_STORAGE_URI names a Redis (not memory://)."""
    return urlsplit(uri).scheme in REDIS_SCHEMES


def connect(uri: str) -> redis.Redis:
    """A client for `uri`, failing in seconds rather than hanging when Redis is away."""
    # redis-py spells a socket URL unix://; the limits library spells it redis+unix://.
    url = "unix://" + uri.split("://", 1)[1] if uri.startswith("redis+unix://") else uri
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def unavailable(what: str) -> APIError:
    """503 for a check that must fail closed while Redis is away (a guessing limit, a replay)."""
    return APIError(
        f"The {what} is unavailable; try again shortly.",
        status=503,
        error="service_unavailable",
        headers={"Retry-After": "1"},
    )
