"""Single-use JWT ids: the first presentation wins, every replay fails, across threads too."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from flask import Flask

from tokenserver.models import utcnow
from tokenserver.store import replay


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


def test_purge_forgets_only_expired_ids(app: Flask) -> None:
    now = utcnow()
    with app.app_context():
        replay.spend("dpop", "k", "old", now - timedelta(seconds=1))
        replay.spend("dpop", "k", "live", now + timedelta(minutes=5))
        assert replay.purge(now) == 1
        assert replay.spend("dpop", "k", "old", now + timedelta(minutes=1)) is True
        assert replay.spend("dpop", "k", "live", now + timedelta(minutes=1)) is False
