"""The audit trail: one JSON line per security action, with who, what, client, IP, request id."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskCliRunner

from tokenserver import audit
from tokenserver.guard import FREE_ATTEMPTS
from tokenserver.observability import JSONFormatter

from .conftest import PASSWORD, Actions

WRONG = "not the password at all"
IP = "192.0.2.9"


def _token(actions: Actions, oauth_client: Any, username: str, password: str, **kw: Any) -> Any:
    data = {"grant_type": "password", "username": username, "password": password}
    return actions.client.post(
        "/oauth/token",
        data=data,
        auth=oauth_client.auth,
        environ_base={"REMOTE_ADDR": IP},
        **kw,
    )


def test_login_success_names_user_client_ip_and_request(actions: Actions, events: Any) -> None:
    user = actions.user("alice")
    oauth_client = actions.oauth_client()
    response = _token(actions, oauth_client, "alice", PASSWORD, headers={"X-Request-ID": "req-1"})
    assert response.status_code == 200
    [event] = events("login.success")
    assert event["username"] == "alice"
    assert event["user_id"] == user["id"]
    assert event["client_id"] == oauth_client.client_id
    assert event["ip"] == IP
    assert event["request_id"] == "req-1"
    assert event["logger"] == "tokenserver.audit"


@pytest.mark.parametrize(
    ("username", "password", "reason", "logged_name"),
    [
        ("alice", WRONG, "wrong_password", "alice"),
        # A name that matches no user may be a password typed into the username field.
        ("nobody", WRONG, "unknown_user", None),
        ("my secret pass phrase", WRONG, "unknown_user", None),
        ("MySecretPass-2024", WRONG, "unknown_user", None),
    ],
)
def test_login_failure_says_why(
    actions: Actions,
    events: Any,
    username: str,
    password: str,
    reason: str,
    logged_name: str | None,
) -> None:
    actions.user("alice")
    oauth_client = actions.oauth_client()
    assert _token(actions, oauth_client, username, password).status_code == 400
    [event] = events("login.failure")
    assert event["reason"] == reason
    assert event["username"] == logged_name
    if logged_name is None:
        assert username not in json.dumps(event)
        assert len(event["username_digest"]) == 32
    assert event["client_id"] == oauth_client.client_id
    assert event["ip"] == IP
    assert event["request_id"]


def test_unknown_names_are_logged_as_one_keyed_digest(actions: Actions, events: Any) -> None:
    oauth_client = actions.oauth_client()
    for name in ("MySecretPass-2024", "mysecretpass-2024", "other-name"):
        _token(actions, oauth_client, name, WRONG)
    first, again, other = (e["username_digest"] for e in events("login.failure"))
    assert first == again != other
    # Keyed: not the plain SHA-256 of the name, which a guesser could compute.
    assert first not in hashlib.sha256(b"mysecretpass-2024").hexdigest()


def test_disabled_user_login_is_a_failure(
    actions: Actions, runner: FlaskCliRunner, events: Any
) -> None:
    actions.user("alice")
    oauth_client = actions.oauth_client()
    assert runner.invoke(args=["users", "disable", "alice"]).exit_code == 0
    assert _token(actions, oauth_client, "alice", PASSWORD).status_code == 400
    [event] = events("login.failure")
    assert event["reason"] == "disabled"
    assert event["user_id"] is not None


def test_throttled_login_is_a_failure(actions: Actions, events: Any) -> None:
    oauth_client = actions.oauth_client()
    with time_machine.travel(datetime.now(UTC), tick=False):
        for _ in range(FREE_ATTEMPTS):
            _token(actions, oauth_client, "nobody", WRONG)
        assert _token(actions, oauth_client, "nobody", WRONG).status_code == 429
    assert [e["reason"] for e in events("login.failure")][-1] == "throttled"


def test_signup_is_audited_with_the_ip(actions: Actions, events: Any) -> None:
    response = actions.client.post(
        "/users",
        json={"username": "alice", "password": PASSWORD},
        environ_base={"REMOTE_ADDR": IP},
    )
    [event] = events("user.created")
    assert event["user_id"] == response.json["id"]
    assert event["username"] == "alice"
    assert event["ip"] == IP


def test_administration_is_audited_with_the_operator(
    actions: Actions, runner: FlaskCliRunner, events: Any
) -> None:
    actions.user("alice")
    for args in (["users", "disable", "alice"], ["users", "enable", "alice"], ["keys", "rotate"]):
        assert runner.invoke(args=args).exit_code == 0, args
    rotated = events("key.rotated")[0]["kid"]
    assert runner.invoke(args=["keys", "revoke", rotated]).exit_code == 0
    made = runner.invoke(args=["clients", "create", "svc", "--json"])
    client_id = json.loads(made.stdout)["client_id"]
    assert runner.invoke(args=["clients", "delete", client_id]).exit_code == 0
    assert runner.invoke(args=["users", "create", "bob", "--password-stdin"], input=PASSWORD + "\n")
    assert [e["username"] for e in events("user.disabled")] == ["alice"]
    assert [e["username"] for e in events("user.enabled")] == ["alice"]
    assert len(events("key.rotated")) == 1
    assert [e["kid"] for e in events("key.revoked")] == [rotated]
    created = [e for e in events("client.created") if e["client_id"] == client_id]
    assert created[0]["name"] == "svc"
    assert created[0]["public"] is False
    assert [e["client_id"] for e in events("client.deleted")] == [client_id]
    assert [e["username"] for e in events("user.created")][-1] == "bob"
    administrative = {
        "user.disabled",
        "user.enabled",
        "key.rotated",
        "key.revoked",
        "client.deleted",
    }
    for event in events():
        if event["event"] in administrative:
            assert event["actor"].startswith("cli:")
            assert "ip" not in event


def test_revocation_is_audited(actions: Actions, events: Any) -> None:
    tokens = actions.login("alice")
    response = actions.client.post(
        "/oauth/revoke",
        data={"token": tokens["refresh_token"]},
        auth=tokens["client"].auth,
        environ_base={"REMOTE_ADDR": IP},
    )
    assert response.status_code == 200
    [event] = events("token.revoked")
    assert event["client_id"] == tokens["client"].client_id
    assert event["kind"] == "refresh"
    assert event["family_id"]
    assert event["ip"] == IP


def test_token_issue_is_audited(actions: Actions, events: Any) -> None:
    tokens = actions.login("alice")
    [event] = events("token.issued")
    assert event["grant_type"] == "password"
    assert event["client_id"] == tokens["client"].client_id
    assert event["username"] == "alice"
    assert event["family_id"]
    assert event["jti"]


def test_refresh_is_audited(actions: Actions, events: Any) -> None:
    tokens = actions.login("alice")
    response = actions.client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=tokens["client"].auth,
    )
    assert response.status_code == 200
    [event] = events("token.refreshed")
    assert event["client_id"] == tokens["client"].client_id
    assert event["family_id"]
    assert event["jti"]


def test_refresh_token_reuse_is_audited(actions: Actions, events: Any) -> None:
    tokens = actions.login("alice")
    body = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    auth = tokens["client"].auth
    assert actions.client.post("/oauth/token", data=body, auth=auth).status_code == 200
    assert actions.client.post("/oauth/token", data=body, auth=auth).status_code == 400
    [event] = events("token.reuse_detected")
    assert event["client_id"] == tokens["client"].client_id
    assert event["family_id"]


def test_no_secret_ever_reaches_the_logs(
    app: Flask, actions: Actions, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # everything the service logs in production, and more
    oauth_client = actions.oauth_client()
    tokens = actions.login("alice")
    refreshed = actions.client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=tokens["client"].auth,
    ).json
    actions.client.post(  # a replay: reuse detection
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=tokens["client"].auth,
    )
    actions.client.post(
        "/oauth/revoke", data={"token": refreshed["access_token"]}, auth=tokens["client"].auth
    )
    _token(actions, oauth_client, "alice", "a wrong guess 123")
    _token(actions, oauth_client, PASSWORD, PASSWORD)  # the password in the username field
    actions.client.post(
        "/oauth/introspect", data={"token": tokens["access_token"]}, auth=oauth_client.auth
    )
    secrets = [
        PASSWORD,
        "a wrong guess 123",
        oauth_client.secret,
        tokens["client"].secret,
        tokens["access_token"],
        tokens["refresh_token"],
        refreshed["access_token"],
        refreshed["refresh_token"],
    ]
    formatter = JSONFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    assert any('"event": "login.success"' in line for line in lines)
    for secret in secrets:
        assert secret
        assert not [line for line in lines if secret in line]


def test_event_refuses_fields_that_could_hold_secrets() -> None:
    for field in ("password", "client_secret", "token", "refresh_token", "access_token"):
        with pytest.raises(ValueError, match="secrets"):
            audit.event("oops", **{field: "x"})
