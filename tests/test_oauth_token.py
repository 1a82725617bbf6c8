"""POST /oauth/token: the three grants, client authentication, scopes, rotation and expiry."""

from __future__ import annotations

import time
from typing import Any

import pytest
import time_machine
from authlib.integrations.flask_oauth2 import ResourceProtector, current_token
from authlib.oauth2.rfc6750 import InvalidTokenError
from authlib.oauth2.rfc9068 import JWTBearerTokenValidator
from flask import Flask, jsonify
from flask.testing import FlaskClient, FlaskCliRunner
from joserfc.jwk import KeySet
from sqlalchemy import select

from tokenserver.extensions import db
from tokenserver.models import TOKEN_EXCHANGE, TokenFamily, TokenRecord

from .conftest import PASSWORD, Actions, RegisteredClient
from .helpers import (
    ISSUER,
    Prover,
    assert_oauth_error,
    claims_of,
    header_of,
    post_token,
    refresh_grant,
    works,
)

METHODS = ["client_secret_basic", "client_secret_post", "none"]
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
CONFIDENTIAL_METHODS = METHODS[:2]


def password_grant(
    client: FlaskClient, oauth_client: RegisteredClient, method: str, **extra: str
) -> Any:
    """A password grant for alice."""
    data = {"grant_type": "password", "username": "alice", "password": PASSWORD, **extra}
    return post_token(client, oauth_client, method, **data)


@pytest.fixture
def alice(actions: Actions) -> dict[str, Any]:
    """The user most tests here log in as."""
    return actions.user("alice")


@pytest.fixture
def app_client(actions: Actions) -> RegisteredClient:
    """A confidential client allowed every grant and scope."""
    return actions.oauth_client("app")


# --- every client authentication method -------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_login_refresh_and_replay_with_each_client_auth_method(
    client: FlaskClient, actions: Actions, alice: dict[str, Any], method: str
) -> None:
    oauth_client = actions.oauth_client("app", public=method == "none")
    login = password_grant(client, oauth_client, method)
    assert login.status_code == 200, login.json
    body = login.json
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    assert (body["token_type"], body["expires_in"]) == ("Bearer", 900)
    assert body["scope"] == "junk:read junk:write"
    assert login.headers["Cache-Control"] == "no-store"
    assert works(client, body["access_token"])
    refresh = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
    rotated = post_token(client, oauth_client, method, **refresh)
    assert rotated.status_code == 200, rotated.json
    assert rotated.headers["Cache-Control"] == "no-store"
    assert rotated.json["refresh_token"] != body["refresh_token"]
    assert works(client, rotated.json["access_token"])
    replay = post_token(client, oauth_client, method, **refresh)
    assert_oauth_error(replay, 400, "invalid_grant")
    assert not works(client, rotated.json["access_token"])


@pytest.mark.parametrize("method", METHODS)
def test_every_contract_error_for_each_client_auth_method(
    client: FlaskClient, actions: Actions, runner: FlaskCliRunner, method: str
) -> None:
    public = method == "none"
    actions.user("alice")
    actions.user("dora")
    runner.invoke(args=["users", "disable", "dora"])
    full = actions.oauth_client("app", public=public)
    reader = actions.oauth_client("reader", public=public, scope="junk:read")
    refresh_only = actions.oauth_client("r", public=public, grants=("refresh_token",))
    ghost = RegisteredClient("no-such-client", "whatever")
    login = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    cases: dict[str, tuple[RegisteredClient, dict[str, str], tuple[int, str]]] = {
        "wrong password": (full, {**login, "password": "nope-nope"}, (400, "invalid_grant")),
        "unknown user": (full, {**login, "username": "nobody"}, (400, "invalid_grant")),
        "disabled user": (full, {**login, "username": "dora"}, (400, "invalid_grant")),
        "unknown refresh token": (
            full,
            {"grant_type": "refresh_token", "refresh_token": "not-a-token"},
            (400, "invalid_grant"),
        ),
        "missing username": (full, _without(login, "username"), (400, "invalid_request")),
        "missing password": (full, _without(login, "password"), (400, "invalid_request")),
        "missing refresh token": (
            full,
            {"grant_type": "refresh_token"},
            (400, "invalid_request"),
        ),
        # RFC 6749 §3.2: a parameter sent without a value is as if left out.
        "empty username": (full, {**login, "username": ""}, (400, "invalid_request")),
        "empty password": (full, {**login, "password": ""}, (400, "invalid_request")),
        "empty refresh token": (
            full,
            {"grant_type": "refresh_token", "refresh_token": ""},
            (400, "invalid_request"),
        ),
        "missing grant type": (full, _without(login, "grant_type"), (400, "invalid_request")),
        "authorization_code, not registered": (
            full,
            {**login, "grant_type": "authorization_code"},
            (400, "unauthorized_client"),
        ),
        "made-up grant": (full, {**login, "grant_type": "urn:x"}, (400, "unsupported_grant_type")),
        "unknown scope": (full, {**login, "scope": "junk:admin"}, (400, "invalid_scope")),
        "partly unknown scope": (
            full,
            {**login, "scope": "junk:read openid"},
            (400, "invalid_scope"),
        ),
        "scope beyond registration": (
            reader,
            {**login, "scope": "junk:read junk:write"},
            (400, "invalid_scope"),
        ),
        "grant not registered": (refresh_only, login, (400, "unauthorized_client")),
        "unknown client": (ghost, login, (401, "invalid_client")),
        "client id with a NUL": (RegisteredClient("a\x00b", "s"), login, (401, "invalid_client")),
        "client id too long": (RegisteredClient("c" * 65, "s"), login, (401, "invalid_client")),
    }
    answers = {}
    for name, (oauth_client, data, _expected) in cases.items():
        response = post_token(client, oauth_client, method, **data)
        assert response.mimetype == "application/json", name
        assert response.json["error_description"], name
        answers[name] = (response.status_code, response.json["error"])
    assert answers == {name: expected for name, (_c, _d, expected) in cases.items()}


def _without(data: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in data.items() if k != name}


@pytest.mark.parametrize("method", CONFIDENTIAL_METHODS)
def test_wrong_client_secret_is_invalid_client_401(
    client: FlaskClient, alice: dict[str, Any], app_client: RegisteredClient, method: str
) -> None:
    forged = RegisteredClient(app_client.client_id, "not-the-secret")
    response = password_grant(client, forged, method)
    assert_oauth_error(response, 401, "invalid_client")
    assert response.headers["WWW-Authenticate"].startswith("Basic ")


def test_missing_or_misused_client_authentication_is_invalid_client(
    client: FlaskClient, actions: Actions, alice: dict[str, Any], app_client: RegisteredClient
) -> None:
    login = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    assert_oauth_error(client.post("/oauth/token", data=login), 401, "invalid_client")
    # A confidential client may not skip its secret by posing as a public one.
    assert_oauth_error(password_grant(client, app_client, "none"), 401, "invalid_client")
    # A public client has no secret to send.
    spa = actions.oauth_client("spa", public=True)
    with_secret = RegisteredClient(spa.client_id, "made-up")
    for method in CONFIDENTIAL_METHODS:
        assert_oauth_error(password_grant(client, with_secret, method), 401, "invalid_client")
    # RFC 6749 §4.4: client_credentials is for confidential clients only.
    response = post_token(client, spa, "none", grant_type="client_credentials")
    assert_oauth_error(response, 401, "invalid_client")


def test_unknown_user_gets_the_same_answer_as_a_wrong_password(
    client: FlaskClient, alice: dict[str, Any], app_client: RegisteredClient
) -> None:
    wrong = password_grant(client, app_client, "client_secret_basic", password="nope-nope")
    unknown = password_grant(client, app_client, "client_secret_basic", username="nobody")
    assert unknown.json == wrong.json  # no user enumeration through the answer


def test_client_without_a_grant_is_unauthorized_client(
    client: FlaskClient, actions: Actions, alice: dict[str, Any]
) -> None:
    password_only = actions.oauth_client("pw", grants=("password",))
    tokens = actions.token(password_only).json
    refused = refresh_grant(client, password_only, tokens["refresh_token"])
    assert_oauth_error(refused, 400, "unauthorized_client")
    cc = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=password_only.auth
    )
    assert_oauth_error(cc, 400, "unauthorized_client")


def test_malformed_requests_are_invalid_request(
    client: FlaskClient, alice: dict[str, Any], app_client: RegisteredClient
) -> None:
    login = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    as_json = client.post("/oauth/token", json=login, auth=app_client.auth)
    assert_oauth_error(as_json, 400, "invalid_request")
    repeated = client.post(
        "/oauth/token",
        data="grant_type=password&username=alice&username=bob&password=x",
        content_type="application/x-www-form-urlencoded",
        auth=app_client.auth,
    )
    assert_oauth_error(repeated, 400, "invalid_request")
    assert "username" in repeated.json["error_description"]


@pytest.mark.parametrize(
    "body",
    [
        f"grant_type=password&username=&username=alice&password={PASSWORD}&scope=",
        f"grant_type=&grant_type=password&username=alice&password={PASSWORD}",
    ],
)
def test_a_parameter_sent_empty_beside_its_value_is_not_a_repeat(
    client: FlaskClient, alice: dict[str, Any], app_client: RegisteredClient, body: str
) -> None:
    # RFC 6749 §3.2: one sent without a value is as if omitted, so the other is given once.
    response = client.post(
        "/oauth/token",
        data=body,
        content_type="application/x-www-form-urlencoded",
        auth=app_client.auth,
    )
    assert response.status_code == 200, response.json


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/introspect", "/oauth/revoke"])
def test_a_body_that_is_not_utf8_is_named_as_such(
    client: FlaskClient, app_client: RegisteredClient, path: str
) -> None:
    # Werkzeug drops such a form whole; the answer must not claim grant_type was left out.
    body = b"grant_type=password&username=\xff\xfe&password=x&token=x"
    response = client.post(
        path, data=body, content_type="application/x-www-form-urlencoded", auth=app_client.auth
    )
    assert_oauth_error(response, 400, "invalid_request")
    assert "UTF-8" in response.json["error_description"]


def test_parameters_in_the_query_string_are_ignored(
    client: FlaskClient, alice: dict[str, Any], app_client: RegisteredClient
) -> None:
    # RFC 6749 §3.2: the body carries the parameters; a URL may end up in logs. A secret's
    # name without a value leaks nothing (and a parameter without a value is as if omitted).
    response = client.post(
        "/oauth/token?scope=junk:read&password=",
        data={"grant_type": "password", "username": "alice", "password": PASSWORD},
        auth=app_client.auth,
    )
    assert response.status_code == 200
    assert response.json["scope"] == "junk:read junk:write"


@pytest.mark.parametrize(
    ("path", "secret"),
    [
        ("/oauth/token", "client_secret"),
        ("/oauth/token", "password"),
        ("/oauth/token", "refresh_token"),
        ("/oauth/introspect", "token"),
        ("/oauth/revoke", "token"),
        ("/oauth/device_authorization", "client_secret"),
        ("/oauth/par", "client_assertion"),
    ],
)
def test_a_secret_in_the_query_string_is_refused_and_changes_nothing(
    client: FlaskClient, actions: Actions, path: str, secret: str
) -> None:
    # RFC 6749 §2.3.1: credentials must not be in the request URI. Served from the body alone,
    # the client would never learn that the URL took its secret to the logs.
    actions.user("alice")
    app_client = actions.oauth_client(
        "app", introspect=True, grants=("password", "refresh_token", DEVICE_GRANT)
    )
    login = actions.token(app_client).json
    values = {"client_secret": app_client.secret, "password": PASSWORD, "token": "x"}
    query = {secret: values.get(secret, login["refresh_token"])}
    body = {"grant_type": "refresh_token", "refresh_token": login["refresh_token"]}
    response = client.post(path, query_string=query, data=body, auth=app_client.auth)
    assert_oauth_error(response, 400, "invalid_request")
    assert f"'{secret}'" in response.json["error_description"]
    assert "URL" in response.json["error_description"]
    # Nothing was spent or revoked: the refresh token still rotates.
    assert refresh_grant(client, app_client, login["refresh_token"]).status_code == 200


def test_tls_is_judged_by_the_issuer_not_the_hop_behind_the_proxy(make_app: Any) -> None:
    login = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    # TLS ends at a proxy: the request reaches us over plain HTTP from a non-loopback address.
    behind_proxy = {"base_url": "http://10.0.0.5:8000"}
    secure = make_app(issuer="https://auth.example.com")
    actions = Actions(secure, secure.test_client())
    actions.user("alice")
    oauth_client = actions.oauth_client("app")
    ok = actions.client.post("/oauth/token", data=login, auth=oauth_client.auth, **behind_proxy)
    assert ok.status_code == 200, ok.json
    # An issuer that is plain HTTP off loopback is refused as Authlib would, but never with a 500.
    insecure = make_app(issuer="http://auth.example.com").test_client()
    refused = insecure.post("/oauth/token", data=login, auth=oauth_client.auth, **behind_proxy)
    assert_oauth_error(refused, 400, "invalid_request")
    assert "https" in refused.json["error_description"]


# --- what is issued -------------------------------------------------------------------------


def test_access_token_is_an_rfc9068_jwt_with_our_kid(
    app: Flask, actions: Actions, alice: dict[str, Any], app_client: RegisteredClient
) -> None:
    before = int(time.time())
    token = actions.token(app_client).json["access_token"]
    header, claims = header_of(token), claims_of(token)
    current_kid = app.extensions["tokenserver.keyring"].signing_key().kid
    assert header == {"alg": "RS256", "typ": "at+jwt", "kid": current_kid}
    assert set(claims) == {"iss", "sub", "aud", "exp", "iat", "jti", "client_id", "scope"} | {
        "username"
    }
    assert claims["iss"] == claims["aud"] == "http://localhost:8000"
    assert claims["sub"] == str(alice["id"])
    assert claims["username"] == "alice"
    assert claims["client_id"] == app_client.client_id
    assert claims["scope"] == "junk:read junk:write"
    assert before <= claims["iat"] <= before + 5
    assert claims["exp"] == claims["iat"] + 900
    other = actions.token(app_client).json["access_token"]
    assert claims_of(other)["jti"] != claims["jti"]


def test_token_lifetime_and_audience_follow_settings(make_app: Any) -> None:
    app = make_app(access_token_ttl=120, audience="https://api.example.com")
    actions = Actions(app, app.test_client())
    actions.user("alice")
    response = actions.token(actions.oauth_client("app"))
    assert response.json["expires_in"] == 120
    claims = claims_of(response.json["access_token"])
    assert claims["exp"] - claims["iat"] == 120
    assert claims["aud"] == "https://api.example.com"


def _api(jwks: dict[str, Any], audience: str, *, refuse_bound: bool) -> FlaskClient:
    """An API of someone else's checking our tokens with Authlib's RFC 9068 validator, as the
    README shows it (the JWKS handed over as a KeySet, not fetched); `refuse_bound` adds the
    README's refusal of a DPoP-bound token sent as a bearer token."""
    keys = KeySet.import_key_set(jwks)

    class OurTokens(JWTBearerTokenValidator):
        def get_jwks(self) -> KeySet:
            return keys

        def validate_token(self, token: Any, scopes: Any, request: Any, **kwargs: Any) -> None:
            super().validate_token(token, scopes, request, **kwargs)
            if refuse_bound and "cnf" in token:
                raise InvalidTokenError()

    require_oauth = ResourceProtector()
    require_oauth.register_token_validator(OurTokens(issuer=ISSUER, resource_server=audience))
    api = Flask("photos")

    @api.get("/photos")
    @require_oauth("junk:read")
    def photos() -> Any:
        return jsonify(sub=current_token["sub"], client_id=current_token["client_id"])

    return api.test_client()


def test_an_api_with_authlibs_rfc9068_validator_takes_our_tokens_for_its_resource_only(
    client: FlaskClient, actions: Actions, alice: dict[str, Any]
) -> None:
    photos = "https://photos.example/api"
    app_client = actions.oauth_client("app", audiences=(photos, "https://mail.example/"))
    gateway = actions.oauth_client("gateway", grants=(TOKEN_EXCHANGE,), audiences=(photos,))
    api = _api(client.get("/.well-known/jwks.json").json, photos, refuse_bound=True)

    def answer(token: str) -> int:
        return api.get("/photos", headers=Actions.bearer(token)).status_code

    login = actions.token(app_client, resource=photos).json
    refreshed = refresh_grant(client, app_client, login["refresh_token"]).json
    service = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "resource": photos},
        auth=app_client.auth,
    ).json
    exchanged = client.post(
        "/oauth/token",
        data={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": login["access_token"],
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "resource": photos,
            "scope": "junk:read",
        },
        auth=gateway.auth,
    ).json
    for good in (login, refreshed, service, exchanged):
        assert answer(good["access_token"]) == 200, claims_of(good["access_token"])
    assert claims_of(exchanged["access_token"])["act"] == {"sub": gateway.client_id}
    # RFC 9068 §4: a token for another resource, ours or another's, is not this API's.
    for other in (None, "https://mail.example/"):
        extra = {"resource": other} if other else {}
        assert answer(actions.token(app_client, **extra).json["access_token"]) == 401
    # A DPoP-bound token: Authlib's validator alone knows nothing of DPoP and takes it as a
    # bearer token; the README's check of `cnf` refuses it (RFC 9449 §7.2).
    bound = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "resource": photos},
        auth=app_client.auth,
        headers={"DPoP": Prover().proof("POST", f"{ISSUER}/oauth/token")},
    ).json
    assert bound["token_type"] == "DPoP", bound
    unaware = _api(client.get("/.well-known/jwks.json").json, photos, refuse_bound=False)
    assert unaware.get("/photos", headers=Actions.bearer(bound["access_token"])).status_code == 200
    assert answer(bound["access_token"]) == 401


@pytest.mark.parametrize("method", CONFIDENTIAL_METHODS)
def test_client_credentials_token_is_the_clients_own(
    client: FlaskClient, actions: Actions, method: str
) -> None:
    service = actions.oauth_client("service", scope="junk:read")
    response = post_token(client, service, method, grant_type="client_credentials")
    assert response.status_code == 200, response.json
    assert response.headers["Cache-Control"] == "no-store"
    assert "refresh_token" not in response.json
    assert response.json["scope"] == "junk:read"
    claims = claims_of(response.json["access_token"])
    assert claims["sub"] == claims["client_id"] == service.client_id
    assert "username" not in claims
    # A valid token, but not a user's: the user routes refuse it.
    me = client.get("/users/me", headers=Actions.bearer(response.json["access_token"]))
    assert me.status_code == 403
    assert me.json["error"] == "insufficient_scope"


def test_scope_defaults_to_the_registration_and_may_be_narrowed(
    actions: Actions, alice: dict[str, Any], app_client: RegisteredClient
) -> None:
    reader = actions.oauth_client("reader", scope="junk:read")
    assert actions.token(reader).json["scope"] == "junk:read"
    narrowed = actions.token(app_client, scope="junk:write")
    assert narrowed.json["scope"] == "junk:write"
    assert claims_of(narrowed.json["access_token"])["scope"] == "junk:write"


# --- refresh: rotation, reuse detection, narrowing ------------------------------------------


def test_spent_refresh_token_revokes_family(
    client: FlaskClient, actions: Actions, alice: dict[str, Any], app_client: RegisteredClient
) -> None:
    first = actions.token(app_client).json
    second = refresh_grant(client, app_client, first["refresh_token"]).json
    other_login = actions.token(app_client).json
    assert_oauth_error(
        refresh_grant(client, app_client, first["refresh_token"]), 400, "invalid_grant"
    )
    # The whole login is dead, the tokens issued after the spent one included...
    assert_oauth_error(
        refresh_grant(client, app_client, second["refresh_token"]), 400, "invalid_grant"
    )
    for access in (first["access_token"], second["access_token"]):
        me = client.get("/users/me", headers=Actions.bearer(access))
        assert (me.status_code, me.json["error"]) == (401, "invalid_token")
    # ...but only that login.
    assert works(client, other_login["access_token"])
    assert refresh_grant(client, app_client, other_login["refresh_token"]).status_code == 200


def test_refresh_token_of_another_client_is_invalid_grant_and_harmless(
    client: FlaskClient, actions: Actions, alice: dict[str, Any], app_client: RegisteredClient
) -> None:
    thief = actions.oauth_client("thief")
    tokens = actions.token(app_client).json
    stolen = refresh_grant(client, thief, tokens["refresh_token"])
    assert_oauth_error(stolen, 400, "invalid_grant")
    # The owner's login survives: a foreign presentation neither spends nor revokes it.
    assert refresh_grant(client, app_client, tokens["refresh_token"]).status_code == 200


def test_another_clients_spent_refresh_token_does_not_end_the_owners_login(
    client: FlaskClient, actions: Actions, alice: dict[str, Any], app_client: RegisteredClient
) -> None:
    # A spent token presented by its own client is a replay that revokes the login; presented
    # by another client, it must not let whoever stole it end the owner's login.
    thief = actions.oauth_client("thief")
    spent = actions.token(app_client).json["refresh_token"]
    rotated = refresh_grant(client, app_client, spent)
    assert rotated.status_code == 200
    assert_oauth_error(refresh_grant(client, thief, spent), 400, "invalid_grant")
    assert works(client, rotated.json["access_token"])
    assert refresh_grant(client, app_client, rotated.json["refresh_token"]).status_code == 200


def test_bad_refresh_tokens_are_invalid_grant(
    client: FlaskClient, actions: Actions, alice: dict[str, Any], app_client: RegisteredClient
) -> None:
    access_token = actions.token(app_client).json["access_token"]
    for token in ("x" * 600, "a.b.c", "\u00e9" * 43, access_token):
        assert_oauth_error(refresh_grant(client, app_client, token), 400, "invalid_grant")


def test_refresh_may_narrow_scope_and_keeps_the_original_for_later(
    client: FlaskClient, actions: Actions, alice: dict[str, Any], app_client: RegisteredClient
) -> None:
    first = actions.token(app_client).json
    narrowed = refresh_grant(client, app_client, first["refresh_token"], scope="junk:read")
    assert narrowed.status_code == 200, narrowed.json
    assert narrowed.json["scope"] == "junk:read"
    assert claims_of(narrowed.json["access_token"])["scope"] == "junk:read"
    # RFC 6749 §6: omitting scope means the scope originally granted, not the narrowed one.
    later = refresh_grant(client, app_client, narrowed.json["refresh_token"])
    assert later.json["scope"] == "junk:read junk:write"


def test_a_password_logins_refreshed_id_token_says_when_the_password_was_given(
    client: FlaskClient, actions: Actions, alice: dict[str, Any]
) -> None:
    oidc_app = actions.oauth_client("oidc-app", scope="openid junk:read")
    first = actions.token(oidc_app).json
    signed_in = claims_of(first["access_token"])["iat"]
    with time_machine.travel(time.time() + 2 * 3600, tick=False):
        refreshed = refresh_grant(client, oidc_app, first["refresh_token"])
    assert refreshed.status_code == 200, refreshed.json
    claims = claims_of(refreshed.json["id_token"])
    assert claims["iat"] >= signed_in + 2 * 3600
    assert claims["auth_time"] == signed_in and "sid" not in claims  # no browser session


def test_refresh_cannot_widen_scope_and_the_token_survives(
    client: FlaskClient, actions: Actions, alice: dict[str, Any], app_client: RegisteredClient
) -> None:
    first = actions.token(app_client, scope="junk:read").json
    wider = refresh_grant(client, app_client, first["refresh_token"], scope="junk:write")
    assert_oauth_error(wider, 400, "invalid_scope")
    # The failed request did not spend the token, so using it now is no replay.
    retry = refresh_grant(client, app_client, first["refresh_token"])
    assert retry.status_code == 200, retry.json
    assert retry.json["scope"] == "junk:read"


@pytest.mark.parametrize("blank", [" ", "  ", "\t"])
def test_a_blank_scope_on_refresh_never_widens_the_login(
    client: FlaskClient,
    actions: Actions,
    alice: dict[str, Any],
    app_client: RegisteredClient,
    blank: str,
) -> None:
    # Only delimiters name no scope: the scope granted at sign-in, never everything the client
    # is registered for (here junk:write, which the user never granted).
    first = actions.token(app_client, scope="junk:read").json
    refreshed = refresh_grant(client, app_client, first["refresh_token"], scope=blank)
    assert refreshed.status_code == 200, refreshed.json
    assert refreshed.json["scope"] == "junk:read"
    assert claims_of(refreshed.json["access_token"])["scope"] == "junk:read"


@pytest.mark.parametrize("grant", ["password", "client_credentials"])
def test_a_blank_scope_is_as_if_left_out(
    client: FlaskClient, alice: dict[str, Any], app_client: RegisteredClient, grant: str
) -> None:
    data = {"grant_type": grant, "username": "alice", "password": PASSWORD}
    omitted = post_token(client, app_client, "client_secret_basic", **data)
    blank = post_token(client, app_client, "client_secret_basic", **data, scope=" ")
    assert blank.status_code == 200, blank.json
    assert blank.json["scope"] == omitted.json["scope"] == "junk:read junk:write"
    assert claims_of(blank.json["access_token"])["scope"] == omitted.json["scope"]
    if grant == "password":  # a login that can be refreshed, not one left with no scope
        refreshed = refresh_grant(client, app_client, blank.json["refresh_token"])
        assert refreshed.status_code == 200, refreshed.json


def test_disabled_user_cannot_refresh_and_enabling_brings_nothing_back(
    client: FlaskClient,
    runner: FlaskCliRunner,
    actions: Actions,
    alice: dict[str, Any],
    app_client: RegisteredClient,
) -> None:
    tokens = actions.token(app_client).json
    runner.invoke(args=["users", "disable", "alice"])
    refused = refresh_grant(client, app_client, tokens["refresh_token"])
    assert_oauth_error(refused, 400, "invalid_grant")
    assert not works(client, tokens["access_token"])
    runner.invoke(args=["users", "enable", "alice"])
    # Disabling revoked the login for good: the user signs in anew.
    assert_oauth_error(
        refresh_grant(client, app_client, tokens["refresh_token"]), 400, "invalid_grant"
    )
    assert not works(client, tokens["access_token"])
    fresh = actions.token(app_client).json
    assert works(client, fresh["access_token"])
    assert refresh_grant(client, app_client, fresh["refresh_token"]).status_code == 200


# --- expiry, with a controlled clock ---------------------------------------------------------


def test_access_token_expires_after_its_lifetime(
    client: FlaskClient, actions: Actions, alice: dict[str, Any], app_client: RegisteredClient
) -> None:
    with time_machine.travel(time.time(), tick=False) as clock:
        token = actions.token(app_client).json["access_token"]
        clock.shift(899)
        assert works(client, token)
        clock.shift(1)
        expired = client.get("/users/me", headers=Actions.bearer(token))
    assert expired.status_code == 401
    assert expired.json["error"] == "invalid_token"
    assert expired.json["error_description"] == "The access token is expired."
    assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]


def test_refresh_token_expires_after_its_lifetime(make_app: Any) -> None:
    app = make_app(refresh_token_ttl=3600)
    actions = Actions(app, app.test_client())
    actions.user("alice")
    oauth_client = actions.oauth_client("app")
    with time_machine.travel(time.time(), tick=False) as clock:
        tokens = actions.token(oauth_client).json
        clock.shift(3599)
        live = refresh_grant(actions.client, oauth_client, tokens["refresh_token"])
        assert live.status_code == 200
        clock.shift(3600)
        expired = refresh_grant(actions.client, oauth_client, live.json["refresh_token"])
    assert_oauth_error(expired, 400, "invalid_grant")


# --- records -------------------------------------------------------------------------------


def test_records_one_family_per_login_with_digests_only(
    app: Flask,
    client: FlaskClient,
    actions: Actions,
    alice: dict[str, Any],
    app_client: RegisteredClient,
) -> None:
    first = actions.token(app_client).json
    second = refresh_grant(client, app_client, first["refresh_token"]).json
    actions.token(app_client)  # a second login: a second family
    with app.app_context():
        families = db.session.scalars(select(TokenFamily)).all()
        records = db.session.scalars(select(TokenRecord).order_by(TokenRecord.id)).all()
    assert len(families) == 2
    assert {f.user_id for f in families} == {alice["id"]}
    first_family = [r for r in records if r.family_id == records[0].family_id]
    assert sorted(r.kind for r in first_family) == ["access", "access", "refresh", "refresh"]
    jtis = {r.jti for r in first_family if r.kind == "access"}
    assert jtis == {claims_of(t["access_token"])["jti"] for t in (first, second)}
    refresh = [r for r in first_family if r.kind == "refresh"]
    assert [r.spent_at is not None for r in refresh] == [True, False]
    for record in records:
        assert record.expires_at > record.issued_at
        assert record.token_hash is None or len(record.token_hash) == 64


def test_nothing_secret_is_stored_in_the_clear(
    app: Flask, client: FlaskClient, actions: Actions, runner: FlaskCliRunner
) -> None:
    actions.user("alice")
    app_client = actions.oauth_client("app")
    service = actions.oauth_client("service", introspect=True)
    first = actions.token(app_client).json
    second = refresh_grant(client, app_client, first["refresh_token"]).json
    machine = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=service.auth
    ).json
    for token in (second["access_token"], second["refresh_token"], machine["access_token"]):
        client.post("/oauth/introspect", data={"token": token}, auth=service.auth)
    client.post("/oauth/revoke", data={"token": second["refresh_token"]}, auth=app_client.auth)
    secrets = {
        "password": PASSWORD,
        "client secret": app_client.secret,
        "service secret": service.secret,
        **{
            f"{name} access token": t["access_token"]
            for name, t in (("1st", first), ("2nd", second))
        },
        **{
            f"{name} refresh token": t["refresh_token"]
            for name, t in (("1st", first), ("2nd", second))
        },
        "client-credentials token": machine["access_token"],
        # A JWT's signature alone would be enough to rebuild it from its recorded claims.
        "access token signature": second["access_token"].rsplit(".", 1)[1],
    }
    found = []
    with app.app_context():
        for table in db.metadata.sorted_tables:
            for row in db.session.execute(table.select()):
                for column, value in row._mapping.items():
                    text = str(value)
                    found += [(table.name, column, n) for n, s in secrets.items() if s in text]
    assert found == []
