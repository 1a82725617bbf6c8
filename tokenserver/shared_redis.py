"""The Redis that every worker and node shares, when the rate limits are kept in one.

The per-account password guard and the spent JWT ids live there too, so that all of them are
counted once however many processes answer.

redis-py is imported only where a Redis is configured: it costs each worker several MB.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .config import REDIS_SCHEMES
from .errors import APIError

if TYPE_CHECKING:
    import redis


def is_redis(uri: str) -> bool:
    """Whether a TOKENSERVER_RATELIMIT_STORAGE_URI names a Redis (not memory://)."""
    return urlsplit(uri).scheme in REDIS_SCHEMES


def connect(uri: str) -> redis.Redis:
    """A client for `uri`, failing in seconds rather than hanging when Redis is away."""
    # redis-py spells a socket URL unix://; the limits library spells it redis+unix://.
    import redis

    url = "unix://" + uri.split("://", 1)[1] if uri.startswith("redis+unix://") else uri
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


@contextmanager
def failing_closed(what: str) -> Iterator[None]:
    """Redis errors in the block answer 503 (`unavailable`): a check that cannot count, or
    cannot tell a replay apart, must not pass."""
    import redis  # loaded by connect() already: this only names it

    try:
        yield
    except redis.RedisError as exc:
        raise unavailable(what) from exc


def unavailable(what: str) -> APIError:
    """503 for a check that must fail closed while Redis is away (a guessing limit, a replay)."""
    return APIError(
        f"The {what} is unavailable; try again shortly.",
        status=503,
        error="service_unavailable",
        headers={"Retry-After": "1"},
    )
