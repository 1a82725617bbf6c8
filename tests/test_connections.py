"""Every request gives back the database connections it took, whichever path it read through."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from tokenserver.extensions import db

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
