"""Migrations: empty database to head on this backend, and the result equals the models."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask
from flask_migrate import downgrade, upgrade
from sqlalchemy import Connection, create_engine, insert, inspect, select, text

from tokenserver import MIGRATIONS, create_app
from tokenserver.browser_models import AuthorizationCode, Consent
from tokenserver.config import Settings
from tokenserver.extensions import db
from tokenserver.models import TokenFamily
from tokenserver.ops import SCHEMA_HEAD

from .conftest import FAST_HASHING, ROOT, postgres_database


def test_migrated_schema_matches_the_models(app: Flask) -> None:
    with app.app_context(), db.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "render_as_batch": True}
        )
        diff = compare_metadata(context, db.metadata)
    assert diff == []


def _upgrade_from_empty(url: str) -> set[str]:
    app = create_app(Settings(database_url=url, **FAST_HASHING), migrations=True)
    with app.app_context():
        upgrade()
        upgrade()  # a second run at head is a no-op, not an error
        tables = set(inspect(db.engine).get_table_names())
        db.engine.dispose()
    return tables


def test_upgrade_takes_an_empty_database_to_head(base_settings: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = base_settings.database_url
    if url.startswith("postgresql"):
        gen = postgres_database(url)
        url = next(gen)
    else:
        gen = None
        url = f"sqlite:///{tmp_path / 'empty.db'}"
    try:
        tables = _upgrade_from_empty(url)
        assert {"users", "clients", "signing_keys", "token_records", "junk_items"} <= tables
        engine = create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
        engine.dispose()
    finally:
        if gen is not None:
            next(gen, None)


def test_readyz_expects_the_newest_migration() -> None:
    # /readyz compares with a constant (serving never loads alembic): a new migration must
    # update it, or every node would report itself unready after the upgrade.
    assert ScriptDirectory(MIGRATIONS).get_heads() == [SCHEMA_HEAD]


def test_tokenserver_db_upgrade_takes_an_empty_database_to_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "tokenserver", "db", "upgrade"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "TOKENSERVER_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == SCHEMA_HEAD
    engine.dispose()


# What every migrator locks first (migrations/env.py): PostgreSQL's advisory lock.
_MIGRATORS_LOCK = 0x746F6B656E737276


def _blocked_flocks(path: Path) -> int:
    """How many processes wait for the flock(2) on the file at `path` (Linux /proc/locks)."""
    inode = path.stat().st_ino
    blocked = [line.split() for line in Path("/proc/locks").read_text().splitlines()]
    return sum(1 for f in blocked if f[1] == "->" and f[6].endswith(f":{inode}"))


def _lock_waiters(conn: Connection) -> int:
    """How many PostgreSQL backends of this database wait for a lock."""
    conn.execute(text("SELECT pg_stat_clear_snapshot()"))  # read pg_stat_activity anew
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    return int(conn.execute(text(query + " AND wait_event_type = 'Lock'")).scalar() or 0)


def test_two_upgrades_at_once_run_one_after_the_other(
    base_settings: Settings, tmp_path: Path
) -> None:
    # Several nodes may run `db upgrade` at once on release: the second waits for the first,
    # then finds the schema at head, rather than creating the same tables again and failing.
    url = base_settings.database_url
    gen = postgres_database(url) if url.startswith("postgresql") else None
    url = next(gen) if gen is not None else f"sqlite:///{tmp_path / 'release.db'}"
    engine = create_engine(url)
    try:
        with engine.connect() as holder:
            # Hold what the migrators take, so that both are seen waiting for it.
            if gen is not None:
                holder.execute(text(f"SELECT pg_advisory_lock({_MIGRATORS_LOCK})"))
                waiting = lambda: _lock_waiters(holder)  # noqa: E731
            else:
                lock = Path(f"{tmp_path / 'release.db'}-writers.lock")
                held = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(held, fcntl.LOCK_EX)
                waiting = lambda: _blocked_flocks(lock)  # noqa: E731
            upgrades = [
                subprocess.Popen(
                    [sys.executable, "-m", "tokenserver", "db", "upgrade"],
                    cwd=ROOT,
                    env={"PATH": "/usr/bin:/bin", "TOKENSERVER_DATABASE_URL": url},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                for _ in range(2)
            ]
            deadline = time.monotonic() + 60
            while waiting() < 2:
                assert all(up.poll() is None for up in upgrades), "one did not wait"
                assert time.monotonic() < deadline, "they never both waited"
                time.sleep(0.01)  # polling for a state that will come, not waiting out a race
            if gen is not None:
                holder.execute(text(f"SELECT pg_advisory_unlock({_MIGRATORS_LOCK})"))
            else:
                os.close(held)
            outputs = [up.communicate(timeout=120)[0] for up in upgrades]
            assert [up.returncode for up in upgrades] == [0, 0], outputs
            version = holder.execute(text("SELECT version_num FROM alembic_version")).scalars()
            assert list(version) == [SCHEMA_HEAD]
    finally:
        engine.dispose()
        if gen is not None:
            next(gen, None)


def test_upgrade_leaves_one_current_key_where_the_old_schema_had_two(
    base_settings: Settings, tmp_path: Path
) -> None:
    url = base_settings.database_url
    gen = None
    if url.startswith("postgresql"):
        gen = postgres_database(url)
        url = next(gen)
    else:
        url = f"sqlite:///{tmp_path / 'keys.db'}"
    try:
        app = create_app(Settings(database_url=url, **FAST_HASHING), migrations=True)
        with app.app_context():
            upgrade(revision="b0b7d1a44332")
            with db.engine.begin() as conn:
                for kid, created, retired in (
                    ("old", "2026-01-01", "2026-02-01"),
                    ("twin-a", "2026-02-01", None),
                    ("twin-b", "2026-02-02", None),  # two workers raced on the old schema
                ):
                    conn.execute(
                        text(
                            "INSERT INTO signing_keys (kid, private_pem, public_jwk, created_at,"
                            " retired_at) VALUES (:kid, 'pem', '{}', :created, :retired)"
                        ),
                        {"kid": kid, "created": created, "retired": retired},
                    )
            upgrade()
            with db.engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT kid, state, private_key FROM signing_keys ORDER BY kid")
                ).all()
            db.engine.dispose()
        assert [(kid, state) for kid, state, _ in rows] == [
            ("old", "retired"),
            ("twin-a", "retired"),
            ("twin-b", "current"),
        ]
        assert {pem for _, _, pem in rows} == {"pem"}
    finally:
        if gen is not None:
            next(gen, None)


@contextmanager
def _scratch_database(base_settings: Settings, tmp_path: Path) -> Iterator[Flask]:
    """An app on an empty database of the backend under test, migrations left to the test."""
    url = base_settings.database_url
    gen = None
    if url.startswith("postgresql"):
        gen = postgres_database(url)
        url = next(gen)
    else:
        url = f"sqlite:///{tmp_path / 'scratch.db'}"
    try:
        app = create_app(Settings(database_url=url, **FAST_HASHING), migrations=True)
        with app.app_context():
            yield app
            db.engine.dispose()
    finally:
        if gen is not None:
            next(gen, None)


_USER = (
    "INSERT INTO users (id, username, username_key, password_hash, created_at)"
    " VALUES (1, 'alice', 'alice', 'x', '2026-01-01')"
)
_CLIENT = (
    "INSERT INTO clients (id, client_id, name, grant_types, scope, created_at)"
    " VALUES (1, 'app', 'App', 'authorization_code', 'openid', '2026-01-01')"
)


def test_upgrade_gives_logins_the_sign_in_of_their_stored_code(
    base_settings: Settings, tmp_path: Path
) -> None:
    with _scratch_database(base_settings, tmp_path):
        upgrade(revision="6b1f0e9c4d27")
        with db.engine.begin() as conn:
            conn.execute(text(_USER))
            conn.execute(text(_CLIENT))
            signed_in = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
            exchanged = signed_in + timedelta(minutes=30)
            for family in ("f-code", "f-purged"):
                conn.execute(
                    insert(TokenFamily.__table__).values(
                        id=family, client_id="app", user_id=1, created_at=exchanged
                    )
                )
            code = {"code_challenge": "c", "code_challenge_method": "S256", "scope": "openid"}
            conn.execute(
                insert(AuthorizationCode.__table__).values(
                    code_hash="h",
                    client_id="app",
                    user_id=1,
                    auth_time=signed_in,
                    session_id="s1",
                    created_at=exchanged,
                    expires_at=exchanged,
                    used_at=exchanged,
                    family_id="f-code",
                    **code,
                )
            )
        upgrade()
        with db.engine.connect() as conn:
            rows = conn.execute(
                select(TokenFamily.id, TokenFamily.auth_time, TokenFamily.session_id).order_by(
                    TokenFamily.id
                )
            ).all()
    assert [(family, sid) for family, _, sid in rows] == [("f-code", "s1"), ("f-purged", None)]
    assert rows[0].auth_time == signed_in
    assert rows[1].auth_time is None  # unknown: its id_tokens will say nothing rather than now


def test_upgrade_keeps_consents_as_given_for_our_own_routes(
    base_settings: Settings, tmp_path: Path
) -> None:
    with _scratch_database(base_settings, tmp_path):
        upgrade(revision="b6e2f4a9c1d7")
        with db.engine.begin() as conn:
            conn.execute(text(_USER))
            conn.execute(text(_CLIENT))
            conn.execute(
                text(
                    "INSERT INTO consents (user_id, client_id, scope, created_at)"
                    " VALUES (1, 'app', 'openid', '2026-01-01')"
                )
            )
        upgrade()
        with db.engine.begin() as conn:
            # One answer per scope set and resource set: the same scopes at another resource
            # are another row.
            conn.execute(
                insert(Consent.__table__).values(
                    user_id=1,
                    client_id="app",
                    scope="openid",
                    resources="https://api.example",
                    resources_digest=sha256(b"https://api.example").hexdigest(),
                )
            )
            rows = conn.execute(
                select(Consent.scope, Consent.resources, Consent.resources_digest).order_by(
                    Consent.resources
                )
            ).all()
    assert [(scope, resources) for scope, resources, _ in rows] == [
        ("openid", ""),
        ("openid", "https://api.example"),
    ]
    assert rows[0].resources_digest == sha256(b"").hexdigest()


def _fill_every_table(conn: Connection) -> None:
    """One row or two in every table of the head schema, each pointing where it may."""
    now = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    later = now + timedelta(days=1)
    tables = db.metadata.tables
    no_resources = sha256(b"").hexdigest()
    rows: dict[str, list[dict[str, object]]] = {
        "users": [{"id": 1, "username": "alice", "username_key": "alice", "password_hash": "x"}],
        "clients": [
            {"id": 1, "client_id": "app", "name": "App", "grant_types": "code", "scope": "openid"},
            {"id": 2, "client_id": "api", "name": "API", "grant_types": "x", "scope": "openid"},
        ],
        "signing_keys": [
            {"kid": "k1", "private_key": "pem", "public_jwk": "{}", "state": "current"}
        ],
        "junk_items": [{"id": 1, "owner_id": 1, "name": "junk"}],
        "login_throttles": [
            {
                "key": "t",
                "attempts": 1,
                "last_attempt_at": now,
                "next_attempt_at": now,
                "day_started_at": now,
                "day_attempts": 1,
            }
        ],
        "spent_jtis": [{"key": "s", "expires_at": later}],
        "initial_access_tokens": [{"token_hash": "i", "expires_at": later}],
        "token_families": [
            {"id": "fam", "client_id": "app", "user_id": 1, "auth_time": now, "session_id": "s1"}
        ],
        "token_records": [
            {
                "id": 1,
                "family_id": "fam",
                "kind": "access",
                "jti": "j1",
                "kid": "k1",
                "scope": "openid",
                "issued_at": now,
                "expires_at": later,
            },
            {
                "id": 2,
                "family_id": "fam",
                "kind": "refresh",
                "token_hash": "r1",
                "scope": "openid",
                "issued_at": now,
                "expires_at": later,
            },
            {
                "id": 3,
                "family_id": "fam",
                "kind": "access",
                "jti": "j2",
                "kid": "k1",
                "scope": "openid",
                "issued_at": now,
                "expires_at": later,
                "client_id": "api",
                "audience": "https://api.example",
                "parent_jti": "j1",
            },
        ],
        "authorization_codes": [
            {
                "code_hash": "c",
                "client_id": "app",
                "user_id": 1,
                "sent_to": "https://app.example/cb",
                "scope": "openid",
                "code_challenge": "x",
                "code_challenge_method": "S256",
                "auth_time": now,
                "session_id": "s1",
                "expires_at": now,
                "used_at": now,
                "family_id": "fam",
            }
        ],
        "consents": [
            {"user_id": 1, "client_id": "app", "scope": "openid", "resources_digest": no_resources},
            {
                "user_id": 1,
                "client_id": "app",
                "scope": "openid",
                "resources": "https://api.example",
                "resources_digest": sha256(b"https://api.example").hexdigest(),
            },
        ],
        "browser_sessions": [
            {"id": "s1", "secret_hash": "h", "user_id": 1, "auth_time": now, "expires_at": later}
        ],
        "device_authorizations": [
            {
                "device_code_hash": "d",
                "user_code_hash": "u",
                "client_id": "app",
                "scope": "openid",
                "interval": 5,
                "status": "pending",
                "expires_at": later,
            }
        ],
        "pushed_authorizations": [
            {
                "request_uri_hash": "p",
                "client_id": "app",
                "parameters": "{}",
                "expires_at": later,
                "used_at": now,
                "session_id": "s1",
            }
        ],
    }
    assert set(rows) == set(tables), "a new table needs its rows here"
    for table in db.metadata.sorted_tables:
        for row in rows[table.name]:  # one by one: rows of a table do not all name the same columns
            conn.execute(insert(table).values(row))


def _row_counts(conn: Connection) -> dict[str, int]:
    """How many rows each of the application's tables holds now."""
    names = set(inspect(conn).get_table_names()) - {"alembic_version"}
    return {name: conn.execute(text(f"SELECT count(*) FROM {name}")).scalar_one() for name in names}


def test_downgrades_and_upgrades_keep_every_row(base_settings: Settings, tmp_path: Path) -> None:
    # A table rebuilt by a batch operation on SQLite is dropped and copied back: were foreign
    # keys enforced, the drop of a parent (clients, users, token_families) would cascade and
    # empty its children for good.
    revisions = [script.revision for script in ScriptDirectory(MIGRATIONS).walk_revisions()]
    with _scratch_database(base_settings, tmp_path):
        upgrade()
        with db.engine.begin() as conn:
            _fill_every_table(conn)
            expected = _row_counts(conn)
        for revision in revisions[1:]:  # down one step at a time, to the initial schema
            downgrade(revision=revision)
            if revision == "b6e2f4a9c1d7":
                expected["consents"] = 1  # a consent given only at a resource is forgotten
            with db.engine.connect() as conn:
                counts = _row_counts(conn)
            assert counts == {name: expected[name] for name in counts}, f"down to {revision}"
        upgrade()
        with db.engine.connect() as conn:
            again = _row_counts(conn)
    assert {name: again[name] for name in counts} == counts  # the tables kept all the way
