"""The password-guessing guard: delays, the daily cap, resets, shared counts, no enumeration."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy import func, select

from tokenserver.extensions import db
from tokenserver.guard import (
    DAILY_CAP,
    DAY,
    FREE_ATTEMPTS,
    MAX_DELAY,
    SCHEDULE,
    DatabaseGuard,
    RedisGuard,
    Throttled,
    current_guard,
    delay_after,
)
from tokenserver.models import LoginThrottle
from tokenserver.passwords import Passwords

from .conftest import PASSWORD, REDIS_URL, Actions, RegisteredClient
from .helpers import HeldRequest, csrf_of

WRONG = "not the password at all"


@pytest.fixture(params=["database", "redis"])
def store_app(request: pytest.FixtureRequest, make_app: Any, redis_prefix: str) -> Flask:
    """An app whose guard counts in the database, or in Redis."""
    if request.param == "redis":
        return make_app(ratelimit_storage_uri=REDIS_URL, ratelimit_key_prefix=redis_prefix)  # type: ignore[no-any-return]
    return make_app()  # type: ignore[no-any-return]


@pytest.fixture
def store_actions(store_app: Flask) -> Actions:
    return Actions(store_app, store_app.test_client())


def _fail(actions: Actions, oauth_client: RegisteredClient, username: str, times: int) -> None:
    for _ in range(times):
        response = actions.token(oauth_client, username, password=WRONG)
        assert response.status_code == 400, response.json
        assert response.json["error"] == "invalid_grant"


def test_schedule_is_free_then_doubling_up_to_the_maximum() -> None:
    assert [delay_after(n) for n in range(1, FREE_ATTEMPTS)] == [0] * (FREE_ATTEMPTS - 1)
    assert [delay_after(n) for n in range(FREE_ATTEMPTS, FREE_ATTEMPTS + 4)] == [1, 2, 4, 8]
    assert delay_after(1000) == MAX_DELAY
    assert SCHEDULE[-1] == MAX_DELAY
    assert [delay_after(n) for n in range(1, len(SCHEDULE) + 1)] == SCHEDULE


def test_guessing_is_throttled_and_the_right_password_waits_too(
    store_actions: Actions, frozen: Any
) -> None:
    store_actions.user("alice")
    oauth_client = store_actions.oauth_client()
    _fail(store_actions, oauth_client, "alice", FREE_ATTEMPTS)
    refused = store_actions.token(oauth_client, "alice")
    assert refused.status_code == 429
    assert refused.is_json
    assert refused.json["error"] == "too_many_requests"
    assert refused.json["error_description"]
    assert refused.headers["Retry-After"] == str(delay_after(FREE_ATTEMPTS))
    assert refused.headers["Cache-Control"] == "no-store"
    frozen.shift(delay_after(FREE_ATTEMPTS))
    assert store_actions.token(oauth_client, "alice").status_code == 200


def test_each_further_failure_doubles_the_wait(store_actions: Actions, frozen: Any) -> None:
    store_actions.user("alice")
    oauth_client = store_actions.oauth_client()
    _fail(store_actions, oauth_client, "alice", FREE_ATTEMPTS)
    for attempts in range(FREE_ATTEMPTS, FREE_ATTEMPTS + 4):
        wait = delay_after(attempts)
        frozen.shift(wait - 0.5)
        early = store_actions.token(oauth_client, "alice")
        assert early.status_code == 429
        assert early.headers["Retry-After"] == "1"  # half a second left, rounded up
        frozen.shift(0.5)
        _fail(store_actions, oauth_client, "alice", 1)


def test_throttled_check_computes_no_hash(
    app: Flask, actions: Actions, frozen: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    actions.user("alice")
    oauth_client = actions.oauth_client()
    _fail(actions, oauth_client, "alice", FREE_ATTEMPTS)
    _fail(actions, oauth_client, "nobody", FREE_ATTEMPTS)
    checks: list[str] = []
    real_verify = Passwords.verify

    def counting_verify(self: Passwords, stored_hash: str, password: str) -> Any:
        checks.append(stored_hash)
        return real_verify(self, stored_hash, password)

    monkeypatch.setattr(Passwords, "verify", counting_verify)
    assert actions.token(oauth_client, "alice").status_code == 429
    assert actions.token(oauth_client, "nobody").status_code == 429
    assert checks == []


def test_success_resets_the_count(store_actions: Actions, frozen: Any) -> None:
    store_actions.user("alice")
    oauth_client = store_actions.oauth_client()
    _fail(store_actions, oauth_client, "alice", FREE_ATTEMPTS - 1)
    assert store_actions.token(oauth_client, "alice").status_code == 200
    # Had the count survived, the last of these would be refused.
    _fail(store_actions, oauth_client, "alice", FREE_ATTEMPTS)


def test_unknown_username_is_guarded_exactly_like_a_real_one(actions: Actions, frozen: Any) -> None:
    actions.user("alice")
    oauth_client = actions.oauth_client()
    answers = {}
    for name in ("alice", "nobody"):
        seen = []
        for _ in range(FREE_ATTEMPTS + 1):
            response = actions.token(oauth_client, name, password=WRONG)
            seen.append((response.status_code, response.json, response.headers.get("Retry-After")))
        answers[name] = seen
    assert answers["alice"] == answers["nobody"]
    assert answers["nobody"][-1][0] == 429


def test_guard_counts_every_spelling_of_a_name_together(actions: Actions, frozen: Any) -> None:
    actions.user("alice")
    oauth_client = actions.oauth_client()
    for name in ("alice", "Alice", "ALICE", "aLiCe", "alicE"):
        _fail(actions, oauth_client, name, 1)
    assert actions.token(oauth_client, "ALIce").status_code == 429


def test_at_most_daily_cap_checks_a_day(store_app: Flask, frozen: Any) -> None:
    start = datetime.now(UTC)
    with store_app.app_context():
        guard = current_guard()
        admitted = 0
        while admitted < DAILY_CAP:  # a patient guesser: every attempt as soon as allowed
            try:
                guard.admit("mallory")
            except Throttled as exc:
                assert exc.retry_after <= MAX_DELAY
                frozen.shift(exc.retry_after)
            else:
                admitted += 1
        assert datetime.now(UTC) - start < timedelta(seconds=DAY)
        frozen.shift(MAX_DELAY)
        with pytest.raises(Throttled) as capped:
            guard.admit("mallory")
        left = capped.value.retry_after
        assert left > MAX_DELAY  # the cap refuses, not a delay
        day_end = start + timedelta(seconds=DAY)
        assert abs(datetime.now(UTC) + timedelta(seconds=left) - day_end) <= timedelta(seconds=1)
        frozen.shift(left)
        guard.admit("mallory")  # a new day...
        with pytest.raises(Throttled) as later:
            guard.admit("mallory")
        assert later.value.retry_after == MAX_DELAY  # ...but the guesser stays slow


def test_a_day_without_attempts_forgets_the_count(store_app: Flask, frozen: Any) -> None:
    with store_app.app_context():
        guard = current_guard()
        for _ in range(FREE_ATTEMPTS):
            guard.admit("bob")
        with pytest.raises(Throttled):
            guard.admit("bob")
        frozen.shift(DAY)
        for _ in range(FREE_ATTEMPTS):
            guard.admit("bob")


def test_concurrent_checks_are_counted_atomically(store_app: Flask, frozen: Any) -> None:
    with store_app.app_context():
        guard = current_guard()
    outcomes: list[bool] = []
    barrier = threading.Barrier(12)

    def attempt() -> None:
        barrier.wait()
        try:
            guard.admit("carol")
        except Throttled:
            outcomes.append(False)
        else:
            outcomes.append(True)

    threads = [threading.Thread(target=attempt) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(True) == FREE_ATTEMPTS
    assert outcomes.count(False) == 12 - FREE_ATTEMPTS


def test_database_guard_keeps_one_row_per_name_and_no_username(app: Flask, frozen: Any) -> None:
    with app.app_context():
        guard = current_guard()
        assert isinstance(guard, DatabaseGuard)
        for name in ("dave", "dave", "erin"):
            guard.admit(name)
        rows = db.session.scalars(select(LoginThrottle)).all()
        assert sorted(row.attempts for row in rows) == [1, 2]
        assert all("dave" not in row.key and "erin" not in row.key for row in rows)
        frozen.shift(DAY + 1)
        assert guard.prune(datetime.now(UTC)) == 2
        assert db.session.scalar(select(func.count()).select_from(LoginThrottle)) == 0


@pytest.mark.skipif(
    os.environ.get("TEST_DATABASE_URL", "").startswith("postgresql"),
    reason="SQLite's commit durability",
)
def test_counting_leaves_every_commit_after_it_durable(app: Flask, frozen: Any) -> None:
    full = 2  # PRAGMA synchronous: FULL; a count alone is committed at NORMAL
    with app.app_context():
        db.engine.dispose()
        guard = current_guard()
        guard.admit("dave")
        guard.clear("dave")
        guard.admit("dave")
        assert db.engine.pool.checkedin() == 1  # the only connection, used by each of them
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == full
        assert db.session.scalar(select(LoginThrottle.attempts)) == 1


def test_counts_are_shared_by_two_apps_on_one_redis(make_app: Any, redis_prefix: str) -> None:
    apps = [
        make_app(ratelimit_storage_uri=REDIS_URL, ratelimit_key_prefix=redis_prefix)
        for _ in range(2)
    ]
    first, second = (Actions(app, app.test_client()) for app in apps)
    first.user("alice")
    oauth_client = first.oauth_client()
    _fail(first, oauth_client, "alice", 3)
    _fail(second, oauth_client, "alice", FREE_ATTEMPTS - 3)
    assert first.token(oauth_client, "alice").status_code == 429
    assert second.token(oauth_client, "alice").status_code == 429
    with apps[1].app_context():
        assert isinstance(current_guard(), RedisGuard)
    keys = list(redis.Redis.from_url(REDIS_URL).scan_iter(f"{redis_prefix}:guard:*"))
    assert len(keys) == 1
    assert 0 < redis.Redis.from_url(REDIS_URL).ttl(keys[0]) <= DAY


def test_unreachable_redis_refuses_logins_with_503(make_app: Any) -> None:
    app = make_app(ratelimit_storage_uri="redis://127.0.0.1:1/0")
    actions = Actions(app, app.test_client())
    actions.user("alice")
    response = actions.token(actions.oauth_client(), "alice")
    assert response.status_code == 503
    assert response.is_json
    assert response.json["error"] == "service_unavailable"
    assert response.headers["Retry-After"] == "1"


def test_unreachable_redis_refuses_sign_ins_at_the_login_page_with_json_503(make_app: Any) -> None:
    # As a failing database is answered on every page (the OpenAPI document says so).
    app = make_app(ratelimit_storage_uri="redis://127.0.0.1:1/0")
    client = app.test_client()
    Actions(app, client).user("alice")
    form = {"csrf_token": csrf_of(client.get("/login").text), "username": "alice"}
    response = client.post("/login", data={**form, "password": PASSWORD})
    assert response.status_code == 503
    assert response.json["error"] == "service_unavailable"
    assert response.headers["Retry-After"] == "1"


def basic_auth_header(oauth_client: RegisteredClient) -> str:
    """An Authorization header line for a held request."""
    import base64

    pair = f"{oauth_client.client_id}:{oauth_client.secret}".encode()
    return f"Authorization: Basic {base64.b64encode(pair).decode()}\r\n"


def test_counts_are_shared_by_two_gunicorn_workers(live_server: Any, actions: Actions) -> None:
    import requests

    actions.user("alice")
    oauth_client = actions.oauth_client()
    fields = {"grant_type": "password", "username": "alice", "password": WRONG}
    # This worker waits for the last byte while the other serves every other request.
    held = HeldRequest(live_server.url, "/oauth/token", fields, basic_auth_header(oauth_client))
    for _ in range(FREE_ATTEMPTS):
        response = requests.post(
            f"{live_server.url}/oauth/token", data=fields, auth=oauth_client.auth, timeout=10
        )
        assert response.status_code == 400
    # The held worker served none of those, yet counts them: the sixth check must wait (the
    # first delay is a second, far longer than the few milliseconds this step takes).
    assert held.finish() == 429
