"""Property tests: username normalisation, and the token parsers on arbitrary input."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import string
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from joserfc import jwt

from tokenserver import accounts
from tokenserver.config import current_settings
from tokenserver.errors import InvalidRequest
from tokenserver.guard import Throttled
from tokenserver.keys import current_keyring
from tokenserver.oauth.endpoints import TokenView, find_live_token
from tokenserver.oauth.tokens import TokenRejected, verify_access_token

from .conftest import PASSWORD, Actions

USERNAME_RULE = re.compile(r"[A-Za-z0-9._-]{3,64}")
usernames = st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=3, max_size=64)
# Any Python string, lone surrogates included: what a JSON body's "\\ud800" decodes to.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=200)
# `make fuzz` raises the count (FUZZ_EXAMPLES); every example here is cheap.
EXAMPLES = max(150, int(os.environ.get("FUZZ_EXAMPLES", "0")))
plain = settings(max_examples=EXAMPLES, deadline=None)
with_app = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@plain
@given(usernames)
def test_every_letter_case_of_a_username_has_one_key(name: str) -> None:
    key = accounts.username_key(name)
    assert key == accounts.username_key(name.upper()) == accounts.username_key(name.swapcase())
    assert accounts.username_key(key) == key
    assert accounts.validate_username(key) == key
    assert len(key) == len(name)


@plain
@given(any_text)
@example("\u212aelly")  # KELVIN SIGN, which str.lower() turns into an ASCII "k"
@example("\u0130nes")  # LATIN CAPITAL I WITH DOT ABOVE
@example("\ud800")
def test_no_text_outside_the_username_alphabet_shares_a_key_with_a_username(text: str) -> None:
    key = accounts.username_key(text)
    assert len(key) == len(text)
    assert key.isascii() == text.isascii()
    if not text.isascii():
        assert not USERNAME_RULE.fullmatch(key)


@plain
@given(st.one_of(any_text, st.none(), st.integers(), st.lists(st.text()), st.booleans()))
@example("alice\n")
@example(" alice")
def test_validation_accepts_exactly_the_username_rule(value: Any) -> None:
    valid = isinstance(value, str) and bool(USERNAME_RULE.fullmatch(value))
    if valid:
        assert accounts.validate_username(value) == value
    else:
        with pytest.raises(InvalidRequest):
            accounts.validate_username(value)


@pytest.fixture
def alice(app: Flask, actions: Actions) -> Flask:
    """The app, with a user named alice."""
    actions.user("alice")
    return app


@with_app
@given(name=st.one_of(usernames, any_text))
@example(name="ALICE")
@example(name="\u212alice")
def test_a_name_finds_the_account_exactly_when_its_key_matches(alice: Flask, name: str) -> None:
    with alice.app_context():
        found = accounts.find(name) if USERNAME_RULE.fullmatch(name) else None
        assert (found is not None) == (accounts.username_key(name) == "alice")


@with_app
@given(username=any_text, password=any_text)
@example(username="\ud800", password="\udfff")
@example(username="a" * 5000, password=PASSWORD)
def test_login_never_fails_but_as_documented(app: Flask, username: str, password: str) -> None:
    # Throttled is the one documented refusal.
    with app.test_request_context(), contextlib.suppress(Throttled):
        assert accounts.authenticate(username, password) is None


def _segment(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["RS256", "HS256", "none", "ES256", ""]) | json_values,
        "kid": st.text(max_size=20) | json_values,
        "typ": st.sampled_from(["at+jwt", "application/at+jwt", "JWT"]) | json_values,
        "crit": json_values,
    },
)
jwt_shaped = st.builds(
    lambda header, payload, signature: ".".join(
        (_segment(header), _segment(payload), _segment(signature))
    ),
    headers | json_values,
    json_values,
    st.binary(max_size=64),
)
claim_values = json_values | st.integers(min_value=-(2**63), max_value=2**63)
claims = st.fixed_dictionaries(
    {},
    optional={
        name: claim_values
        for name in ("iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "scope")
    },
)


@pytest.fixture
def key_app(app: Flask) -> Flask:
    """The app, with a signing key made."""
    with app.app_context():
        current_keyring().signing_key()
    return app


def _verify(app: Flask, token: str) -> None:
    with app.app_context():
        config = current_settings()
        with contextlib.suppress(TokenRejected):  # the one documented refusal
            verify_access_token(token, current_keyring(), config.issuer, config.audience)


@with_app
@given(token=st.one_of(any_text, jwt_shaped))
@example(token="a.b.c")
@example(token="..")
@example(token="\ud800.\ud800.\ud800")
def test_access_token_verification_only_ever_rejects(key_app: Flask, token: str) -> None:
    _verify(key_app, token)


@with_app
@given(payload=claims, typ=st.sampled_from(["at+jwt", "JWT", None]))
def test_our_signature_over_any_claims_is_verified_or_rejected(
    key_app: Flask, payload: dict[str, Any], typ: str | None
) -> None:
    with key_app.app_context():
        key = current_keyring().signing_key()
        header = {"alg": "RS256", "kid": key.kid, **({"typ": typ} if typ else {})}
        token = jwt.encode(header, payload, key)
    _verify(key_app, token)


def _find(app: Flask, token: str) -> None:
    with app.app_context():
        found = find_live_token(token)
    assert found is None or isinstance(found, TokenView)
    assert found is None  # nothing live was issued in this test


@with_app
@given(token=st.one_of(any_text, jwt_shaped))
@example(token="x" * 600)
@example(token="\x00")
@example(token="a.b.c")
@example(token="\ud800")
def test_finding_a_live_token_returns_none_for_anything_not_ours(
    key_app: Flask, token: str
) -> None:
    _find(key_app, token)
