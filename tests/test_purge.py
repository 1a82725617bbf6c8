"""tokenserver tokens purge: old records, empty families and dead keys go; all else stays."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import delete, event, func, select

from tests.conftest import Actions
from tokenserver.extensions import db
from tokenserver.models import (
    InitialAccessToken,
    LoginThrottle,
    SigningKey,
    SpentJti,
    TokenFamily,
    TokenRecord,
)

NOW = datetime.now(UTC).replace(microsecond=0)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


class Store:
    """Writes families, records and keys with chosen times, straight to the database."""

    def __init__(self, app: Flask, actions: Actions) -> None:
        self.app = app
        self.user_id = actions.user("alice")["id"]
        self.client_id = actions.oauth_client().client_id
        self.kids: list[str] = []

    def family(self, created: datetime) -> str:
        family_id = secrets.token_hex(16)
        with self.app.app_context():
            db.session.add(
                TokenFamily(
                    id=family_id, client_id=self.client_id, user_id=self.user_id, created_at=created
                )
            )
            db.session.commit()
        return family_id

    def record(
        self, family_id: str, expires: datetime, kind: str = "access", spent: datetime | None = None
    ) -> int:
        with self.app.app_context():
            record = TokenRecord(
                family_id=family_id,
                kind=kind,
                jti=secrets.token_hex(8) if kind == "access" else None,
                token_hash=secrets.token_hex(32) if kind == "refresh" else None,
                scope="junk:read",
                issued_at=expires - HOUR,
                expires_at=expires,
                spent_at=spent,
            )
            db.session.add(record)
            db.session.commit()
            return record.id

    def retired_key(self, retired: datetime) -> str:
        kid = f"purge-test-{secrets.token_hex(4)}"
        with self.app.app_context():
            db.session.add(
                SigningKey(
                    kid=kid,
                    private_key="",
                    state="retired",
                    public_jwk="{}",
                    created_at=retired - 30 * DAY,
                    retired_at=retired,
                )
            )
            db.session.commit()
        self.kids.append(kid)
        return kid

    def record_ids(self) -> set[int]:
        with self.app.app_context():
            return set(db.session.scalars(select(TokenRecord.id)))

    def family_ids(self) -> set[str]:
        with self.app.app_context():
            return set(db.session.scalars(select(TokenFamily.id)))

    def key_ids(self) -> set[str]:
        with self.app.app_context():
            return set(db.session.scalars(select(SigningKey.kid)))


@pytest.fixture
def store(app: Flask, actions: Actions) -> Iterator[Store]:
    """A Store at a fixed instant; the keys it made are removed afterwards (keys outlive tests)."""
    with time_machine.travel(NOW, tick=False):
        made = Store(app, actions)
        yield made
    with app.app_context():
        db.session.execute(delete(SigningKey).where(SigningKey.kid.in_(made.kids)))
        db.session.commit()


def purge(runner: FlaskCliRunner, *args: str) -> str:
    result = runner.invoke(args=["tokens", "purge", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_only_records_expired_longer_ago_than_older_than_go(
    store: Store, runner: FlaskCliRunner
) -> None:
    family = store.family(NOW - 40 * DAY)
    long_expired = store.record(family, NOW - DAY - HOUR)
    long_expired_refresh = store.record(family, NOW - 3 * DAY, "refresh", spent=NOW - 4 * DAY)
    recently_expired = store.record(family, NOW - DAY + HOUR)
    live = store.record(family, NOW + HOUR)
    # Spent but alive: presenting it again must still be caught as reuse, so it stays.
    spent_alive = store.record(family, NOW + 10 * DAY, "refresh", spent=NOW - HOUR)

    output = purge(runner)  # the default: a day past expiry
    assert "purged 2 token records" in output
    remaining = store.record_ids()
    assert {recently_expired, live, spent_alive} <= remaining
    assert not {long_expired, long_expired_refresh} & remaining
    assert family in store.family_ids()


def test_older_than_moves_the_cutoff(store: Store, runner: FlaskCliRunner) -> None:
    family = store.family(NOW - 40 * DAY)
    two_hours_ago = store.record(family, NOW - 2 * HOUR)
    just_now = store.record(family, NOW - timedelta(minutes=5))
    purge(runner, "--older-than", "3600")
    assert store.record_ids() & {two_hours_ago, just_now} == {just_now}


def test_old_families_left_empty_go_and_others_stay(store: Store, runner: FlaskCliRunner) -> None:
    spent_family = store.family(NOW - 40 * DAY)
    store.record(spent_family, NOW - 10 * DAY, "refresh")
    store.record(spent_family, NOW - 20 * DAY)
    in_use = store.family(NOW - 40 * DAY)
    store.record(in_use, NOW - 10 * DAY)
    store.record(in_use, NOW + 5 * DAY, "refresh")
    old_and_empty = store.family(NOW - 3 * DAY)
    new_and_empty = store.family(NOW - HOUR)  # its first records may be on their way

    output = purge(runner)
    assert "and 2 token families" in output
    families = store.family_ids()
    assert {in_use, new_and_empty} <= families
    assert not {spent_family, old_and_empty} & families


def test_retired_keys_go_once_no_token_of_theirs_can_live(
    app: Flask, store: Store, runner: FlaskCliRunner
) -> None:
    ttl = timedelta(seconds=app.extensions["tokenserver.settings"].access_token_ttl)
    long_dead = store.retired_key(NOW - DAY - ttl - HOUR)
    retired_yesterday = store.retired_key(NOW - DAY)
    with app.app_context():
        current = set(
            db.session.scalars(select(SigningKey.kid).where(SigningKey.retired_at.is_(None)))
        )
    output = purge(runner)
    assert "deleted 1 retired signing key and" in output
    keys = store.key_ids()
    assert retired_yesterday in keys
    assert long_dead not in keys
    assert current <= keys


@contextmanager
def _delete_statements(app: Flask, table: str) -> Iterator[list[str]]:
    """Collect the DELETE statements sent for `table` while the context is open."""
    seen: list[str] = []

    def listen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith(f"DELETE FROM {table.upper()}"):
            seen.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", listen)


def test_batches_are_no_larger_than_batch_size(
    app: Flask, store: Store, runner: FlaskCliRunner
) -> None:
    for _ in range(25):
        store.record(store.family(NOW - 40 * DAY), NOW - 5 * DAY)
    with _delete_statements(app, "token_records") as seen:
        output = purge(runner, "--batch-size", "10")
    assert "purged 25 token records and 25 token families" in output
    # 10 + 10 + 5 rows, then one statement that finds nothing left: four transactions.
    assert len(seen) == 4
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(TokenRecord)) == 0


def test_one_batch_when_batch_size_allows(app: Flask, store: Store, runner: FlaskCliRunner) -> None:
    for _ in range(25):
        store.record(store.family(NOW - 40 * DAY), NOW - 5 * DAY)
    with _delete_statements(app, "token_families") as seen:
        purge(runner, "--batch-size", "100")
    assert len(seen) == 2
    assert store.family_ids() == set()


def _goes_in_batches_of_ten(
    app: Flask, runner: FlaskCliRunner, label: str, key: Any, row: Callable[[bool], Any]
) -> None:
    """25 rows `row(True)` (purgeable) and one `row(False)` (kept), purged --batch-size 10: in
    three batches and a fourth DELETE that finds nothing left, and the kept row stays."""
    table = key.table.name
    with app.app_context():
        db.session.add_all(row(True) for _ in range(25))
        kept = row(False)
        db.session.add(kept)
        db.session.commit()
        kept_key = getattr(kept, key.name)
    with _delete_statements(app, table) as seen:
        output = purge(runner, "--batch-size", "10")
    assert f"25 {label}" in output
    assert len(seen) == 4  # 10 + 10 + 5, then one that finds nothing left
    with app.app_context():
        assert list(db.session.scalars(select(key))) == [kept_key]


def test_spent_jtis_go_in_batches_no_larger_than_batch_size(
    app: Flask, store: Store, runner: FlaskCliRunner
) -> None:
    # Anyone can spend ids (a DPoP proof from a key made up on the spot): millions of them
    # must not go in one transaction that locks the table, or all of SQLite, for long.
    def spent(expired: bool) -> SpentJti:
        expires = NOW - timedelta(minutes=1) if expired else NOW + HOUR
        return SpentJti(key=secrets.token_hex(32), expires_at=expires)

    _goes_in_batches_of_ten(app, runner, "spent JWT ids", SpentJti.__table__.c.key, spent)


def test_initial_access_tokens_go_in_batches_no_larger_than_batch_size(
    app: Flask, store: Store, runner: FlaskCliRunner
) -> None:
    def token(expired: bool) -> InitialAccessToken:
        expires = NOW - 5 * DAY if expired else NOW + HOUR
        return InitialAccessToken(token_hash=secrets.token_hex(32), expires_at=expires)

    key = InitialAccessToken.__table__.c.token_hash
    _goes_in_batches_of_ten(app, runner, "initial access tokens", key, token)


def test_forgotten_login_throttles_go_in_batches(
    app: Flask, store: Store, runner: FlaskCliRunner
) -> None:
    # Anyone can make a count by typing a name; the guard forgets one after a day without
    # attempts, but prunes in passing only as fast as sign-ins come: after a spray of names,
    # a quiet service would keep them for years.
    def throttle(forgotten: bool) -> LoginThrottle:
        last = NOW - DAY - HOUR if forgotten else NOW - DAY + HOUR
        return LoginThrottle(
            key=secrets.token_hex(32),
            attempts=1,
            last_attempt_at=last,
            next_attempt_at=last,
            day_started_at=last,
            day_attempts=1,
        )

    _goes_in_batches_of_ten(app, runner, "login throttles", LoginThrottle.__table__.c.key, throttle)


def test_old_codes_and_browser_sessions_go(store: Store, runner: FlaskCliRunner) -> None:
    from tokenserver.browser_models import AuthorizationCode, BrowserSession

    def code(expires: datetime) -> str:
        code_hash = secrets.token_hex(32)
        with store.app.app_context():
            db.session.add(
                AuthorizationCode(
                    code_hash=code_hash,
                    client_id=store.client_id,
                    user_id=store.user_id,
                    scope="openid",
                    code_challenge="c" * 43,
                    code_challenge_method="S256",
                    auth_time=expires - HOUR,
                    session_id=secrets.token_hex(16),
                    created_at=expires - timedelta(seconds=60),
                    expires_at=expires,
                    resources="",
                )
            )
            db.session.commit()
        return code_hash

    def session(expires: datetime, ended: datetime | None = None) -> str:
        session_id = secrets.token_hex(16)
        with store.app.app_context():
            db.session.add(
                BrowserSession(
                    id=session_id,
                    secret_hash=secrets.token_hex(32),
                    user_id=store.user_id,
                    auth_time=expires - DAY,
                    expires_at=expires,
                    ended_at=ended,
                )
            )
            db.session.commit()
        return session_id

    old_code, fresh_code = code(NOW - 2 * DAY), code(NOW - HOUR)
    expired, ended = session(NOW - 2 * DAY), session(NOW + DAY, ended=NOW - 2 * DAY)
    live, just_ended = session(NOW + DAY), session(NOW + DAY, ended=NOW - HOUR)

    output = purge(runner)
    assert "1 authorization code and" in output and "2 browser sessions" in output
    with store.app.app_context():
        codes = set(db.session.scalars(select(AuthorizationCode.code_hash)))
        sessions = set(db.session.scalars(select(BrowserSession.id)))
    assert old_code not in codes and fresh_code in codes
    assert sessions >= {live, just_ended} and not sessions & {expired, ended}


def test_a_retired_key_the_workers_still_publish_is_kept(make_app: Any, actions: Actions) -> None:
    # Workers cache their keys for an hour: one of them may sign with a retired key that long
    # after its retirement, and publishes it until those tokens have expired.
    app = make_app(key_cache_seconds=3600)
    settings = app.extensions["tokenserver.settings"]
    ttl = timedelta(seconds=settings.access_token_ttl)
    with time_machine.travel(NOW, tick=False):
        made = Store(app, actions)
        still_published = made.retired_key(NOW - DAY - ttl - timedelta(minutes=30))
        unpublished = made.retired_key(NOW - DAY - ttl - 2 * HOUR)
        try:
            output = purge(app.test_cli_runner())
            assert "deleted 1 retired signing key and" in output
            assert still_published in made.key_ids()
            assert unpublished not in made.key_ids()
        finally:
            with app.app_context():
                db.session.execute(delete(SigningKey).where(SigningKey.kid.in_(made.kids)))
                db.session.commit()


def _purge_statements(app: Flask, table: str) -> list[tuple[str, Any]]:
    """The DELETEs `tokens purge` runs against `table`, as sent, with their parameters."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM " + table.upper()):
            seen.append((statement, params))

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        purge(app.test_cli_runner())
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return seen


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


def test_each_browser_session_batch_finds_its_rows_through_indexes(app: Flask) -> None:
    statements = _purge_statements(app, "browser_sessions")
    assert statements  # at least the batch that finds nothing left
    with app.app_context(), db.engine.connect() as conn:
        for sql, params in statements:
            if conn.dialect.name == "sqlite":
                plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params).all()
                details = [str(row[-1]) for row in plan]
                # SEARCH reads what an index points at; SCAN reads the whole table (or index).
                assert not [d for d in details if d.startswith("SCAN")], details
                used = " | ".join(details)
            else:
                # Whatever the table's size: a plan with no usable index scans it all anyway.
                conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
                plan = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql, params).scalar()
                nodes = list(_plan_nodes(plan[0]["Plan"]))
                conn.rollback()
                reads = [n for n in nodes if "Scan" in n["Node Type"] and "Relation Name" in n]
                # An index scan with no Index Cond walks the whole index; a bitmap heap scan
                # reads only what its Bitmap Index Scans (each with an Index Cond) found.
                assert all(
                    n["Node Type"] == "Bitmap Heap Scan"
                    or (n["Node Type"] in ("Index Scan", "Index Only Scan") and "Index Cond" in n)
                    for n in reads
                ), [(n["Node Type"], n.get("Index Name")) for n in reads]
                used = " | ".join(str(n.get("Index Name")) for n in nodes)
            assert "ix_browser_sessions_ended_at" in used
            assert "ix_browser_sessions_expires_at" in used


def test_one_of_a_kind_is_named_in_the_singular(store: Store, runner: FlaskCliRunner) -> None:
    family = store.family(NOW - 40 * DAY)
    store.record(family, NOW - 3 * DAY)
    output = purge(runner)
    assert output.startswith("purged 1 token record and 1 token family; ")
    assert "0 authorization codes" in output  # none: plural
