"""The password-guessing guard: a count per account name, shared by every worker and node.

Every password check is admitted, and counted, before any hash is computed; a successful login
clears the count. The first FREE_ATTEMPTS checks since the last success run at once; each one
after that waits a delay that doubles up to MAX_DELAY; and no account name gets more than
DAILY_CAP checks in a day (NIST SP 800-63B §5.2.2). Counts older than a day are forgotten.
The count lives in the database, or in Redis when the rate-limit storage is Redis.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from datetime import datetime, timedelta
from typing import Protocol

from flask import Flask, current_app
from sqlalchemy.engine import Engine

from . import shared_redis
from .config import Settings
from .errors import APIError, seconds
from .models import utcnow
from .store.throttles import Refused, ThrottleTable

FREE_ATTEMPTS = 5
MAX_DELAY = 15 * 60
DAILY_CAP = 100
DAY = 24 * 60 * 60
_PRUNE_ODDS = 256  # one admission in this many also deletes forgotten database rows
_PRUNE_BATCH = 1000


def delay_after(attempts: int) -> int:
    """Seconds the next check must wait after `attempts` checks without a success."""
    if attempts < FREE_ATTEMPTS:
        return 0
    return min(2 ** (attempts - FREE_ATTEMPTS), MAX_DELAY)


def _schedule() -> list[int]:
    """delay_after(1), delay_after(2), ... up to the first MAX_DELAY (which then holds)."""
    delays = [delay_after(1)]
    while delays[-1] < MAX_DELAY:
        delays.append(delay_after(len(delays) + 1))
    return delays


# The stores evaluate the policy from this table, so it is written down once (above).
SCHEDULE = _schedule()


class Throttled(APIError):
    """A password check refused before hashing: too many recent failures for this name."""

    status = 429
    error = "too_many_requests"

    def __init__(self, wait_seconds: float) -> None:
        self.retry_after = max(1, math.ceil(wait_seconds))
        super().__init__(
            f"Too many failed sign-ins for this account; retry after {seconds(self.retry_after)}.",
            headers={"Retry-After": str(self.retry_after)},
        )


class Guard(Protocol):
    """Where the counts live."""

    def admit(self, name: str) -> None:
        """Count one password check for `name`, or raise Throttled without counting it."""

    def clear(self, name: str) -> None:
        """Forget `name`'s count after a successful login."""


def _key(name: str) -> str:
    """Where a name's count is kept: its SHA-256, so the store holds no usernames.

    surrogatepass: any Python string has a key, even one no HTTP body could carry.
    """
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()


class DatabaseGuard:
    """Counts in the database (store/throttles.py); each admission is one conditional upsert."""

    def __init__(self, engine: Engine) -> None:
        self._table = ThrottleTable(engine, SCHEDULE, DAILY_CAP, DAY)

    def admit(self, name: str) -> None:
        now = utcnow()
        refused = self._table.admit(_key(name), now)
        if refused is not None:
            raise Throttled(_wait(refused, now))
        if secrets.randbelow(_PRUNE_ODDS) == 0:
            self.prune(now)

    def clear(self, name: str) -> None:
        self._table.clear(_key(name))

    def prune(self, now: datetime) -> int:
        """Delete a batch of counts nobody has touched for a day; returns how many."""
        return self._table.prune(now - timedelta(seconds=DAY), _PRUNE_BATCH)

    def purge(self, now: datetime, batch_size: int) -> int:
        """Delete every count nobody has touched for a day, a batch at a time; how many."""
        return self._table.purge(now - timedelta(seconds=DAY), batch_size)


def _wait(row: Refused, now: datetime) -> float:
    """Seconds until a refused name may try again."""
    waits = [(row.next_attempt_at - now).total_seconds()]
    if row.day_attempts >= DAILY_CAP:
        waits.append((row.day_started_at + timedelta(seconds=DAY) - now).total_seconds())
    return max(waits)


# KEYS[1]: the name's hash. ARGV: now, DAY, DAILY_CAP, MAX_DELAY, then SCHEDULE.
# The same rules as _admission, run atomically inside Redis.
_ADMIT_SCRIPT = """
local now, day, cap, max_delay = tonumber(ARGV[1]), tonumber(ARGV[2]),
    tonumber(ARGV[3]), tonumber(ARGV[4])
local s = redis.call('HMGET', KEYS[1], 'attempts', 'last', 'next', 'day_start', 'day_attempts')
local attempts, last = tonumber(s[1]) or 0, tonumber(s[2]) or 0
local next_at, day_start, day_attempts = tonumber(s[3]) or 0, tonumber(s[4]) or now,
    tonumber(s[5]) or 0
if last <= now - day then
    attempts, next_at, day_start, day_attempts = 0, 0, now, 0
elseif day_start <= now - day then
    day_start, day_attempts = now, 0
end
if day_attempts >= cap then return {0, tostring(day_start + day - now)} end
if now < next_at then return {0, tostring(next_at - now)} end
attempts, day_attempts = attempts + 1, day_attempts + 1
local delay = tonumber(ARGV[4 + attempts]) or max_delay
redis.call('HSET', KEYS[1], 'attempts', attempts, 'last', now, 'next', now + delay,
    'day_start', day_start, 'day_attempts', day_attempts)
redis.call('EXPIRE', KEYS[1], day)
return {1, '0'}
"""


class RedisGuard:
    """Counts in Redis hashes; each admission is one Lua script, atomic on the server."""

    def __init__(self, url: str, prefix: str) -> None:
        self._redis = shared_redis.connect(url)
        self._prefix = f"{prefix}:guard:"
        self._admit = self._redis.register_script(_ADMIT_SCRIPT)

    def admit(self, name: str) -> None:
        args = [utcnow().timestamp(), DAY, DAILY_CAP, MAX_DELAY, *SCHEDULE]
        # Fail closed: without the count, guessing would be unlimited.
        with shared_redis.failing_closed("sign-in guard"):
            admitted, wait = self._admit(keys=[self._prefix + _key(name)], args=args)
        if not admitted:
            raise Throttled(float(wait))

    def clear(self, name: str) -> None:
        with shared_redis.failing_closed("sign-in guard"):
            self._redis.delete(self._prefix + _key(name))


def init_app(app: Flask) -> None:
    """Choose the store: Redis when the rate-limit storage is Redis, else the database."""
    settings: Settings = app.extensions["tokenserver.settings"]
    uri = settings.ratelimit_storage_uri
    guard: Guard
    if shared_redis.is_redis(uri):
        guard = RedisGuard(uri, settings.ratelimit_key_prefix)
    else:
        from .extensions import db

        with app.app_context():
            guard = DatabaseGuard(db.engine)
    app.extensions["tokenserver.guard"] = guard


def current_guard() -> Guard:
    """The guard of the app handling this request."""
    guard: Guard = current_app.extensions["tokenserver.guard"]
    return guard
