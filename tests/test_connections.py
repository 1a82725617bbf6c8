"""Every request gives back the database connections it took, whichever path it read through."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from psycopg.pq import TransactionStatus
from sqlalchemy import text

from tokenserver.extensions import close_reader, db, reader
from tokenserver.store import fleeting, junk, replay, single_write, users

from .conftest import Actions


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
