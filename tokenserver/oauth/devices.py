"""The device authorization grant (RFC 8628) on Authlib: the endpoint, the grant, the page's rules.

Each class overrides Authlib only where our contract differs (README "Devices (RFC 8628)").
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from authlib.oauth2.rfc6749.errors import (
    AccessDeniedError,
    InvalidGrantError,
    InvalidScopeError,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc8628 import (
    DEVICE_CODE_GRANT_TYPE,
    AuthorizationPendingError,
    ExpiredTokenError,
    SlowDownError,
)
from authlib.oauth2.rfc8628 import DeviceAuthorizationEndpoint as _DeviceAuthorizationEndpoint
from authlib.oauth2.rfc8628 import DeviceCodeGrant as _DeviceCodeGrant
from authlib.oidc.core import OpenIDToken

from .. import audit
from ..config import current_settings
from ..digests import digest
from ..errors import protocol_step
from ..models import Client, Subject, utcnow
from ..store import devices, users
from ..store.devices import DeviceCredential, PendingDevice
from .codes import SignedIn, _IdTokenClaims
from .grants import _AUTH_METHODS
from .parameters import understood_scope
from .resources import InvalidTargetError, ResourceIndicators, requested, within

DEVICE_CODE_TTL = 600  # seconds a device and its user have to finish (RFC 8628 §3.2 expires_in)
POLL_INTERVAL = 5  # seconds between polls (RFC 8628 §3.2 interval)
SLOW_DOWN_STEP = 5  # RFC 8628 §3.5: each slow_down adds 5 seconds to the interval
# RFC 8628 §6.1: consonants only, so no word and no 0/O or 1/I can be misread; 20^8 codes.
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
_USER_CODE = re.compile(f"[{USER_CODE_ALPHABET}]{{8}}")
_MAX_DEVICE_CODE_LENGTH = 512
_DRAWS = 5  # a user code colliding with a live one is drawn again, a few times at most
# RFC 8628 §3.5: the answers a device gets while it polls its own live code, until and after its
# user answers. An unknown, spent or foreign code is invalid_grant, which is not among them.
_POLLING_ANSWERS = (AuthorizationPendingError, SlowDownError, AccessDeniedError, ExpiredTokenError)


def normalize_user_code(raw: str) -> str | None:
    """A typed user code as stored (8 capitals), or None if it cannot be one of ours.

    Case does not matter, and hyphens and spaces may be left out or put anywhere. Full-width
    letters (an East Asian keyboard's) read as the letters they are (NFKC), and any dash
    (a phone's or a text's typographic one) as the hyphen.
    """
    if len(raw) > 64:
        return None
    kept = (c for c in unicodedata.normalize("NFKC", raw) if unicodedata.category(c) != "Pd")
    letters = re.sub(r"\s", "", "".join(kept)).upper()
    return letters if _USER_CODE.fullmatch(letters) else None


def display_user_code(code: str) -> str:
    """A user code as people read it: XXXX-XXXX."""
    return f"{code[:4]}-{code[4:]}"


class DeviceAuthorizationEndpoint(_DeviceAuthorizationEndpoint):
    """RFC 8628 §3.1-3.2: a device code and a user code for a client registered for the grant."""

    CLIENT_AUTH_METHODS = _AUTH_METHODS  # exactly as at the token endpoint
    EXPIRES_IN = DEVICE_CODE_TTL
    INTERVAL = POLL_INTERVAL

    def get_verification_uri(self) -> str:
        return f"{current_settings().issuer}/device"

    def create_endpoint_response(self, request: Any) -> tuple[int, dict[str, Any], Any]:
        # Authlib stores the scope as asked, lets any client in, and keeps the codes in the
        # clear; ours narrows the scope, needs the grant, binds resources and keeps digests.
        client: Client = self.authenticate_client(request)
        if not client.check_grant_type(DEVICE_CODE_GRANT_TYPE):
            raise UnauthorizedClientError("This client may not use the device grant.")
        asked = understood_scope(request.payload.scope)
        self.server.validate_requested_scope(asked)
        scope = client.get_allowed_scope(asked)  # invalid_scope if wider
        resources = requested(request.payload.data, client)  # invalid_target if not its own
        device = devices.NewDevice(client.client_id, scope, " ".join(resources), self.INTERVAL)
        device_code = self.generate_device_code()
        for _ in range(_DRAWS):
            user_code = normalize_user_code(self.generate_user_code())
            assert user_code is not None  # Authlib draws XXXX-XXXX from our alphabet
            if devices.save(digest(device_code), digest(user_code), device, self.EXPIRES_IN):
                break
        else:
            raise RuntimeError("no free user code after several draws")
        audit.event("device.authorization_started", client_id=client.client_id, scope=scope)
        uri = self.get_verification_uri()
        shown = display_user_code(user_code)
        body = {
            "device_code": device_code,
            "user_code": shown,
            "verification_uri": uri,
            "verification_uri_complete": f"{uri}?user_code={shown}",
            "expires_in": self.EXPIRES_IN,
            "interval": self.INTERVAL,
        }
        return 200, body, _NO_STORE


_NO_STORE = [
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("Pragma", "no-cache"),
]


class DeviceCodeGrant(ResourceIndicators, _DeviceCodeGrant):
    """RFC 8628 §3.4-3.5: polled until the user decides, then tokens once."""

    TOKEN_ENDPOINT_AUTH_METHODS = _AUTH_METHODS

    def authenticate_token_endpoint_client(self) -> Client:
        # Authlib names the client on the request only after reading the code; ours reads the
        # code of that client only, so another client's code is unknown to it.
        client: Client = super().authenticate_token_endpoint_client()
        self.request.client = client
        return client

    def query_device_credential(self, device_code: str) -> DeviceCredential:
        # Authlib answers an unknown code with invalid_request and another client's with
        # unauthorized_client; RFC 6749 §5.2 says invalid_grant for both.
        client: Client = self.request.client
        credential = None
        if device_code.isascii() and len(device_code) <= _MAX_DEVICE_CODE_LENGTH:
            credential = devices.find(digest(device_code), client.client_id)
        if credential is None:
            raise InvalidGrantError("The device code is invalid, expired or spent.")
        # A client that narrowed its registered scope since (RFC 7592) gets what is left of
        # the approval, as its refresh tokens do; Authlib would spend the code, then refuse.
        return replace(credential, scope=client.still_registered(credential.scope))

    def validate_device_credential(self, credential: DeviceCredential) -> Subject:
        try:
            return self._poll(credential)
        except _POLLING_ANSWERS:
            # A device polls every few seconds for up to 10 minutes (and a careless one keeps
            # on after a denial or expiry): counted as failures, two sign-ins would spend the
            # IP's token-endpoint budget and turn away every token request from that address. Only a
            # genuine code gets here (42 random characters: no guess), and slow_down paces it.
            protocol_step()
            raise

    def _poll(self, credential: DeviceCredential) -> Subject:
        """The user's answer, or why there is none yet; the tokens' subject once allowed."""
        # Authlib reads the user's decision and the poll time apart; each outcome here is
        # decided by one conditional UPDATE, so two polls cannot both get the tokens.
        now = utcnow()
        if credential.used_at is not None:
            raise InvalidGrantError("The device code is invalid, expired or spent.")
        if credential.expires_at <= now:
            raise ExpiredTokenError("The device code has expired; start again.")
        if credential.status == devices.DENIED:
            raise AccessDeniedError("The user denied the request.")
        if credential.status == devices.ALLOWED:
            return self._spend(credential, now)
        last = credential.last_polled_at
        too_soon = last is not None and now - last < timedelta(seconds=credential.interval)
        interval = credential.interval + SLOW_DOWN_STEP if too_soon else credential.interval
        # A poll that lost the race to another poll of the same code came too soon too.
        if not devices.record_poll(credential, now, interval) or too_soon:
            raise SlowDownError(f"Polled too often: wait {interval} seconds between polls.")
        raise AuthorizationPendingError("The user has not answered yet.")

    def _spend(self, credential: DeviceCredential, now: datetime) -> Subject:
        asked = requested(self.request.payload.data, self.request.client)
        if not within(asked, credential.resources.split()):  # checked before spending
            raise InvalidTargetError("The resource is wider than the original grant.")
        if not credential.scope:  # nothing of the approval is left to the client
            raise InvalidScopeError("No scope of this approval is left to this client.")
        if not devices.spend(credential, now):
            raise InvalidGrantError("The device code is invalid, expired or spent.")
        # Spent first: a user disabled since approving leaves the code dead, not waiting.
        user = users.subject(credential.user_id) if credential.user_id is not None else None
        if user is None or user.disabled:
            raise InvalidGrantError("The device code is invalid, expired or spent.")
        return user

    def granted_resources(self) -> list[str]:
        # RFC 8707 §2.2: the token request may narrow the authorization's resources only.
        credential: DeviceCredential = self.request.credential
        return credential.resources.split()


class DeviceIdToken(_IdTokenClaims, OpenIDToken):
    """OpenID Connect Core §2: the device grant's id_token, with when the approver signed in."""

    def encode_id_token(self, token: dict[str, Any], request: Any) -> str:
        # Authlib reads auth_time only from an authorization code; the device code carries it.
        request.authorization_code = request.credential
        encoded: str = super().encode_id_token(token, request)
        return encoded

    def get_authorization_code_claims(self, authorization_code: Any) -> dict[str, Any]:
        claims: dict[str, Any] = super().get_authorization_code_claims(authorization_code)
        # The approver's browser session, as a code's id_token names it; refreshes keep it.
        credential: DeviceCredential = authorization_code
        if credential.session_id is not None:
            claims["sid"] = credential.session_id
        return claims


def pending(user_code: str) -> PendingDevice | None:
    """The live, undecided authorization a typed user code names, if any."""
    code = normalize_user_code(user_code)
    return devices.pending(digest(code)) if code else None


def answer_of(user_code: str, signed_in: SignedIn) -> bool | None:
    """The answer this browser session gave a live code (True: allowed), if it gave one.

    Only to the session that answered: it knew the code, so this tells a guesser nothing.
    """
    code = normalize_user_code(user_code)
    return _answer_in(digest(code), signed_in) if code else None


def _answer_in(code_hash: str, signed_in: SignedIn) -> bool | None:
    status = devices.answered_in(code_hash, signed_in.session_id)
    return None if status is None else status == devices.ALLOWED


def decide(user_code: str, signed_in: SignedIn, allowed: bool) -> bool:
    """The signed-in user's answer for a pending code; False if it was decided or expired,
    unless this browser session gave it the same answer already (a double click on Allow, the
    form sent again after Back): that is the answer it has, not a wrong code."""
    code = normalize_user_code(user_code)
    if code is None:
        return False
    code_hash = digest(code)
    found = devices.pending(code_hash)
    user = signed_in.user
    session = signed_in.session_id
    if found is None or not devices.decide(
        code_hash, user.id, allowed, signed_in.auth_time, session
    ):
        return _answer_in(code_hash, signed_in) == allowed
    audit.event(
        "device.allowed" if allowed else "device.denied",
        client_id=found.client_id,
        user_id=user.id,
        username=user.username,
    )
    return True
