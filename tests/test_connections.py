"""Every request gives back the database connections it took, whichever path it read through."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from psycopg.pq import TransactionStatus
from sqlalchemy import create_engine, make_url, text

from tokenserver.extensions import close_reader, db, reader
from tokenserver.store import fleeting, junk, replay, single_write, users

from .conftest import PASSWORD, Actions, migrated_database


def _checked_out(app: Flask) -> int:
    with app.app_context():
        return int(db.engine.pool.checkedout())  # type: ignore[attr-defined]


def test_bearer_reads_and_writes_return_their_connections(
    app: Flask, client: FlaskClient, actions: Actions
) -> None:
    login = actions.login()
    bearer = actions.bearer(login["access_token"])
    resource_server = actions.oauth_client("rs", grants=("client_credentials",), introspect=True)
    assert _checked_out(app) == 0
    calls = [
        client.get("/users/me", headers=bearer),  # the request's reader only
        client.post("/junk", json={"name": "a"}, headers=bearer),  # reader, then the session
        client.get("/junk", headers=bearer),
        client.post(
            "/oauth/introspect", data={"token": login["access_token"]}, auth=resource_server.auth
        ),
        client.get("/users/me", headers=actions.bearer("not-a-token")),
    ]
    assert [c.status_code for c in calls] == [200, 201, 200, 200, 401]
    assert calls[3].json["active"] is True
    assert _checked_out(app) == 0


def test_reads_on_postgresql_open_no_transaction(
    app: Flask, client: FlaskClient, actions: Actions, database_url: str
) -> None:
    # A read needs no BEGIN and ROLLBACK round trips around it; the connection goes back to
    # the pool as it came, so the writes that take it next still run in a transaction.
    _postgresql_only(database_url)
    login = actions.login()
    with app.test_request_context():
        raw = reader().connection.dbapi_connection
        assert raw is not None
        assert users.by_name("alice") is not None
        assert raw.info.transaction_status == TransactionStatus.IDLE
        close_reader()
    assert client.get("/users/me", headers=actions.bearer(login["access_token"])).status_code == 200
    _every_idle_connection_is_transactional(app)


def test_a_fleeting_write_on_postgresql_commits_alone(app: Flask, database_url: str) -> None:
    # A spent JWT id or a guard's count is one statement: no BEGIN and COMMIT round trips.
    _postgresql_only(database_url)
    with app.test_request_context():
        with fleeting() as conn:
            expires_at = datetime.now(UTC) + timedelta(minutes=1)
            assert replay._insert(conn, "ab" * 32, expires_at)
            raw = conn.connection.dbapi_connection
            assert raw is not None and raw.info.transaction_status == TransactionStatus.IDLE
        with fleeting() as conn:
            assert not replay._insert(conn, "ab" * 32, expires_at)  # committed: spent once
    _every_idle_connection_is_transactional(app)


def test_a_single_write_on_postgresql_commits_on_the_requests_connection(
    app: Flask, actions: Actions, database_url: str
) -> None:
    # One statement, one round trip: no connection, ping, BEGIN or COMMIT of its own, and
    # committed when the store function returns, as every write is.
    _postgresql_only(database_url)
    alice = actions.user("alice")
    with app.test_request_context():
        request_connection = reader()
        with single_write() as conn:
            assert conn is request_connection
        item = junk.add(alice["id"], "lamp", "")
        raw = request_connection.connection.dbapi_connection
        assert raw is not None and raw.info.transaction_status == TransactionStatus.IDLE
        with db.engine.connect() as other:  # another session sees it at once
            assert (
                other.execute(
                    text("SELECT name FROM junk_items WHERE id = :id"), {"id": item.id}
                ).scalar()
                == "lamp"
            )
    _every_idle_connection_is_transactional(app)


def _postgresql_only(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite starts no transaction for a read, and commits fleeting writes apart")


def _every_idle_connection_is_transactional(app: Flask) -> None:
    with app.app_context():
        idle = db.engine.pool.checkedin()  # type: ignore[attr-defined]
        assert idle >= 1
        pooled = [db.engine.connect() for _ in range(idle)]  # every idle one, none new
        try:
            assert all(not conn.connection.dbapi_connection.autocommit for conn in pooled)
        finally:
            for conn in pooled:
                conn.close()


def _sign_up(client: FlaskClient, username: str) -> Any:
    return client.post("/users", json={"username": username, "password": PASSWORD})


def _assert_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.json["error"] == "service_unavailable"


@contextlib.contextmanager
def _unwritable(path: Path) -> Iterator[None]:
    """No process may open `path` for writing while the block runs: its mode for others,
    the immutable attribute for root (whom modes do not stop); skipped where neither works."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"chattr +i is not available here: {made.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_connections_sqlite_opened_read_only_are_replaced_once_it_is_writable(
    make_app: Any, tmp_path: Path
) -> None:
    # SQLite opens a file it may not write read-only, and the connection stays read-only: a
    # worker that (re)connected while the file was read-only refused every write long after.
    path = tmp_path / "read-only.db"
    url = next(migrated_database("sqlite", path))
    app = make_app(database_url=url)
    client = app.test_client()
    actions = Actions(app, client)
    assert _sign_up(client, "before").status_code == 201
    oauth_client = actions.oauth_client()
    with _unwritable(path):
        with app.app_context():
            db.engine.dispose()  # as a new worker's pool: its connections open now
        _assert_unavailable(_sign_up(client, "during"))
        # The password guard counts on a connection of its own (store.fleeting).
        _assert_unavailable(actions.token(oauth_client, "before"))
        _assert_unavailable(_sign_up(client, "during"))
    assert _sign_up(client, "after").status_code == 201
    assert actions.token(oauth_client, "before").status_code == 200


def test_sessions_begun_while_postgresql_was_read_only_are_replaced(
    make_app: Any, database_url: str, tmp_path: Path
) -> None:
    # A session started while the database was read-only (default_transaction_read_only, a
    # primary demoted to a standby) keeps it: the write answers 503, not a 500, and no pooled
    # session refuses writes once the database takes them again.
    _postgresql_only(database_url)
    made = migrated_database(database_url, tmp_path / "unused.db")
    url = next(made)
    name = make_url(url).database
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        app = make_app(database_url=url)
        client = app.test_client()
        assert _sign_up(client, "before").status_code == 201
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
        with app.app_context():
            db.engine.dispose()  # sessions begun from now on are read-only
        _assert_unavailable(_sign_up(client, "during"))
        with app.test_request_context():
            pooled = [db.engine.connect() for _ in range(3)]  # read-only sessions, pooled
            for conn in pooled:
                conn.close()
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" RESET default_transaction_read_only'))
        assert _sign_up(client, "after").status_code in (201, 503)  # meets a read-only one
        assert _sign_up(client, "after-too").status_code == 201
        assert _sign_up(client, "after-three").status_code == 201
        with app.app_context():
            db.engine.dispose()
    finally:
        admin.dispose()
        next(made, None)
