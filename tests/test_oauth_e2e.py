"""End to end against real gunicorn workers on loopback, with real OAuth2 client libraries."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import jwt as pyjwt
import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session as AuthlibSession
from flask import Flask
from flask.testing import FlaskCliRunner
from oauthlib.oauth2 import LegacyApplicationClient
from requests.auth import HTTPBasicAuth
from requests_oauthlib import OAuth2Session as OAuthlibSession

from tokenserver.config import Settings

from .conftest import PASSWORD, Actions, LiveServer, RegisteredClient
from .helpers import claims_of, header_of, password_login, race_refreshes

ISSUER = "http://localhost:8000"  # what the server is configured to call itself
WORKERS = 2
# Keys cached for 1 s and published 4 s before they sign, so a rotation plays out quickly; a
# verifier that refetches the JWKS every VERIFIER_CACHE seconds must never meet an unknown kid.
KEY_CACHE, PUBLISH = 1, 4
VERIFIER_CACHE = PUBLISH - KEY_CACHE - 1


@pytest.fixture(scope="module")
def server(base_settings: Settings) -> Iterator[LiveServer]:
    """Gunicorn for the whole module, with short key caching and publishing (see above)."""
    live = LiveServer(
        base_settings,
        WORKERS,
        TOKENSERVER_KEY_CACHE_SECONDS=str(KEY_CACHE),
        TOKENSERVER_KEY_PUBLISH_SECONDS=str(PUBLISH),
    ).start()
    yield live
    live.stop()


@pytest.fixture
def live(server: LiveServer, app: Flask) -> LiveServer:
    """The module's server, with the test database cleaned after each test (through `app`).

    The cleanup deletes every signing key but the current one, and a worker trusts its key set
    for KEY_CACHE seconds: until then it could still sign with a key the cleanup removed. The
    test starts once every worker's set is older than that (each reloads at its next request).
    """
    settled = time.monotonic() + KEY_CACHE
    while time.monotonic() <= settled:
        published_kids(server)
    return server


@pytest.fixture
def app_client(actions: Actions) -> RegisteredClient:
    """Alice and a confidential client for her app."""
    actions.user("alice")
    return actions.oauth_client("app")


def me(live: LiveServer, access_token: str) -> requests.Response:
    """GET /users/me on a fresh connection (so any worker may answer)."""
    headers = {"Authorization": f"Bearer {access_token}", "Connection": "close"}
    return requests.get(f"{live.url}/users/me", headers=headers, timeout=10)


def test_requests_oauthlib_legacy_client_fetches_refreshes_and_uses_tokens(
    live: LiveServer, app_client: RegisteredClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # plain HTTP on loopback only
    token_url = f"{live.url}/oauth/token"
    session = OAuthlibSession(client=LegacyApplicationClient(client_id=app_client.client_id))
    token = session.fetch_token(
        token_url,
        username="alice",
        password=PASSWORD,
        client_id=app_client.client_id,
        client_secret=app_client.secret,
    )
    assert token["token_type"] == "Bearer"
    assert session.get(f"{live.url}/users/me").json()["username"] == "alice"
    refreshed = session.refresh_token(token_url, auth=HTTPBasicAuth(*app_client.auth))
    assert refreshed["refresh_token"] != token["refresh_token"]
    assert session.get(f"{live.url}/users/me").status_code == 200
    # The spent token, replayed, is refused and takes the session's login with it.
    replay = requests.post(
        token_url,
        data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
        auth=app_client.auth,
        timeout=10,
    )
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    assert session.get(f"{live.url}/users/me").status_code == 401


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_authlib_client_fetches_auto_refreshes_and_uses_tokens(
    live: LiveServer, app_client: RegisteredClient, method: str
) -> None:
    updates: list[dict[str, Any]] = []
    session = AuthlibSession(
        app_client.client_id,
        app_client.secret,
        token_endpoint=f"{live.url}/oauth/token",
        token_endpoint_auth_method=method,
        update_token=lambda token, refresh_token=None, access_token=None: updates.append(token),
    )
    first = session.fetch_token(username="alice", password=PASSWORD, grant_type="password")
    assert session.get(f"{live.url}/users/me").json()["username"] == "alice"
    # A leeway beyond the token's life makes the client refresh before its next call.
    session.leeway = 10_000
    assert session.get(f"{live.url}/users/me").status_code == 200
    assert len(updates) == 1
    assert updates[0]["refresh_token"] != first["refresh_token"]
    assert session.token["access_token"] == updates[0]["access_token"]


def test_public_client_with_none_works_end_to_end(live: LiveServer, actions: Actions) -> None:
    actions.user("alice")
    spa = actions.oauth_client("spa", public=True)
    session = AuthlibSession(
        spa.client_id,
        token_endpoint=f"{live.url}/oauth/token",
        token_endpoint_auth_method="none",
    )
    session.fetch_token(username="alice", password=PASSWORD, grant_type="password")
    assert session.get(f"{live.url}/users/me").status_code == 200
    refreshed = session.refresh_token()
    assert claims_of(refreshed["access_token"])["client_id"] == spa.client_id
    revoked = session.revoke_token(
        f"{live.url}/oauth/revoke", refreshed["refresh_token"], token_type_hint="refresh_token"
    )
    assert revoked.status_code == 200
    assert session.get(f"{live.url}/users/me").status_code == 401


def test_pyjwt_verifies_our_tokens_from_the_published_jwks(
    live: LiveServer, app_client: RegisteredClient
) -> None:
    access_token = password_login(live, app_client).json()["access_token"]
    metadata = requests.get(f"{live.url}/.well-known/oauth-authorization-server", timeout=10)
    jwks_uri = metadata.json()["jwks_uri"]
    assert jwks_uri == f"{ISSUER}/.well-known/jwks.json"
    # The issuer names the public address; on loopback the same path is on our port.
    keys = pyjwt.PyJWKClient(live.url + urlsplit(jwks_uri).path)
    signing_key = keys.get_signing_key_from_jwt(access_token)
    claims = pyjwt.decode(
        access_token,
        signing_key.key,
        algorithms=["RS256"],
        audience=ISSUER,
        issuer=ISSUER,
        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
    )
    assert claims["username"] == "alice"
    with pytest.raises(pyjwt.InvalidAudienceError):
        pyjwt.decode(access_token, signing_key.key, algorithms=["RS256"], audience="https://x")
    with pytest.raises(pyjwt.InvalidIssuerError):
        pyjwt.decode(
            access_token, signing_key.key, algorithms=["RS256"], audience=ISSUER, issuer="https://x"
        )


def test_client_credentials_over_http(live: LiveServer, actions: Actions) -> None:
    service = actions.oauth_client("service", scope="junk:read")
    response = requests.post(
        f"{live.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=service.auth,
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert "refresh_token" not in response.json()
    assert claims_of(response.json()["access_token"])["sub"] == service.client_id


def test_disabling_a_user_kills_their_tokens_on_every_path(
    live: LiveServer, actions: Actions, app_client: RegisteredClient, runner: FlaskCliRunner
) -> None:
    resource_server = actions.oauth_client("api", introspect=True)
    tokens = password_login(live, app_client).json()
    assert me(live, tokens["access_token"]).status_code == 200
    assert runner.invoke(args=["users", "disable", "alice"]).exit_code == 0
    for _ in range(2 * WORKERS):  # whichever worker answers
        refused = me(live, tokens["access_token"])
        assert refused.status_code == 401
        assert refused.json()["error"] == "invalid_token"
        assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    for token in (tokens["access_token"], tokens["refresh_token"]):
        introspection = requests.post(
            f"{live.url}/oauth/introspect",
            data={"token": token},
            auth=resource_server.auth,
            timeout=10,
        )
        assert introspection.json() == {"active": False}
    refresh = requests.post(
        f"{live.url}/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=app_client.auth,
        timeout=10,
    )
    assert refresh.status_code == 400
    assert refresh.json()["error"] == "invalid_grant"
    login = password_login(live, app_client)
    assert login.status_code == 400
    assert login.json()["error"] == "invalid_grant"


def test_concurrent_refreshes_have_exactly_one_winner(
    live: LiveServer, app_client: RegisteredClient
) -> None:
    contenders = 12
    for _round in range(3):
        refresh_token = password_login(live, app_client).json()["refresh_token"]
        responses = race_refreshes(live, app_client, refresh_token, contenders)
        outcomes = sorted((r.status_code, r.json().get("error", "")) for r in responses)
        assert outcomes == [(200, "")] + [(400, "invalid_grant")] * (contenders - 1)
        # Each loser presented a spent token, and reuse detection cannot tell a race from a
        # theft (RFC 9700 §4.14.2), so the login is revoked: the winner's new tokens die too.
        [winner] = [r.json() for r in responses if r.status_code == 200]
        assert me(live, winner["access_token"]).status_code == 401


def rotate_keys(runner: FlaskCliRunner, *args: str) -> str:
    """`tokenserver keys rotate` as an operator runs it; the new kid."""
    rotated = runner.invoke(args=["keys", "rotate", *args])
    assert rotated.exit_code == 0, rotated.output
    return str(rotated.stdout.split()[-1])


def test_after_a_rotation_a_jwks_fetched_before_a_token_always_has_its_kid(
    live: LiveServer, app_client: RegisteredClient, runner: FlaskCliRunner
) -> None:
    old_token = password_login(live, app_client).json()["access_token"]
    old_kid = header_of(old_token)["kid"]
    new_kid = rotate_keys(runner)
    # Right after the rotation, and on through the promotion, every worker's JWKS (fresh
    # connections, so every worker answers) already lists the kid of the next token.
    kids: list[str] = []
    deadline = time.monotonic() + 3 * PUBLISH + 10
    while time.monotonic() < deadline and kids[-3:] != [new_kid] * 3:
        published = set.intersection(*(published_kids(live) for _ in range(2 * WORKERS)))
        kid = header_of(password_login(live, app_client).json()["access_token"])["kid"]
        assert kid in published, (kid, published)
        kids.append(kid)
    assert kids[0] == old_kid  # published first, used later
    assert kids[-3:] == [new_kid] * 3
    # Tokens of the old key live on, on every worker.
    for _ in range(3 * WORKERS):
        assert me(live, old_token).status_code == 200


class CountingJWKClient(pyjwt.PyJWKClient):
    """PyJWT's JWKS client, noting each refetch forced by a kid missing from its cache."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri, cache_jwk_set=True, lifespan=VERIFIER_CACHE)
        self.forced_refetches = 0

    def get_signing_keys(self, refresh: bool = False) -> Any:
        self.forced_refetches += refresh
        return super().get_signing_keys(refresh)


def _verifies_across_a_rotation(
    verifier: CountingJWKClient,
    live: LiveServer,
    app_client: RegisteredClient,
    runner: FlaskCliRunner,
) -> None:
    """`verifier` verifies every token issued until the rotated key has signed three in a row,
    and never had to fetch the key set again for a kid it lacked."""

    def verify(token: str) -> dict[str, Any]:
        key = verifier.get_signing_key_from_jwt(token)
        claims: dict[str, Any] = pyjwt.decode(token, key.key, algorithms=["RS256"], audience=ISSUER)
        return claims

    assert verify(password_login(live, app_client).json()["access_token"])["username"] == "alice"
    new_kid = rotate_keys(runner)
    seen: list[str] = []
    deadline = time.monotonic() + 3 * PUBLISH + 10
    while time.monotonic() < deadline and seen[-3:] != [new_kid] * 3:
        token = password_login(live, app_client).json()["access_token"]
        assert verify(token)["sub"]
        seen.append(header_of(token)["kid"])
    assert seen[-3:] == [new_kid] * 3
    assert verifier.forced_refetches == 0  # never met a kid its cached key set lacked


def test_a_resource_server_with_a_warm_jwks_cache_keeps_verifying_across_a_rotation(
    live: LiveServer, app_client: RegisteredClient, runner: FlaskCliRunner
) -> None:
    verifier = CountingJWKClient(f"{live.url}/.well-known/jwks.json")
    _verifies_across_a_rotation(verifier, live, app_client, runner)


class MaxAgeJWKClient(CountingJWKClient):
    """PyJWT's JWKS client keeping the key set as long as its Cache-Control max-age says."""

    def fetch_data(self) -> Any:
        response = requests.get(self.uri, timeout=5)
        response.raise_for_status()
        scope, _, max_age = response.headers["Cache-Control"].partition(", max-age=")
        assert scope == "public"
        assert self.jwk_set_cache is not None
        self.jwk_set_cache.lifespan = int(max_age)
        self.jwk_set_cache.put(response.json())
        return response.json()


def test_a_resource_server_honouring_the_jwks_max_age_never_meets_an_unknown_kid(
    live: LiveServer, app_client: RegisteredClient, runner: FlaskCliRunner
) -> None:
    # The server publishes keys PUBLISH seconds before they sign, less than the default max-age:
    # a verifier that keeps the JWKS as long as we say must still know every kid it meets.
    verifier = MaxAgeJWKClient(f"{live.url}/.well-known/jwks.json")
    _verifies_across_a_rotation(verifier, live, app_client, runner)


def test_emergency_rotation_and_revocation_reach_every_worker(
    live: LiveServer, app_client: RegisteredClient, runner: FlaskCliRunner
) -> None:
    leaked_token = password_login(live, app_client).json()["access_token"]
    leaked = header_of(leaked_token)["kid"]
    replacement = rotate_keys(runner, "--now")
    revoked = runner.invoke(args=["keys", "revoke", leaked])
    assert revoked.exit_code == 0, revoked.output
    # Dead at once on every worker, though their cached key sets still hold the key.
    for _ in range(3 * WORKERS):
        assert me(live, leaked_token).status_code == 401
    # Within the key cache, every worker signs with the replacement and publishes it alone
    # (a worker that has not yet reloaded its key set may sign with the leaked key until then).
    settled = time.monotonic() + KEY_CACHE
    deadline = time.monotonic() + 10 * KEY_CACHE + 10
    kids: list[str] = []
    while time.monotonic() < deadline and (
        time.monotonic() <= settled or kids[-3:] != [replacement] * 3
    ):
        kids.append(header_of(password_login(live, app_client).json()["access_token"])["kid"])
    assert kids[-3:] == [replacement] * 3
    new_token = password_login(live, app_client).json()["access_token"]
    assert header_of(new_token)["kid"] == replacement
    for _ in range(3 * WORKERS):
        assert me(live, new_token).status_code == 200
    everywhere = set.union(*(published_kids(live) for _ in range(2 * WORKERS)))
    while time.monotonic() < deadline and leaked in everywhere:
        everywhere = set.union(*(published_kids(live) for _ in range(2 * WORKERS)))
    assert leaked not in everywhere
    assert replacement in everywhere


def published_kids(live: LiveServer) -> set[str]:
    """The kids one worker publishes in its JWKS (a fresh connection, so any worker answers)."""
    response = requests.get(
        f"{live.url}/.well-known/jwks.json", headers={"Connection": "close"}, timeout=10
    )
    return {jwk["kid"] for jwk in response.json()["keys"]}
