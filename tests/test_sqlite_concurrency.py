"""SQLite under several gunicorn workers: concurrent writers queue, and no client sees a lock."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from flask import Flask
from sqlalchemy import select, text

from tests.conftest import PASSWORD, Actions
from tokenserver.extensions import db
from tokenserver.models import User

pytestmark = pytest.mark.skipif(
    os.environ.get("TEST_DATABASE_URL", "").startswith("postgresql"),
    reason="SQLite only; this run is on PostgreSQL",
)


def test_connections_use_wal_and_a_long_busy_timeout(app: Flask) -> None:
    with app.app_context():
        assert db.session.scalar(text("PRAGMA journal_mode")) == "wal"
        assert db.session.scalar(text("PRAGMA busy_timeout")) == 30000


def test_transactions_begin_at_the_first_write_not_the_first_read(app: Flask) -> None:
    # A read that opened the transaction would have to upgrade to a write lock later, and
    # SQLite answers such an upgrade "database is locked" at once, whatever the busy timeout.
    with app.app_context():
        raw = db.session.connection().connection.dbapi_connection
        db.session.execute(select(User.id)).all()
        assert raw is not None and not raw.in_transaction
        db.session.add(User(username="lazy", username_key="lazy", password_hash="x"))
        db.session.flush()
        assert raw.in_transaction
        db.session.rollback()


def _session_of_writes(url: str, auth: tuple[str, str], worker: int) -> list[tuple[str, int]]:
    """Sign up, log in, refresh, and store an item, a few times over; every answer kept."""
    answers: list[tuple[str, int]] = []
    with requests.Session() as http:
        contested = http.post(
            f"{url}/users", json={"username": "contested", "password": PASSWORD}, timeout=60
        )
        answers.append(("contested", contested.status_code))
        for n in range(5):
            name = f"user-{worker}-{n}"
            made = http.post(
                f"{url}/users", json={"username": name, "password": PASSWORD}, timeout=60
            )
            answers.append(("signup", made.status_code))
            login = http.post(
                f"{url}/oauth/token",
                data={"grant_type": "password", "username": name, "password": PASSWORD},
                auth=auth,
                timeout=60,
            )
            answers.append(("login", login.status_code))
            if login.status_code != 200:
                continue
            tokens = login.json()
            refresh = http.post(
                f"{url}/oauth/token",
                data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                auth=auth,
                timeout=60,
            )
            answers.append(("refresh", refresh.status_code))
            item = http.post(
                f"{url}/junk",
                json={"name": f"item {n}"},
                headers={"Authorization": f"Bearer {tokens['access_token']}"},
                timeout=60,
            )
            answers.append(("junk", item.status_code))
    return answers


def test_concurrent_writes_from_four_workers_never_fail(
    live_server_factory: Any, actions: Actions
) -> None:
    server = live_server_factory(workers=4)
    auth = actions.oauth_client("writers").auth
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = pool.map(lambda w: _session_of_writes(server.url, auth, w), range(12))
        answers = [answer for result in results for answer in result]
    statuses = Counter(answers)
    assert statuses[("contested", 201)] == 1
    assert statuses[("contested", 409)] == 11
    expected = {"signup": 201, "login": 200, "refresh": 200, "junk": 201}
    for kind, status in expected.items():
        assert statuses[(kind, status)] == 60, statuses
    assert not [a for a in answers if a[1] >= 500]
    assert not [line for line in server.log_lines() if "database is locked" in line]
