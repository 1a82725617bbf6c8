"""Single-use JWT ids: the first presentation wins, every replay fails, across threads too."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from tokenserver.models import utcnow
from tokenserver.store import replay

from .conftest import REDIS_URL


def test_an_id_is_spent_once(app: Flask) -> None:
    later = utcnow() + timedelta(minutes=1)
    with app.app_context():
        assert replay.spend("dpop", "jkt-1", "abc", later) is True
        assert replay.spend("dpop", "jkt-1", "abc", later) is False


def test_ids_are_scoped_by_kind_and_issuer(app: Flask) -> None:
    later = utcnow() + timedelta(minutes=1)
    with app.app_context():
        assert replay.spend("dpop", "jkt-1", "same", later) is True
        assert replay.spend("dpop", "jkt-2", "same", later) is True
        assert replay.spend("client_assertion", "jkt-1", "same", later) is True
        assert replay.spend("dpop", "jkt-1", "same", later) is False


def test_concurrent_presentations_have_one_winner(app: Flask) -> None:
    later = utcnow() + timedelta(minutes=1)

    def attempt(_: int) -> bool:
        with app.app_context():
            return replay.spend("client_assertion", "client", "raced", later)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(attempt, range(16)))
    assert results.count(True) == 1


@pytest.mark.skipif(
    os.environ.get("TEST_DATABASE_URL", "").startswith("postgresql"),
    reason="SQLite's commit durability",
)
def test_an_id_spent_alone_leaves_every_commit_after_it_durable(app: Flask) -> None:
    from sqlalchemy.exc import IntegrityError

    from tokenserver.extensions import db

    full = 2  # PRAGMA synchronous: FULL, as every other write expects
    later = utcnow() + timedelta(minutes=1)
    with app.app_context():
        db.engine.dispose()
        assert replay.spend("dpop", "k", "one", later) is True
        with pytest.raises(IntegrityError):
            replay.spend("dpop", "k", "two", None)  # type: ignore[arg-type]
        assert db.engine.pool.checkedin() == 1  # the only connection, used by both
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == full
        assert replay.spend("dpop", "k", "one", later) is False


def test_purge_forgets_only_expired_ids(app: Flask) -> None:
    now = utcnow()
    with app.app_context():
        replay.spend("dpop", "k", "old", now - timedelta(seconds=1))
        replay.spend("dpop", "k", "live", now + timedelta(minutes=5))
        assert replay.purge(now) == 1
        assert replay.spend("dpop", "k", "old", now + timedelta(minutes=1)) is True
        assert replay.spend("dpop", "k", "live", now + timedelta(minutes=1)) is False


def test_ids_are_spent_in_redis_when_the_limits_live_there(
    make_app: Any, redis_prefix: str
) -> None:
    import redis

    app = make_app(ratelimit_storage_uri=REDIS_URL, ratelimit_key_prefix=redis_prefix)
    later = utcnow() + timedelta(seconds=90)
    with app.app_context():
        assert replay.spend("dpop", "jkt-r", "abc", later) is True
        assert replay.spend("dpop", "jkt-r", "abc", later) is False
        assert replay.spend("dpop", "jkt-r", "abd", later) is True
        assert replay.purge() == 0  # nothing went to the database
    keys = list(redis.Redis.from_url(REDIS_URL).scan_iter(f"{redis_prefix}:jti:*"))
    assert len(keys) == 2
    # Forgotten by Redis itself once the JWT is refused anyway.
    assert 0 < redis.Redis.from_url(REDIS_URL).ttl(keys[0]) <= 90


def test_redis_down_is_a_503_never_a_pass(make_app: Any) -> None:
    from tokenserver.errors import APIError

    app = make_app(ratelimit_storage_uri="redis://127.0.0.1:1/0")  # nothing listens there
    with app.app_context(), pytest.raises(APIError) as refused:
        replay.spend("dpop", "jkt", "x", utcnow() + timedelta(minutes=1))
    assert refused.value.status == 503
