"""private_key_jwt (RFC 7523 §2.2): clients authenticate with JWTs signed by their own keys.

Real Authlib clients against live gunicorn, keys inline and at a jwks_uri served by a small
HTTP server of the test's own; every forged, replayed, stale or foreign assertion is the one
401 invalid_client.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
import time_machine
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from joserfc import jws, jwt
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey
from sqlalchemy import update

from tokenserver.client_jwks import KeysUnavailable
from tokenserver.clients import ClientSpec, register_client
from tokenserver.extensions import db
from tokenserver.models import Client
from tokenserver.oauth.client_auth import FAILED
from tokenserver.oauth.client_keys import RemoteKeys
from tokenserver.oauth.resolver import Resolver
from tokenserver.store import replay

from .helpers import b64url

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class ShortPrivateKeyJWT(PrivateKeyJWT):
    """Authlib's private_key_jwt, with a one-minute assertion (Authlib's default: an hour)."""

    def sign(self, auth: Any, token_endpoint: str) -> Any:
        return private_key_jwt_sign(
            auth.client_secret,
            client_id=auth.client_id,
            token_endpoint=token_endpoint,
            alg=self.alg,
            expires_in=60,
        )


def _ec() -> ECKey:
    return ECKey.generate_key("P-256", auto_kid=True)


def _rsa() -> RSAKey:
    return RSAKey.generate_key(2048, auto_kid=True)


def _jwks(*keys: Key) -> dict[str, Any]:
    return {"keys": [key.as_dict(private=False) for key in keys]}


def _issuer(app: Flask) -> str:
    issuer: str = app.extensions["tokenserver.settings"].issuer
    return issuer


def _register(app: Flask, name: str = "machine", **spec: Any) -> str:
    spec.setdefault("grants", ("client_credentials",))
    with app.app_context():
        client, secret = register_client(ClientSpec(name, **spec))
        assert secret is None  # a keyed client has no secret at all
        return client.client_id


def _assertion(key: Key, client_id: str, aud: Any, alg: str = "ES256", **claims: Any) -> str:
    """A client assertion; a claim given as None is left out."""
    now = int(time.time())
    payload = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(16),
        **claims,
    }
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode({"alg": alg, "kid": key.kid}, payload, key, algorithms=[alg])


def _form(assertion: str, **extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        **extra,
    }


def _send(http: FlaskClient, key: Key, client_id: str, aud: str) -> Any:
    return http.post("/oauth/token", data=_form(_assertion(key, client_id, aud)))


def _refused(response: Any) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.json == {"error": "invalid_client", "error_description": FAILED}


@dataclass
class _Keyed:
    """A client registered with one EC key, and the app's URLs."""

    app: Flask
    http: FlaskClient
    key: ECKey
    client_id: str
    issuer: str

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/oauth/token"

    def assertion(self, **claims: Any) -> str:
        return _assertion(self.key, self.client_id, claims.pop("aud", self.token_url), **claims)

    def token(self, assertion: str, **extra: str) -> Any:
        return self.http.post("/oauth/token", data=_form(assertion, **extra))


@pytest.fixture
def keyed(app: Flask, client: FlaskClient) -> _Keyed:
    key = _ec()
    client_id = _register(app, jwks=_jwks(key))
    return _Keyed(app, client, key, client_id, _issuer(app))


# --- a real client against live gunicorn ---------------------------------------------------


@pytest.mark.parametrize(("make_key", "alg"), [(_ec, "ES256"), (_rsa, "RS256")])
def test_authlib_client_gets_client_credentials_tokens(
    app: Flask, live_server: Any, make_key: Any, alg: str
) -> None:
    key = make_key()
    client_id = _register(app, jwks=_jwks(key), scope="junk:read")
    token_url = f"{_issuer(app)}/oauth/token"  # the aud; the request goes to the live server
    session = OAuth2Session(
        client_id, key, token_endpoint_auth_method=ShortPrivateKeyJWT(token_url, alg=alg)
    )
    for _ in range(2):  # a fresh jti each time: the second request is not a replay
        token = session.fetch_token(
            f"{live_server.url}/oauth/token", grant_type="client_credentials"
        )
        claims = jwt.decode(token["access_token"], _signing_keys(live_server)).claims
        assert claims["sub"] == client_id and claims["client_id"] == client_id
        assert token["scope"] == "junk:read" and "refresh_token" not in token


def _signing_keys(live_server: Any) -> Any:
    from joserfc.jwk import KeySet

    return KeySet.import_key_set(requests.get(f"{live_server.url}/.well-known/jwks.json").json())


def test_introspection_and_revocation_authenticate_with_private_key_jwt(
    app: Flask, live_server: Any
) -> None:
    key = _ec()
    client_id = _register(app, jwks=_jwks(key))
    auth = ShortPrivateKeyJWT(f"{_issuer(app)}/oauth/token", alg="ES256")
    session = OAuth2Session(
        client_id, key, token_endpoint_auth_method=auth, revocation_endpoint_auth_method=auth
    )
    token = session.fetch_token(f"{live_server.url}/oauth/token", grant_type="client_credentials")
    access = token["access_token"]

    about = session.introspect_token(f"{live_server.url}/oauth/introspect", token=access)
    assert about.status_code == 200 and about.json()["active"] is True
    assert about.json()["client_id"] == client_id

    revoked = session.revoke_token(f"{live_server.url}/oauth/revoke", token=access)
    assert revoked.status_code == 200
    about = session.introspect_token(f"{live_server.url}/oauth/introspect", token=access)
    assert about.json() == {"active": False}


def test_authlibs_default_hour_long_assertion_is_refused(app: Flask, live_server: Any) -> None:
    """RFC 7523 §3 lets us refuse an exp unreasonably far ahead; ours is five minutes."""
    key = _ec()
    client_id = _register(app, jwks=_jwks(key))
    session = OAuth2Session(
        client_id,
        key,
        token_endpoint_auth_method=PrivateKeyJWT(f"{_issuer(app)}/oauth/token", alg="ES256"),
    )
    with pytest.raises(OAuthError) as refused:
        session.fetch_token(f"{live_server.url}/oauth/token", grant_type="client_credentials")
    assert refused.value.error == "invalid_client"
    assert refused.value.description == FAILED


def test_replayed_assertion_has_one_winner_across_live_workers(
    app: Flask, live_server: Any
) -> None:
    key = _ec()
    client_id = _register(app, jwks=_jwks(key))
    assertion = _assertion(key, client_id, f"{_issuer(app)}/oauth/token")

    def send(_: int) -> int:
        # A connection each, so both workers receive copies of the same assertion at once.
        response = requests.post(f"{live_server.url}/oauth/token", data=_form(assertion))
        assert response.status_code in (200, 401)
        if response.status_code == 401:
            assert response.json()["error"] == "invalid_client"
        return response.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(send, range(16)))
    assert statuses.count(200) == 1


# --- claims, keys and algorithms -----------------------------------------------------------


def test_aud_may_be_the_issuer_the_token_endpoint_or_the_par_endpoint(keyed: _Keyed) -> None:
    assert keyed.token(keyed.assertion(aud=keyed.issuer)).status_code == 200
    assert keyed.token(keyed.assertion(aud=keyed.token_url)).status_code == 200
    # RFC 9126 §2 names the pushed request endpoint too; any of the three at every endpoint.
    assert keyed.token(keyed.assertion(aud=f"{keyed.issuer}/oauth/par")).status_code == 200
    assert (
        keyed.token(keyed.assertion(aud=["https://other.example", keyed.issuer])).status_code == 200
    )


@pytest.mark.parametrize(
    "aud",
    [
        "https://other.example/oauth/token",
        "{issuer}/oauth/introspect",  # an endpoint of ours, but not a name of the server
        "{issuer}/",
        ["https://other.example"],
        {"iss": "{issuer}"},
    ],
)
def test_assertion_for_another_audience_is_refused(keyed: _Keyed, aud: Any) -> None:
    if isinstance(aud, str):
        aud = aud.format(issuer=keyed.issuer)
    _refused(keyed.token(keyed.assertion(aud=aud)))


def test_replayed_jti_is_refused(keyed: _Keyed) -> None:
    assertion = keyed.assertion()
    assert keyed.token(assertion).status_code == 200
    _refused(keyed.token(assertion))
    # The same jti in a new assertion is still the same jti.
    jti = json.loads(base64.urlsafe_b64decode(assertion.split(".")[1] + "==="))["jti"]
    _refused(keyed.token(keyed.assertion(jti=jti)))


def test_a_jti_with_a_lone_surrogate_is_spent_like_any_other(keyed: _Keyed) -> None:
    # JSON may escape a lone surrogate ("\\ud800"), a string no UTF-8 encoder takes: its jti
    # is still spent once, and never a 500. joserfc will not encode one, so it is signed here.
    now = int(time.time())
    claims = {"iss": keyed.client_id, "sub": keyed.client_id, "aud": keyed.token_url}
    payload = json.dumps(claims | {"iat": now, "exp": now + 60, "jti": "\ud800"}).encode()
    header = {"alg": "ES256", "kid": keyed.key.kid}
    signed = jws.serialize_compact(header, payload, keyed.key, algorithms=["ES256"])
    first = keyed.token(signed)
    assert first.status_code == 200, first.json
    _refused(keyed.token(jws.serialize_compact(header, payload, keyed.key, algorithms=["ES256"])))


def test_replay_concurrently_in_one_process_has_one_winner(keyed: _Keyed) -> None:
    assertion = keyed.assertion()

    def send(_: int) -> int:
        with keyed.app.test_client() as http:
            return http.post("/oauth/token", data=_form(assertion)).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(send, range(16)))
    assert sorted(set(statuses)) == [200, 401] and statuses.count(200) == 1


@pytest.mark.parametrize(
    "claims",
    [
        {"iss": "someone-else"},
        {"iss": None},
        {"sub": None},
        {"exp": None},
        {"jti": None},
        {"jti": ""},
        {"jti": 12345},
        {"exp": "soon"},
        {"exp": int(time.time()) + 10**12},
        {"aud": None},
        # Far ahead: the parameters are made when the suite starts, minutes before the test.
        {"iat": int(time.time()) + 10**6},
        {"nbf": int(time.time()) + 10**6},
    ],
    ids=lambda c: ",".join(f"{k}={v!r}"[:24] for k, v in c.items()),
)
def test_bad_claims_are_refused(keyed: _Keyed, claims: dict[str, Any]) -> None:
    _refused(keyed.token(keyed.assertion(**claims)))


def test_expired_and_far_future_assertions_are_refused(keyed: _Keyed) -> None:
    now = int(time.time())
    _refused(keyed.token(keyed.assertion(iat=now - 400, exp=now - 120)))
    _refused(keyed.token(keyed.assertion(exp=now + 301 + 5)))
    # Within the leeway for clock skew, and within five minutes ahead: accepted.
    assert keyed.token(keyed.assertion(iat=now - 100, exp=now - 30)).status_code == 200
    assert keyed.token(keyed.assertion(exp=now + 280)).status_code == 200


def test_expiry_is_judged_by_the_clock(keyed: _Keyed) -> None:
    assertion = keyed.assertion()  # exp one minute ahead
    with time_machine.travel(time.time() + 60 + 61, tick=False):
        _refused(keyed.token(assertion))


def test_assertion_naming_another_client_is_refused(app: Flask, keyed: _Keyed) -> None:
    other = _register(app, "other", jwks=_jwks(_ec()))
    # Signed by keyed's key, but claiming to be the other client: the other's key must verify.
    _refused(keyed.token(_assertion(keyed.key, other, keyed.token_url)))
    # iss and sub disagree.
    _refused(keyed.token(keyed.assertion(sub=other)))
    # A client_id in the body must name the assertion's client (RFC 7521 §4.2).
    _refused(keyed.token(keyed.assertion(), client_id=other))
    assert keyed.token(keyed.assertion(), client_id=keyed.client_id).status_code == 200


def test_assertion_signed_by_another_key_is_refused(keyed: _Keyed) -> None:
    impostor = ECKey.import_key(_ec().as_dict(private=True) | {"kid": keyed.key.kid})
    _refused(keyed.token(_assertion(impostor, keyed.client_id, keyed.token_url)))


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"


def _claims(keyed: _Keyed) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": keyed.client_id,
        "sub": keyed.client_id,
        "aud": keyed.token_url,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(8),
    }


def test_alg_none_is_refused(keyed: _Keyed) -> None:
    _refused(keyed.token(_unsigned({"alg": "none"}, _claims(keyed)) + "."))


@pytest.mark.parametrize("secret", ["pem", "jwk"])
def test_hmac_keyed_with_the_public_key_is_refused(keyed: _Keyed, secret: str) -> None:
    """Algorithm confusion: HS256 with the client's public key, which anyone can read."""
    public = keyed.key.as_dict(private=False)
    key = keyed.key.as_pem(private=False) if secret == "pem" else json.dumps(public).encode()
    signing_input = _unsigned({"alg": "HS256", "kid": keyed.key.kid}, _claims(keyed))
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    _refused(keyed.token(f"{signing_input}.{b64url(signature)}"))


def test_rsa_and_eddsa_algorithms_are_accepted(app: Flask, client: FlaskClient) -> None:
    rsa, ed = _rsa(), OKPKey.generate_key("Ed25519", auto_kid=True)
    client_id = _register(app, jwks=_jwks(rsa, ed))
    aud = f"{_issuer(app)}/oauth/token"
    for key, alg in ((rsa, "RS256"), (rsa, "PS256"), (ed, "EdDSA")):
        response = client.post("/oauth/token", data=_form(_assertion(key, client_id, aud, alg)))
        assert response.status_code == 200, alg
    for alg in ("RS384", "RS512", "PS512"):  # asymmetric, but not offered in our metadata
        _refused(client.post("/oauth/token", data=_form(_assertion(rsa, client_id, aud, alg))))


def _weak_rsa() -> RSAKey:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc warns of the small key we want
        return RSAKey.generate_key(1024, auto_kid=True)


def _signed_rs256(key: RSAKey, client_id: str, aud: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc warns of signing with a small key
        return _assertion(key, client_id, aud, "RS256")


def test_a_weak_rsa_key_registered_before_the_rule_is_never_trusted(
    app: Flask, client: FlaskClient
) -> None:
    weak, ec = _weak_rsa(), _ec()
    client_id = _register(app, jwks=_jwks(ec))
    with app.app_context():  # as an older version, which did not refuse small keys, stored it
        db.session.execute(
            update(Client)
            .where(Client.client_id == client_id)
            .values(jwks=json.dumps(_jwks(weak, ec)))
        )
        db.session.commit()
    aud = f"{_issuer(app)}/oauth/token"
    # RFC 7518 §3.3: a 1024-bit key can be factored, and whoever factors it signs as the client.
    _refused(client.post("/oauth/token", data=_form(_signed_rs256(weak, client_id, aud))))
    assert (
        client.post("/oauth/token", data=_form(_assertion(ec, client_id, aud))).status_code == 200
    )


def test_a_key_of_another_type_under_the_same_kid_is_refused(
    app: Flask, client: FlaskClient
) -> None:
    ec = _ec()
    rsa = RSAKey.import_key(_rsa().as_dict(private=True) | {"kid": ec.kid})
    client_id = _register(app, jwks=_jwks(ec))
    aud = f"{_issuer(app)}/oauth/token"
    _refused(client.post("/oauth/token", data=_form(_assertion(rsa, client_id, aud, "RS256"))))


def test_a_key_marked_for_encryption_leaves_the_signing_key_the_only_one_without_a_kid(
    app: Flask, client: FlaskClient
) -> None:
    # RFC 7517 §4.2-4.3: a key the client marked for encryption never verifies its assertions,
    # so beside it the one signing key of that type is the key meant, kid or not.
    signing, sealing = _ec(), ECKey.generate_key("P-256", parameters={"use": "enc"})
    marked = ECKey.generate_key("P-256", parameters={"key_ops": ["encrypt"]})
    client_id = _register(app, jwks=_jwks(sealing, signing, marked))
    claims = {"iss": client_id, "sub": client_id, "aud": f"{_issuer(app)}/oauth/token"}

    def unnamed(key: ECKey) -> str:
        now, jti = int(time.time()), secrets.token_urlsafe(8)
        payload = {**claims, "exp": now + 60, "jti": jti}
        return jwt.encode({"alg": "ES256"}, payload, key, algorithms=["ES256"])

    response = client.post("/oauth/token", data=_form(unnamed(signing)))
    assert response.status_code == 200, response.json
    for key in (sealing, marked):  # their private halves, which joserfc would not sign with
        unmarked = {
            k: v for k, v in key.as_dict(private=True).items() if k not in ("use", "key_ops")
        }
        _refused(client.post("/oauth/token", data=_form(unnamed(ECKey.import_key(unmarked)))))


@pytest.mark.parametrize(
    "assertion",
    ["", "not-a-jwt", "a.b.c", "e30.e30.", "W10.W10.AAAA", "\x00\x01", "x" * 5000],
)
def test_malformed_assertions_are_refused(keyed: _Keyed, assertion: str) -> None:
    _refused(keyed.token(assertion))


@pytest.mark.parametrize(
    "header",
    [
        # joserfc names the alg or the crit member it refuses, and RFC 6749 §5.2 allows an
        # error_description no quote, backslash or character beyond ASCII.
        {"alg": 'ES"256'},
        {"alg": "ES256\\"},
        {"alg": "ES256\u00e9"},
        {"alg": "ES256\ud800"},
        {"alg": "ES256", "crit": ['"']},
        {"alg": "ES256", "crit": ["\u00e9"]},
    ],
)
@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/introspect", "/oauth/revoke"])
def test_a_header_naming_odd_characters_is_invalid_client_never_500(
    keyed: _Keyed, header: dict[str, Any], path: str
) -> None:
    encoded = json.dumps({**header, "kid": keyed.key.kid}).encode()
    payload = json.dumps(_claims(keyed)).encode()
    signing_input = f"{b64url(encoded)}.{b64url(payload)}"
    signature = jws.JWSRegistry().get_alg("ES256").sign(signing_input.encode(), keyed.key)
    assertion = f"{signing_input}.{b64url(signature)}"
    _refused(keyed.http.post(path, data=_form(assertion, token="x")))
    assert keyed.token(keyed.assertion()).status_code == 200


_DEEP = "[" * 20_000 + "]" * 20_000  # parsed by recursion, it would exhaust the stack


def _deep_assertion(keyed: _Keyed, signed: bool) -> str:
    """An assertion whose payload nests 20,000 deep: signed by the client, or bare."""
    if not signed:
        return ".".join(b64url(part) for part in (b'{"alg":"ES256"}', _DEEP.encode(), b"sig"))
    payload = json.dumps(_claims(keyed))[:-1] + f', "deep": {_DEEP}}}'
    header = {"alg": "ES256", "kid": keyed.key.kid}
    return jws.serialize_compact(header, payload.encode(), keyed.key)


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        ("/oauth/token", "token"),
        ("/oauth/device_authorization", "device_authorization"),
        ("/oauth/introspect", "introspection"),
    ],
)
@pytest.mark.parametrize("signed", [False, True], ids=["bare", "signed"])
def test_deeply_nested_assertion_is_invalid_client(
    keyed: _Keyed, caplog: pytest.LogCaptureFixture, path: str, endpoint: str, signed: bool
) -> None:
    caplog.set_level("INFO", logger="tokenserver.audit")
    form = _form(_deep_assertion(keyed, signed), token="x")
    _refused(keyed.http.post(path, data=form))
    events = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event")]
    failed = [e for e in events if e["event"] == "client.auth_failed"]
    # Audited like any other bad assertion: whom a document too deep to read names is unknown.
    assert failed, "the refusal is audited"
    assert (failed[-1]["method"], failed[-1]["endpoint"]) == ("private_key_jwt", endpoint)
    assert failed[-1]["client_id"] is None
    # The client itself is not locked out by it.
    assert keyed.token(keyed.assertion()).status_code == 200


def test_wrong_assertion_type_is_refused(keyed: _Keyed) -> None:
    form = _form(keyed.assertion())
    form["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"
    _refused(keyed.http.post("/oauth/token", data=form))
    del form["client_assertion_type"]
    _refused(keyed.http.post("/oauth/token", data=form))


# --- one method per client -----------------------------------------------------------------


def test_keyed_client_cannot_use_a_secret_or_nothing(keyed: _Keyed) -> None:
    grant = {"grant_type": "client_credentials"}
    _refused(keyed.http.post("/oauth/token", data=grant))
    _refused(keyed.http.post("/oauth/token", data=grant, auth=(keyed.client_id, "guess")))
    _refused(keyed.http.post("/oauth/token", data={**grant, "client_id": keyed.client_id}))
    _refused(
        keyed.http.post(
            "/oauth/token", data={**grant, "client_id": keyed.client_id, "client_secret": "x"}
        )
    )
    # Basic and a good assertion together: two methods, refused whatever each would say.
    both = keyed.http.post(
        "/oauth/token", data=_form(keyed.assertion()), auth=(keyed.client_id, "guess")
    )
    assert both.status_code == 400 and both.json["error"] == "invalid_request"


def test_secret_client_presenting_an_assertion_is_refused(actions: Any, keyed: _Keyed) -> None:
    secret_client = actions.oauth_client("secret-app")
    key = _ec()
    _refused(keyed.token(_assertion(key, secret_client.client_id, keyed.token_url)))
    # Its secret still works.
    response = keyed.http.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=secret_client.auth
    )
    assert response.status_code == 200


def test_unknown_client_reads_like_a_bad_assertion(keyed: _Keyed) -> None:
    _refused(keyed.token(_assertion(keyed.key, "no-such-client", keyed.token_url)))


def test_failure_is_audited_with_the_claimed_real_client(
    keyed: _Keyed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="tokenserver.audit")
    _refused(keyed.token(keyed.assertion(aud="https://other.example")))
    events = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event")]
    failed = [e for e in events if e["event"] == "client.auth_failed"]
    assert failed and failed[-1]["method"] == "private_key_jwt"
    assert failed[-1]["client_id"] == keyed.client_id
    assert failed[-1]["endpoint"] == "token"


# --- keys at a jwks_uri --------------------------------------------------------------------


@dataclass
class JwksServer:
    """A client's key server: counts fetches; can fail, answer garbage, or be slow."""

    document: dict[str, Any]
    mode: str = "ok"
    cache_control: str | None = None
    fetches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    state = JwksServer({"keys": []})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            with state.lock:
                state.fetches += 1
            if state.mode == "slow":
                state.release.wait(10)  # until the test ends: longer than our timeout
            if state.mode == "down":
                self.send_response(503)
                self.end_headers()
                return
            body = {
                "ok": json.dumps(state.document).encode(),
                "slow": json.dumps(state.document).encode(),
                "garbage": b"<html>not a key set</html>",
                "huge": b'{"keys": [' + b" " * 200_000 + b"]}",
                "deep": b'{"keys": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
                "private": json.dumps(state.document).encode(),
            }[state.mode]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if state.cache_control:
                self.send_header("Cache-Control", state.cache_control)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    state.release.set()
    server.shutdown()
    server.server_close()


def test_jwks_uri_keys_are_fetched_once_per_worker(
    app: Flask, live_server_factory: Any, jwks_server: JwksServer
) -> None:
    key = _ec()
    jwks_server.document = _jwks(key)
    client_id = _register(app, jwks_uri=jwks_server.url)
    server = live_server_factory(workers=1)
    session = OAuth2Session(
        client_id,
        key,
        token_endpoint_auth_method=ShortPrivateKeyJWT(f"{_issuer(app)}/oauth/token", alg="ES256"),
    )
    for _ in range(5):
        session.fetch_token(f"{server.url}/oauth/token", grant_type="client_credentials")
    assert jwks_server.fetches == 1
    # Made-up kids cannot make us hammer the client's server: no refetch within 30 seconds.
    for _ in range(5):
        stranger = _ec()
        assertion = _assertion(stranger, client_id, f"{_issuer(app)}/oauth/token")
        response = requests.post(f"{server.url}/oauth/token", data=_form(assertion))
        assert response.status_code == 401
    assert jwks_server.fetches == 1


def test_new_kid_refetches_at_most_once_per_interval(
    app: Flask, client: FlaskClient, jwks_server: JwksServer
) -> None:
    old, new = _ec(), _ec()
    jwks_server.document = _jwks(old)
    client_id = _register(app, jwks_uri=jwks_server.url)
    aud = f"{_issuer(app)}/oauth/token"
    start = time.time()
    with time_machine.travel(start, tick=False) as clock:
        assert (
            client.post("/oauth/token", data=_form(_assertion(old, client_id, aud))).status_code
            == 200
        )
        jwks_server.document = _jwks(old, new)  # the client rotates its keys
        _refused(_send(client, new, client_id, aud))
        assert jwks_server.fetches == 1  # fetched moments ago: not again yet
        clock.shift(31)
        assert (
            client.post("/oauth/token", data=_form(_assertion(new, client_id, aud))).status_code
            == 200
        )
        assert jwks_server.fetches == 2
        for _ in range(3):  # unknown kids again, within the interval: no fetch
            _refused(_send(client, _ec(), client_id, aud))
        assert jwks_server.fetches == 2
        assert (
            client.post("/oauth/token", data=_form(_assertion(old, client_id, aud))).status_code
            == 200
        )
        assert jwks_server.fetches == 2


def test_a_failed_refetch_keeps_the_keys_until_they_expire(
    app: Flask, client: FlaskClient, jwks_server: JwksServer
) -> None:
    key = _ec()
    jwks_server.document = _jwks(key)
    jwks_server.cache_control = "max-age=600"
    client_id = _register(app, jwks_uri=jwks_server.url)
    aud = f"{_issuer(app)}/oauth/token"
    with time_machine.travel(time.time(), tick=False) as clock:
        assert _send(client, key, client_id, aud).status_code == 200
        jwks_server.mode = "down"  # the client's key server fails for a while
        clock.shift(31)
        _refused(_send(client, _ec(), client_id, aud))  # anyone's made-up kid forces a refetch
        assert jwks_server.fetches == 2
        # The keys fetched before are still valid: the client keeps working.
        assert _send(client, key, client_id, aud).status_code == 200
        # The failure counts as a fetch: made-up kids cannot make us ask again at once.
        _refused(_send(client, _ec(), client_id, aud))
        assert jwks_server.fetches == 2
        clock.shift(31)
        _refused(_send(client, _ec(), client_id, aud))
        assert jwks_server.fetches == 3
        assert _send(client, key, client_id, aud).status_code == 200
        # Past the document's max-age the kept keys expire like any others.
        clock.shift(600 - 62 + 1)
        _refused(_send(client, key, client_id, aud))
        assert jwks_server.fetches == 4


def test_jwks_uri_cache_expires_by_max_age_within_bounds(
    app: Flask, client: FlaskClient, jwks_server: JwksServer
) -> None:
    key = _ec()
    jwks_server.document = _jwks(key)
    jwks_server.cache_control = "public, max-age=120"
    client_id = _register(app, jwks_uri=jwks_server.url)
    aud = f"{_issuer(app)}/oauth/token"
    with time_machine.travel(time.time(), tick=False) as clock:
        for _ in range(3):
            assert (
                client.post("/oauth/token", data=_form(_assertion(key, client_id, aud))).status_code
                == 200
            )
        assert jwks_server.fetches == 1
        clock.shift(110)
        assert (
            client.post("/oauth/token", data=_form(_assertion(key, client_id, aud))).status_code
            == 200
        )
        assert jwks_server.fetches == 1
        clock.shift(15)  # past max-age: fetched again
        assert (
            client.post("/oauth/token", data=_form(_assertion(key, client_id, aud))).status_code
            == 200
        )
        assert jwks_server.fetches == 2
        # A key the client withdrew stops working once the cache expires.
        jwks_server.document = _jwks(_ec())
        jwks_server.cache_control = "no-store"  # still kept for our floor of 60 s
        clock.shift(121)
        _refused(_send(client, key, client_id, aud))
        assert jwks_server.fetches == 3


@pytest.mark.parametrize("mode", ["down", "garbage", "huge", "deep", "slow"])
def test_failing_jwks_uri_is_invalid_client_never_500(
    app: Flask, client: FlaskClient, jwks_server: JwksServer, mode: str
) -> None:
    key = _ec()
    jwks_server.document = _jwks(key)
    jwks_server.mode = mode
    client_id = _register(app, jwks_uri=jwks_server.url)
    aud = f"{_issuer(app)}/oauth/token"
    started = time.monotonic()
    _refused(_send(client, key, client_id, aud))
    assert time.monotonic() - started < 6  # the 3-second timeout, not the server's 10
    # A failed fetch is not retried on every request either.
    _refused(_send(client, key, client_id, aud))
    assert jwks_server.fetches == 1


def test_a_jwks_uri_document_over_the_size_cap_is_refused(
    app: Flask, client: FlaskClient, jwks_server: JwksServer
) -> None:
    # The client's own good key, padded past our cap: its server must not fill our memory.
    key = _ec()
    jwks_server.document = {**_jwks(key), "padding": "x" * (RemoteKeys().max_bytes + 1)}
    with pytest.raises(KeysUnavailable, match="larger than"):
        RemoteKeys().get(jwks_server.url, None)
    client_id = _register(app, jwks_uri=jwks_server.url)
    _refused(_send(client, key, client_id, f"{_issuer(app)}/oauth/token"))


def test_failed_fetch_is_logged_without_the_query(
    app: Flask, client: FlaskClient, jwks_server: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    jwks_server.mode = "down"
    client_id = _register(app, jwks_uri=f"{jwks_server.url}?access=s3cret")
    _refused(_send(client, _ec(), client_id, f"{_issuer(app)}/oauth/token"))
    lines = [r.getMessage() for r in caplog.records if r.name == "tokenserver.oauth.client_keys"]
    assert lines == [f"jwks_uri {jwks_server.url} failed: answered 503"]
    assert "s3cret" not in caplog.text


def test_jwks_uri_with_private_keys_is_refused(
    app: Flask, client: FlaskClient, jwks_server: JwksServer
) -> None:
    key = _ec()
    jwks_server.document = {"keys": [key.as_dict(private=True)]}
    client_id = _register(app, jwks_uri=jwks_server.url)
    _refused(
        client.post(
            "/oauth/token", data=_form(_assertion(key, client_id, f"{_issuer(app)}/oauth/token"))
        )
    )


def test_a_key_on_an_unknown_curve_at_a_jwks_uri_is_invalid_client_never_500(
    app: Flask, client: FlaskClient, jwks_server: JwksServer
) -> None:
    key = _ec()
    jwks_server.document = {"keys": [{**key.as_dict(private=False), "crv": "P-999"}]}
    with pytest.raises(KeysUnavailable, match="P-999"):
        RemoteKeys().get(jwks_server.url, None)
    client_id = _register(app, jwks_uri=jwks_server.url)
    _refused(_send(client, key, client_id, f"{_issuer(app)}/oauth/token"))


def test_weak_and_non_signing_keys_at_a_jwks_uri_are_left_out(
    app: Flask, client: FlaskClient, jwks_server: JwksServer
) -> None:
    weak, ec = _weak_rsa(), _ec()
    agreement = OKPKey.generate_key("X25519", auto_kid=True)
    jwks_server.document = _jwks(weak, agreement, ec)
    client_id = _register(app, jwks_uri=jwks_server.url)
    aud = f"{_issuer(app)}/oauth/token"
    _refused(client.post("/oauth/token", data=_form(_signed_rs256(weak, client_id, aud))))
    # The client's good key still works: one weak key does not cost it the rest.
    assert (
        client.post("/oauth/token", data=_form(_assertion(ec, client_id, aud))).status_code == 200
    )
    jwks_server.document = _jwks(weak)
    with pytest.raises(KeysUnavailable, match="no key strong enough"):
        RemoteKeys().get(jwks_server.url, None)


def test_jwks_uri_that_is_not_listening_is_invalid_client(app: Flask, client: FlaskClient) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before use: nothing listens there
    key = _ec()
    client_id = _register(app, jwks_uri=f"http://127.0.0.1:{port}/jwks.json")
    _refused(
        client.post(
            "/oauth/token", data=_form(_assertion(key, client_id, f"{_issuer(app)}/oauth/token"))
        )
    )


class _Listener:
    """A TCP port that counts the connections made to it, and answers none."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]

    def connections(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                return count
            conn.close()
            count += 1


def _self_registered(client: FlaskClient, runner: FlaskCliRunner, jwks_uri: str) -> str:
    """A private_key_jwt client registered over RFC 7591, with its keys at `jwks_uri`."""
    made = runner.invoke(args=["clients", "registration-token"])
    assert made.exit_code == 0, made.output
    response = client.post(
        "/oauth/register",
        json={
            "client_name": "Self-registered service",
            "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks_uri": jwks_uri,
        },
        headers={"Authorization": f"Bearer {made.stdout.strip()}"},
    )
    assert response.status_code == 201, response.json
    return str(response.json["client_id"])


def test_a_self_registered_jwks_uri_whose_name_resolves_to_our_network_is_never_fetched(
    app: Flask, client: FlaskClient, runner: FlaskCliRunner, caplog: pytest.LogCaptureFixture
) -> None:
    # A public-looking name passes registration; it is resolved, and refused, when fetched.
    name = socket.gethostname()
    resolved = {info[4][0] for info in socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)}
    if "127.0.0.1" not in resolved:
        pytest.skip(f"this machine's name {name!r} does not resolve to 127.0.0.1")
    listener = _Listener()
    client_id = _self_registered(client, runner, f"https://{name}:{listener.port}/jwks.json")
    _refused(_send(client, _ec(), client_id, f"{_issuer(app)}/oauth/token"))
    assert listener.connections() == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "tokenserver.oauth.client_keys"]
    assert lines == [
        f"jwks_uri https://{name}:{listener.port}/jwks.json failed: "
        "its host is not on a public network"
    ]


def test_a_jwks_uri_whose_name_never_resolves_holds_a_request_no_longer_than_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A nameserver that never answers: getaddrinfo would wait out the resolver's every try.
    release, finished, asked = threading.Event(), threading.Event(), []
    asking = threading.Event()
    real_getaddrinfo = socket.getaddrinfo

    def unanswered(host: str, *args: Any, **kwargs: Any) -> Any:
        if host != "unanswered.example":
            return real_getaddrinfo(host, *args, **kwargs)
        asked.append(host)
        asking.set()
        try:
            release.wait(60)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        finally:
            finished.set()

    monkeypatch.setattr(socket, "getaddrinfo", unanswered)
    keys = RemoteKeys(timeout=0.2)
    try:
        with pytest.raises(KeysUnavailable, match="did not resolve in time"):
            keys.get("https://unanswered.example/jwks.json", None, public_only=True)
        assert not finished.is_set()  # answered while the lookup still hangs
        # Asked again at once: refused from the failure just seen, without another lookup.
        with pytest.raises(KeysUnavailable, match="failed moments ago"):
            keys.get("https://unanswered.example/jwks.json", None, public_only=True)
        # The caller's wait can end before the lookup's thread has even asked.
        assert asking.wait(10)
        assert asked == ["unanswered.example"]
    finally:
        release.set()
    assert finished.wait(10)  # the lookup left behind ends by itself


class _Nameserver:
    """getaddrinfo as a nameserver answers it: names starting "hang" get no answer until
    released; every other name is this machine."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release, self.asked = threading.Event(), []
        self._hanging: list[threading.Thread] = []  # the lookups asking for a "hang" name
        self._changed = threading.Condition()
        self.real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self.getaddrinfo)

    def getaddrinfo(self, host: str, *args: Any, **kwargs: Any) -> Any:
        hangs = host.startswith("hang")
        with self._changed:
            self.asked.append(host)
            if hangs:
                self._hanging.append(threading.current_thread())
            self._changed.notify_all()
        if not hangs:
            return self.real("127.0.0.1", *args, **kwargs)
        self.release.wait(60)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    def hanging(self, count: int) -> None:
        """Return once `count` lookups of "hang" names have asked: a caller that gave up on
        one may be answered before the lookup's thread has even begun."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self._hanging) >= count, timeout=10)

    def answer_hanging(self) -> None:
        """Let every hanging lookup fail, and return once each has ended (its thread, which
        also takes it off the resolver's list, has finished)."""
        self.release.set()
        for thread in self._hanging:
            thread.join(10)
            assert not thread.is_alive(), "a lookup left behind never ended"


@pytest.fixture
def nameserver(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Nameserver]:
    fake = _Nameserver(monkeypatch)
    yield fake
    fake.release.set()


def test_names_that_never_resolve_do_not_hold_up_other_clients_lookups(
    nameserver: _Nameserver, jwks_server: JwksServer
) -> None:
    key = _ec()
    jwks_server.document = _jwks(key)
    port = jwks_server.url.split(":")[2].split("/")[0]
    keys = RemoteKeys(timeout=0.3)
    for n, name in enumerate(("hang1.example", "hang2.example", "hang3.example"), 1):
        with pytest.raises(KeysUnavailable, match="did not resolve in time"):
            keys.get(f"http://{name}:{port}/jwks.json", None)
        nameserver.hanging(n)
    # Their lookups still hang; another client's name is looked up at once, and its keys
    # are fetched. Its fetch may take what a busy machine needs: one queued behind theirs
    # would still wait for them, and fail.
    keys.timeout = 10
    fetched = keys.get(f"http://keys.example:{port}/jwks.json", key.kid)
    assert [k.kid for k in fetched] == [key.kid]
    names = [host for host in nameserver.asked if host.endswith(".example")]
    assert names == ["hang1.example", "hang2.example", "hang3.example", "keys.example"]


def test_a_name_still_hanging_fails_at_once_without_another_lookup(
    nameserver: _Nameserver,
) -> None:
    resolver = Resolver()
    with pytest.raises(TimeoutError):
        resolver.addresses("hang.example", 443, timeout=0.1)
    nameserver.hanging(1)
    # Asked again (another URL on the same host) with a long timeout: the name's lookup is
    # still past its deadline, so the answer comes at once, and no second lookup starts.
    with ThreadPoolExecutor(1) as pool:
        again = pool.submit(resolver.addresses, "hang.example", 443, timeout=60)
        assert wait([again], timeout=10).done, "it waited for the hanging lookup"
    assert isinstance(again.exception(), TimeoutError)
    assert nameserver.asked == ["hang.example"]
    # Once the lookup left behind ends, the name is looked up afresh.
    nameserver.answer_hanging()
    with pytest.raises(socket.gaierror):
        resolver.addresses("hang.example", 443, timeout=10)
    assert nameserver.asked == ["hang.example", "hang.example"]


def test_lookups_running_at_once_are_bounded(nameserver: _Nameserver) -> None:
    resolver = Resolver(max_running=2)
    for n, name in enumerate(("hang1.example", "hang2.example"), 1):
        with pytest.raises(TimeoutError):
            resolver.addresses(name, 443, timeout=0.1)
        nameserver.hanging(n)
    with pytest.raises(TimeoutError, match="too many"):
        resolver.addresses("keys.example", 443, timeout=60)
    assert nameserver.asked == ["hang1.example", "hang2.example"]
    nameserver.answer_hanging()  # both end, and with them the lookups running
    assert resolver.addresses("keys.example", 443, timeout=10) == ["127.0.0.1"]


def test_an_operator_registered_jwks_uri_may_name_our_network(
    app: Flask, client: FlaskClient
) -> None:
    # The same kind of name, registered from the CLI: the operator knows the network. Nothing
    # answers there, so the fetch times out; what counts is that it was tried.
    listener = _Listener()
    client_id = _register(app, jwks_uri=f"http://localhost:{listener.port}/jwks.json")
    _refused(_send(client, _ec(), client_id, f"{_issuer(app)}/oauth/token"))
    assert listener.connections() == 1


# --- metadata, CLI -------------------------------------------------------------------------


def test_metadata_offers_private_key_jwt(client: FlaskClient) -> None:
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        body = client.get(path).json
        for endpoint in ("token", "introspection", "revocation"):
            assert "private_key_jwt" in body[f"{endpoint}_endpoint_auth_methods_supported"]
            algs = body[f"{endpoint}_endpoint_auth_signing_alg_values_supported"]
            assert {"RS256", "PS256", "ES256", "EdDSA"} <= set(algs)
            assert not {"none", "HS256"} & set(algs)


def test_clients_list_shows_the_method_and_jwks_uri(app: Flask, jwks_server: JwksServer) -> None:
    client_id = _register(app, jwks_uri=jwks_server.url)
    runner = app.test_cli_runner()
    line = next(
        line
        for line in runner.invoke(args=["clients", "list"]).output.splitlines()
        if line.startswith(client_id)
    )
    assert "\tprivate_key_jwt\t" in line and line.endswith(f"\t{jwks_server.url}")
    listed = json.loads(runner.invoke(args=["clients", "list", "--json"]).output)
    mine = next(c for c in listed if c["client_id"] == client_id)
    assert mine["token_endpoint_auth_method"] == "private_key_jwt"
    assert mine["jwks_uri"] == jwks_server.url


def test_tokens_purge_forgets_spent_jtis_of_expired_assertions(keyed: _Keyed) -> None:
    now = int(time.time())
    assert keyed.token(keyed.assertion(iat=now - 100, exp=now - 30)).status_code == 200
    assert keyed.token(keyed.assertion()).status_code == 200
    runner = keyed.app.test_cli_runner()
    with time_machine.travel(now + 40, tick=False):  # the first is past exp + leeway
        output = runner.invoke(args=["tokens", "purge"]).output
    assert "1 spent JWT id and" in output
    with keyed.app.app_context():
        assert replay.purge() == 0
