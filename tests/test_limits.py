"""Per-IP rate limits: which requests count, the JSON 429, settings, Redis, trusted proxies."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis
import requests
from flask import Flask, request
from flask.testing import FlaskClient

from tokenserver import accounts
from tokenserver.config import ConfigError, Settings
from tokenserver.keys import current_keyring
from tokenserver.limits import RULES, limiter

from .conftest import PASSWORD, REDIS_URL, Actions, RegisteredClient
from .helpers import Flow, HeldRequest

WRONG = "not the password at all"
OTHER_IP = {"REMOTE_ADDR": "198.51.100.7"}


def _limited(make_app: Any, **changes: Any) -> Flask:
    app: Flask = make_app(ratelimit_enabled=True, **changes)
    return app


def _assert_too_many(response: Any) -> None:
    assert response.status_code == 429
    assert response.is_json
    assert set(response.json) == {"error", "error_description"}
    assert response.json["error"] == "too_many_requests"
    assert 1 <= int(response.headers["Retry-After"]) <= 3600


def _signup(client: FlaskClient, name: str, **kwargs: Any) -> Any:
    return client.post("/users", json={"username": name, "password": PASSWORD}, **kwargs)


def test_defaults_are_documented_values() -> None:
    settings = Settings.from_env({})
    assert settings.ratelimit_signup == "10/hour"
    assert settings.ratelimit_token_failures == "20/minute;200/hour"
    assert settings.ratelimit_default == "120/minute"
    assert settings.ratelimit_key_prefix == "tokenserver"
    assert settings.trusted_proxies == 0


def test_limits_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "TOKENSERVER_RATELIMIT_SIGNUP": "5 per hour",
            "TOKENSERVER_RATELIMIT_TOKEN_FAILURES": "3/minute;30/day",
            "TOKENSERVER_RATELIMIT_DEFAULT": "1000/minute",
            "TOKENSERVER_RATELIMIT_KEY_PREFIX": "auth-eu.1",
        }
    )
    assert settings.ratelimit_signup == "5 per hour"
    assert settings.ratelimit_token_failures == "3/minute;30/day"
    assert settings.ratelimit_default == "1000/minute"
    assert settings.ratelimit_key_prefix == "auth-eu.1"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TOKENSERVER_RATELIMIT_SIGNUP", "lots"),
        ("TOKENSERVER_RATELIMIT_SIGNUP", "0/minute"),
        ("TOKENSERVER_RATELIMIT_TOKEN_FAILURES", "10/fortnight"),
        ("TOKENSERVER_RATELIMIT_TOKEN_FAILURES", "5/minute;x"),
        ("TOKENSERVER_RATELIMIT_DEFAULT", "-1/minute"),
        ("TOKENSERVER_RATELIMIT_KEY_PREFIX", "has space"),
        ("TOKENSERVER_RATELIMIT_KEY_PREFIX", "x" * 65),
        ("TOKENSERVER_TRUSTED_PROXIES", "-1"),
    ],
)
def test_bad_limit_setting_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env({name: value})
    assert name in str(excinfo.value)


def test_signups_are_limited_per_ip(make_app: Any) -> None:
    client = _limited(make_app, ratelimit_signup="3/hour").test_client()
    assert _signup(client, "user1").status_code == 201
    assert _signup(client, "user1").status_code == 409  # conflicts count: no fast probing
    assert _signup(client, "user2").status_code == 201
    refused = _signup(client, "user3")
    _assert_too_many(refused)
    assert refused.headers["Cache-Control"] == "no-store"
    assert _signup(client, "user3", environ_base=OTHER_IP).status_code == 201


def test_only_failed_token_requests_count(make_app: Any, frozen: Any) -> None:
    app = _limited(make_app, ratelimit_token_failures="3/minute")
    actions = Actions(app, app.test_client())
    actions.user("alice")
    oauth_client = actions.oauth_client()
    for _ in range(10):
        assert actions.token(oauth_client, "alice").status_code == 200
    for name in ("nobody1", "nobody2", "nobody3"):
        assert actions.token(oauth_client, name, password=WRONG).status_code == 400
    _assert_too_many(actions.token(oauth_client, "alice"))  # this address is spent...
    other = app.test_client()
    response = other.post(
        "/oauth/token",
        data={"grant_type": "password", "username": "alice", "password": PASSWORD},
        auth=oauth_client.auth,
        environ_base=OTHER_IP,
    )
    assert response.status_code == 200  # ...another is not
    frozen.shift(61)
    assert actions.token(oauth_client, "alice").status_code == 200


def test_sign_in_page_and_token_endpoint_share_one_failure_budget(
    make_app: Any, frozen: Any
) -> None:
    app = _limited(make_app, ratelimit_token_failures="3/minute")
    actions = Actions(app, app.test_client())
    actions.user("alice")
    oauth_client = actions.oauth_client()
    browser = Flow(app, app.test_client())
    # Guesses taking turns between the two routes draw on one budget, not one per route.
    assert actions.token(oauth_client, "nobody1", password=WRONG).status_code == 400
    assert browser.login("nobody2", WRONG).status_code == 400
    assert actions.token(oauth_client, "nobody3", password=WRONG).status_code == 400
    assert browser.login("alice").status_code == 429
    _assert_too_many(actions.token(oauth_client, "alice"))


def test_a_throttled_page_says_its_last_second_as_one(make_app: Any, frozen: Any) -> None:
    app = _limited(make_app, ratelimit_token_failures="1/minute")
    browser = Flow(app, app.test_client())
    assert browser.login("nobody", WRONG).status_code == 400
    frozen.shift(59)
    refused = browser.login("nobody", WRONG)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert "retry after 1 second." in refused.text


def _password_budget_app(make_app: Any, storage: str, request: pytest.FixtureRequest) -> Flask:
    """An app allowing one failed password check a minute per IP, counted in `storage`."""
    stored: dict[str, str] = {}
    if storage == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        stored = {"ratelimit_storage_uri": REDIS_URL, "ratelimit_key_prefix": prefix}
    return _limited(make_app, ratelimit_token_failures="1/minute", **stored)


def _check_password(
    app: Flask, oauth_client: RegisteredClient, route: str, username: str, password: str
) -> int:
    """The status of one password check at `route`, from a new client at the same address."""
    if route == "/login":
        return int(Flow(app, app.test_client()).login(username, password).status_code)
    actions = Actions(app, app.test_client())
    return int(actions.token(oauth_client, username, password=password).status_code)


@pytest.mark.parametrize("storage", ["memory", "redis"])
@pytest.mark.parametrize("route", ["/oauth/token", "/login"])
def test_a_guess_holds_its_count_while_its_password_is_checked(
    make_app: Any,
    frozen: Any,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    route: str,
    storage: str,
) -> None:
    app = _password_budget_app(make_app, storage, request)
    oauth_client = Actions(app, app.test_client()).oauth_client()
    checking, answered = threading.Event(), threading.Event()
    check = accounts._check_password

    def held_for_first(username: str, password: str) -> Any:
        if username == "first":
            checking.set()
            answered.wait(timeout=30)
        return check(username, password)

    monkeypatch.setattr(accounts, "_check_password", held_for_first)
    first: list[int] = []
    guess = threading.Thread(
        target=lambda: first.append(_check_password(app, oauth_client, route, "first", WRONG))
    )
    guess.start()
    assert checking.wait(timeout=30)
    # Counted only once answered, every guess sent meanwhile would pass: each would be checked.
    second = _check_password(app, oauth_client, route, "second", WRONG)
    answered.set()
    guess.join()
    assert second == 429
    assert first == [400]


@pytest.mark.parametrize("storage", ["memory", "redis"])
@pytest.mark.parametrize("route", ["/oauth/token", "/login"])
def test_right_passwords_give_their_count_back(
    make_app: Any, frozen: Any, request: pytest.FixtureRequest, route: str, storage: str
) -> None:
    app = _password_budget_app(make_app, storage, request)
    actions = Actions(app, app.test_client())
    actions.user("alice")
    oauth_client = actions.oauth_client()
    success, failure = (303 if route == "/login" else 200), 400
    for _ in range(3):
        assert _check_password(app, oauth_client, route, "alice", PASSWORD) == success
    assert _check_password(app, oauth_client, route, "alice", WRONG) == failure
    assert _check_password(app, oauth_client, route, "alice", PASSWORD) == 429


def test_failed_introspection_and_revocation_count(make_app: Any) -> None:
    app = _limited(make_app, ratelimit_default="3/minute")
    actions = Actions(app, app.test_client())
    oauth_client = actions.oauth_client()
    for path in ("/oauth/introspect", "/oauth/revoke"):
        for _ in range(5):  # authenticated calls are not failures, however many
            ok = actions.client.post(path, data={"token": "x"}, auth=oauth_client.auth)
            assert ok.status_code == 200
        for _ in range(3):
            bad = actions.client.post(path, data={"token": "x"}, auth=("nobody", "wrong"))
            assert bad.status_code == 401
        _assert_too_many(actions.client.post(path, data={"token": "x"}, auth=oauth_client.auth))


@pytest.mark.parametrize(
    "path",
    ["/.well-known/oauth-authorization-server", "/.well-known/jwks.json"],
)
def test_open_routes_have_the_default_limit(make_app: Any, path: str) -> None:
    app = _limited(make_app, ratelimit_default="3/minute")
    with app.app_context():
        current_keyring().signing_key()  # so the JWKS has a key to publish
    client = app.test_client()
    for _ in range(3):
        assert client.get(path).status_code == 200
    _assert_too_many(client.get(path))
    assert client.get(path, environ_base=OTHER_IP).status_code == 200


def test_the_logout_endpoint_has_the_default_limit(make_app: Any) -> None:
    # Anyone may send a logout link with an id_token_hint, each a key lookup and an RSA check.
    app = _limited(make_app, ratelimit_default="3/minute")
    client = app.test_client()
    for _ in range(3):
        assert client.get("/oauth/logout").status_code == 200  # asked to confirm
    for refused in (
        client.get("/oauth/logout"),
        client.post("/oauth/logout", data={"id_token_hint": "e30.e30.AAAA"}),
    ):  # a page, as a throttled sign-in is
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert refused.mimetype == "text/html"
    assert client.get("/oauth/logout", environ_base=OTHER_IP).status_code == 200


def test_openapi_document_has_the_default_limit(make_app: Any) -> None:
    app = _limited(make_app, ratelimit_default="2/minute")
    client = app.test_client()
    if client.get("/openapi.json").status_code == 404:
        pytest.skip("no /openapi.json route in this build")
    assert client.get("/openapi.json").status_code == 200
    _assert_too_many(client.get("/openapi.json"))


def test_a_request_resolves_only_the_limits_of_its_route(make_app: Any) -> None:
    # Flask-Limiter resolves every default limit on every request it checks: ours must
    # yield nothing off their own routes, or each request pays for all of them.
    app = _limited(make_app)
    served = {(r.rule, method) for r in app.url_map.iter_rules() for method in r.methods or ()}
    asked = {(route, m) for rule in RULES for route in rule.routes for m in rule.methods}
    assert {route for route, _ in asked & served} == {r for rule in RULES for r in rule.routes}
    for route, method in [*(asked & served), ("/healthz", "GET")]:
        path = route.replace("<client_id>", "some-client")
        with app.test_request_context(path, method=method):
            assert request.url_rule is not None and request.url_rule.rule == route
            resolved = {limit.scope for limit in limiter.limit_manager.default_limits}
        assert resolved == {rule.name for rule in RULES if route in rule.routes}, route


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_health_and_metrics_are_never_limited(make_app: Any, path: str) -> None:
    client = _limited(make_app, ratelimit_default="1/minute").test_client()
    statuses = {client.get(path).status_code for _ in range(30)}
    assert 429 not in statuses
    assert statuses <= {200, 404}  # /metrics may be absent from a build; never limited


def test_switching_limits_off_leaves_the_password_guard_on(make_app: Any, frozen: Any) -> None:
    app = make_app(ratelimit_enabled=False, ratelimit_signup="1/hour")
    actions = Actions(app, app.test_client())
    for n in range(5):
        actions.user(f"user{n}")
    oauth_client = actions.oauth_client()
    statuses = [actions.token(oauth_client, "user0", password=WRONG).status_code for _ in range(6)]
    assert statuses == [400] * 5 + [429]


def test_limits_count_in_redis_under_the_configured_prefix(
    make_app: Any, redis_prefix: str
) -> None:
    app = _limited(
        make_app,
        ratelimit_signup="2/hour",
        ratelimit_storage_uri=REDIS_URL,
        ratelimit_key_prefix=redis_prefix,
    )
    client = app.test_client()
    assert _signup(client, "user1").status_code == 201
    assert _signup(client, "user2").status_code == 201
    _assert_too_many(_signup(client, "user3"))
    keys = [k.decode() for k in redis.Redis.from_url(REDIS_URL).scan_iter(f"{redis_prefix}:*")]
    assert any(key.startswith(f"{redis_prefix}:limits:") for key in keys)


def test_forwarded_for_is_ignored_unless_proxies_are_trusted(make_app: Any) -> None:
    client = _limited(make_app, ratelimit_signup="1/hour").test_client()
    assert _signup(client, "user1", headers={"X-Forwarded-For": "203.0.113.1"}).status_code == 201
    # A client cannot dodge its limit by claiming to be someone else.
    _assert_too_many(_signup(client, "user2", headers={"X-Forwarded-For": "203.0.113.2"}))


def test_one_trusted_proxy_names_the_client(make_app: Any) -> None:
    client = _limited(make_app, ratelimit_signup="1/hour", trusted_proxies=1).test_client()

    def via_proxy(name: str, forwarded_for: str) -> int:
        return int(_signup(client, name, headers={"X-Forwarded-For": forwarded_for}).status_code)

    assert via_proxy("user1", "203.0.113.1") == 201
    assert via_proxy("user2", "203.0.113.2") == 201
    # The proxy appends the address it saw; what the client wrote before it is not believed.
    assert via_proxy("user3", "203.0.113.1, 203.0.113.2") == 429


def test_two_gunicorn_workers_share_limits_in_redis(
    live_server_factory: Any, app: Flask, redis_prefix: str
) -> None:
    server = live_server_factory(
        TOKENSERVER_RATELIMIT_ENABLED="true",
        TOKENSERVER_RATELIMIT_SIGNUP="3/hour",
        TOKENSERVER_RATELIMIT_STORAGE_URI=REDIS_URL,
        TOKENSERVER_RATELIMIT_KEY_PREFIX=redis_prefix,
    )
    # One worker holds this sign-up (already counted) while the other serves the rest.
    held = HeldRequest(server.url, "/users", {"username": "held", "password": PASSWORD})
    statuses = [
        requests.post(
            f"{server.url}/users",
            json={"username": f"user{n}", "password": PASSWORD},
            timeout=10,
        ).status_code
        for n in range(3)
    ]
    statuses.append(held.finish())
    # Per-worker counts would let 4 through; one count in Redis lets exactly 3.
    assert statuses.count(201) == 3
    assert statuses.count(429) == 1


def test_a_redis_outage_logs_one_line_per_failure_and_few_tracebacks(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = _limited(make_app, ratelimit_storage_uri="redis://127.0.0.1:1/0")
    with app.app_context():
        current_keyring().signing_key()
    client = app.test_client()
    caplog.set_level("WARNING")
    for _ in range(50):
        assert client.get("/.well-known/jwks.json").status_code == 200  # limits lift, no more
    lines = [r for r in caplog.records if r.name == "flask-limiter"]
    assert len(lines) >= 50
    assert sum(1 for r in lines if r.exc_info) <= 1
    assert all("\n" not in r.getMessage() for r in lines)
    assert any("ConnectionError" in r.getMessage() for r in lines)
