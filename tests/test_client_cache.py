"""Each worker keeps the clients it authenticates for a second; what that may and may not change.

Two apps on one database stand in for two workers: one deletes a client with the CLI while the
other still holds its copy. The copy's lifetime is set per test (0 or a minute), never slept on.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from sqlalchemy import func, select

from tokenserver.extensions import db
from tokenserver.models import TokenFamily
from tokenserver.oauth.server import current_server

from .conftest import PASSWORD, Actions, RegisteredClient


def _password_grant(app: Flask, oauth_client: RegisteredClient) -> Any:
    data = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    return app.test_client().post("/oauth/token", data=data, auth=oauth_client.auth)


def _families(app: Flask) -> int:
    with app.app_context():
        return int(db.session.scalar(select(func.count()).select_from(TokenFamily)) or 0)


def _delete_with_cli(app: Flask, client_id: str) -> None:
    result = app.test_cli_runner().invoke(args=["clients", "delete", client_id])
    assert result.exit_code == 0, result.output


def _ttl(app: Flask, seconds: float) -> None:
    with app.app_context():
        current_server().clients.ttl = seconds


def test_a_cached_client_is_not_read_again(app: Flask, actions: Actions) -> None:
    actions.user("alice")
    oauth_client = actions.oauth_client("app")
    _ttl(app, 60)
    assert _password_grant(app, oauth_client).status_code == 200
    with app.app_context():
        cached = current_server().clients.get(oauth_client.client_id)
        assert cached is not None
        # Detached: a commit in a later request cannot expire what other requests read.
        assert cached not in db.session
        assert current_server().clients.get(oauth_client.client_id) is cached


def test_the_cli_forgets_its_own_copy_at_once(app: Flask, actions: Actions) -> None:
    actions.user("alice")
    oauth_client = actions.oauth_client("app")
    _ttl(app, 60)
    assert _password_grant(app, oauth_client).status_code == 200
    _delete_with_cli(app, oauth_client.client_id)
    with app.app_context():
        assert current_server().clients.get(oauth_client.client_id) is None  # read afresh
    response = _password_grant(app, oauth_client)
    assert response.status_code == 401
    assert response.json["error"] == "invalid_client"


def test_a_rotated_secret_takes_effect_at_once(app: Flask, actions: Actions) -> None:
    actions.user("alice")
    oauth_client = actions.oauth_client("app")
    _ttl(app, 60)
    assert _password_grant(app, oauth_client).status_code == 200  # cached with the old secret
    rotated = app.test_cli_runner().invoke(
        args=["clients", "rotate-secret", oauth_client.client_id]
    )
    assert rotated.exit_code == 0, rotated.output
    assert _password_grant(app, oauth_client).status_code == 401
    secret = rotated.stdout.removeprefix("client_secret: ").strip()
    data = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    fresh = app.test_client().post("/oauth/token", data=data, auth=(oauth_client.client_id, secret))
    assert fresh.status_code == 200


def _register_over_http(app: Flask, scope: str) -> dict[str, Any]:
    """A client_credentials client registered over RFC 7591, as its registration response."""
    made = app.test_cli_runner().invoke(args=["clients", "registration-token"])
    assert made.exit_code == 0, made.output
    metadata = {"client_name": "sync", "grant_types": ["client_credentials"], "scope": scope}
    headers = {"Authorization": f"Bearer {made.stdout.strip()}"}
    response = app.test_client().post("/oauth/register", json=metadata, headers=headers)
    assert response.status_code == 201, response.json
    body: dict[str, Any] = response.json
    return body


def _manage(app: Flask, method: str, registered: dict[str, Any], **kw: Any) -> Any:
    """An RFC 7592 request about the registered client, with its registration access token."""
    path = "/oauth/register/" + registered["client_id"]
    headers = {"Authorization": f"Bearer {registered['registration_access_token']}"}
    return app.test_client().open(path, method=method, headers=headers, **kw)


def _client_credentials(app: Flask, registered: dict[str, Any], scope: str) -> Any:
    data = {"grant_type": "client_credentials", "scope": scope}
    auth = (registered["client_id"], registered["client_secret"])
    return app.test_client().post("/oauth/token", data=data, auth=auth)


def test_a_client_deleted_over_http_is_forgotten_at_once(app: Flask) -> None:
    registered = _register_over_http(app, "junk:read")
    _ttl(app, 60)
    assert _client_credentials(app, registered, "junk:read").status_code == 200
    assert _manage(app, "DELETE", registered).status_code == 204
    with app.app_context():
        assert current_server().clients.get(registered["client_id"]) is None  # read afresh
    response = _client_credentials(app, registered, "junk:read")
    assert response.status_code == 401
    assert response.json["error"] == "invalid_client"


def test_a_client_updated_over_http_is_read_afresh_at_once(app: Flask) -> None:
    registered = _register_over_http(app, "junk:read junk:write")
    _ttl(app, 60)
    assert _client_credentials(app, registered, "junk:write").status_code == 200
    update = {
        "client_id": registered["client_id"],
        "client_name": "sync",
        "grant_types": ["client_credentials"],
        "scope": "junk:read",
    }
    assert _manage(app, "PUT", registered, json=update).status_code == 200
    narrowed = _client_credentials(app, registered, "junk:write")  # not the cached scope
    assert narrowed.status_code == 400
    assert narrowed.json["error"] == "invalid_scope"
    assert _client_credentials(app, registered, "junk:read").status_code == 200


def test_another_workers_stale_copy_issues_nothing_and_answers_401(
    make_app: Any, app: Flask, actions: Actions
) -> None:
    """Deleted elsewhere while cached here: the grant fails cleanly, nothing half-written."""
    actions.user("alice")
    oauth_client = actions.oauth_client("app")
    worker = make_app()
    _ttl(worker, 60)
    assert _password_grant(worker, oauth_client).status_code == 200
    assert _families(app) == 1
    _delete_with_cli(app, oauth_client.client_id)  # the tokens die with the client
    assert _families(app) == 0
    response = _password_grant(worker, oauth_client)  # its copy still says the client exists
    assert response.status_code == 401, response.json
    assert response.json["error"] == "invalid_client"
    assert _families(app) == 0


def test_a_stale_copy_expires(make_app: Any, app: Flask, actions: Actions) -> None:
    actions.user("alice")
    oauth_client = actions.oauth_client("app")
    worker = make_app()
    _ttl(worker, 0)  # its copies are stale at once, as if the second had always passed
    assert _password_grant(worker, oauth_client).status_code == 200
    _delete_with_cli(app, oauth_client.client_id)
    with worker.app_context():
        assert current_server().clients.get(oauth_client.client_id) is None  # read afresh
    response = _password_grant(worker, oauth_client)
    assert response.status_code == 401
    assert response.json["error"] == "invalid_client"


def test_a_wrong_secret_fails_even_for_a_cached_client(app: Flask, actions: Actions) -> None:
    actions.user("alice")
    oauth_client = actions.oauth_client("app")
    _ttl(app, 60)
    assert _password_grant(app, oauth_client).status_code == 200
    forged = RegisteredClient(oauth_client.client_id, "not-the-secret")
    response = _password_grant(app, forged)
    assert response.status_code == 401
    assert response.json["error"] == "invalid_client"


def test_unknown_ids_are_not_kept(app: Flask) -> None:
    with app.app_context():
        clients = current_server().clients
        for n in range(clients.size * 2):
            assert clients.get(f"no-such-client-{n}") is None
        assert not clients._entries


def test_the_cache_is_bounded(app: Flask, actions: Actions) -> None:
    made = [actions.oauth_client(f"app{n}") for n in range(3)]
    with app.app_context():
        clients = current_server().clients
        clients.size = 2
        for oauth_client in made:
            assert clients.get(oauth_client.client_id) is not None
        assert len(clients._entries) <= 2
