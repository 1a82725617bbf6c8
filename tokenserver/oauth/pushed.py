"""Pushed authorization requests (RFC 9126).

A client posts its authorization request to /oauth/par, authenticated as at the token
endpoint, and gets a request_uri that stands for it; the browser then carries only client_id
and request_uri. The request is checked when it is pushed (the client hears what is wrong as
JSON, not the user as a page), its parameters never travel through the browser (nor its
history, logs or referrers), and a request too long for a URL fits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749.endpoint import Endpoint, EndpointRequest
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from werkzeug.datastructures import MultiDict

from ..digests import digest, new_secret
from ..models import Client
from ..store import pushed as store
from . import dpop
from .authorize import BadAuthorizationRequest, RedirectBack, validate
from .grants import _AUTH_METHODS
from .parameters import AUTHORIZATION_PARAMETERS
from .server import current_server

# RFC 9126 §2.2: the URN prefix of a request_uri the server made up.
REQUEST_URI_PREFIX = "urn:ietf:params:oauth:request_uri:"
# Seconds a pushed request lives: long enough to sign in and consent on the way, since the
# request_uri is what the browser carries through /login and /consent (FAPI 2.0: under 600).
LIFETIME = 300
_MAX_REQUEST_URI = 128  # ours are about 80 characters
# What one stored request may take (JSON of its parameters): far more than any real request,
# far less than what a stranger pushing for a public client could otherwise store.
_MAX_STORED = 8192
Answer = store.Answer  # a code, or an error at the redirect URI
EXPIRED = "This sign-in link has expired or has been used."
PUSH_REQUIRED = "This app starts its sign-ins itself; this link did not come from it."


class InvalidPushError(OAuth2Error):
    """A pushed request the authorization endpoint would refuse, with the error it would give."""

    status_code = 400

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description=description)
        self.error = error


@dataclass
class _Push(EndpointRequest):
    parameters: list[tuple[str, str]] | None = None


class PushedAuthorizationEndpoint(Endpoint):  # type: ignore[misc]
    """RFC 9126 §2: store a checked authorization request; answer its request_uri."""

    ENDPOINT_NAME = "pushed_authorization"
    CLIENT_AUTH_METHODS = _AUTH_METHODS  # exactly as at the token endpoint

    def validate_request(self, request: Any) -> _Push:
        # The proof before the client, as at the token endpoint: a proof refused (for its nonce,
        # say) leaves the client's assertion unspent for the retry.
        jkt = _proof_thumbprint()
        client: Client = self.server.authenticate_client(
            request, self.CLIENT_AUTH_METHODS, self.ENDPOINT_NAME
        )
        form: MultiDict[str, str] = request.payload.data
        if "request_uri" in form:
            # RFC 9126 §2.1: a pushed request cannot name another one.
            raise InvalidRequestError("'request_uri' must not be pushed.")
        # Client authentication is not part of the request, and unknown parameters are ignored
        # (RFC 6749 §3.1): neither is stored.
        parameters = [("client_id", client.client_id)] + [
            (name, value)
            for name, value in form.items(multi=True)
            if name in AUTHORIZATION_PARAMETERS and name != "client_id"
        ]
        parameters = _bound_to_proof(parameters, jkt)
        if len(json.dumps(parameters)) > _MAX_STORED:
            raise InvalidRequestError("The authorization request is too large.")
        _check(parameters)
        return _Push(request, client, parameters)

    def create_response(self, validated: _Push) -> tuple[int, dict[str, Any], list[Any]]:
        assert validated.parameters is not None
        request_uri = REQUEST_URI_PREFIX + new_secret(32)
        store.save(digest(request_uri), validated.client.client_id, validated.parameters, LIFETIME)
        body = {"request_uri": request_uri, "expires_in": LIFETIME}
        return 201, body, [("Content-Type", "application/json"), ("Cache-Control", "no-store")]


def _proof_thumbprint() -> str | None:
    """The thumbprint of the key of the DPoP proof sent with the push, if any."""
    try:
        return dpop.request_proof()
    except dpop.InvalidProof as exc:
        raise dpop.refusal(exc) from None


def _bound_to_proof(parameters: list[tuple[str, str]], jkt: str | None) -> list[tuple[str, str]]:
    """RFC 9449 §10.1: a DPoP proof sent with the push binds the code to its key, as dpop_jkt
    would; both sent must name the same key."""
    if jkt is None:
        return parameters
    sent = [value for name, value in parameters if name == "dpop_jkt"]
    if sent and sent != [jkt]:
        raise dpop.InvalidDPoPProofError("dpop_jkt is not the thumbprint of the proof's key.")
    return parameters if sent else [*parameters, ("dpop_jkt", jkt)]


def _check(parameters: list[tuple[str, str]]) -> None:
    """Check a pushed request as the authorization endpoint will (RFC 9126 §2.1), except for
    who is signed in: prompt=none is judged when the browser arrives."""
    checked = MultiDict(parameters)
    prompts = (checked.get("prompt") or "").split()
    if "none" in prompts and len(checked.getlist("prompt")) == 1:  # repeated: refused below
        if len(prompts) > 1:
            raise InvalidRequestError("prompt=none stands alone")
        checked.setlist("prompt", [])
    try:
        validate(None, checked)
    except BadAuthorizationRequest as exc:
        raise InvalidRequestError(exc.description) from None
    except RedirectBack as exc:
        raise InvalidPushError(exc.error, exc.description) from None


@dataclass(frozen=True)
class PushedRequest:
    """The request a request_uri stands for, and what the browser carries instead of it."""

    parameters: MultiDict[str, str]
    reference: MultiDict[str, str]  # client_id and request_uri
    pushed_at: datetime
    request_uri_hash: str


def resolve(parameters: MultiDict[str, str], session_id: str | None) -> PushedRequest | None:
    """The pushed request an authorization request names by request_uri, or None if it names
    none; BadAuthorizationRequest if it is not a live one of this client's, unanswered or
    answered by this browser session (`session_id`, None if no one is signed in).

    Only the pushed parameters count: anything sent beside client_id and request_uri is
    ignored, so the browser cannot change what the client pushed.
    """
    uris = parameters.getlist("request_uri")
    if not uris or not uris[0].startswith(REQUEST_URI_PREFIX):
        return None  # none, or a request object's address: refused as unsupported (parameters.py)
    uri = uris[0]
    if len(uris) > 1 or len(uri) > _MAX_REQUEST_URI:
        raise BadAuthorizationRequest("The request_uri is not one this server issued.")
    if len(parameters.getlist("client_id")) > 1:  # RFC 6749 §3.1, as for any request
        raise BadAuthorizationRequest("'client_id' must not be given more than once.")
    request_uri_hash = digest(uri)
    found = store.find(request_uri_hash, session_id)
    if found is None or found.client_id != parameters.get("client_id"):
        raise BadAuthorizationRequest(EXPIRED)
    reference = MultiDict([("client_id", found.client_id), ("request_uri", uri)])
    return PushedRequest(MultiDict(found.parameters), reference, found.pushed_at, request_uri_hash)


def check_not_required(parameters: MultiDict[str, str]) -> None:
    """BadAuthorizationRequest if the request names a client registered to push its requests
    first (RFC 9126 §6): anyone could have built this one, so it is not even looked at."""
    client_id = parameters.get("client_id")
    client = current_server().clients.get(client_id) if client_id else None
    if client is not None and client.pushed_only:
        raise BadAuthorizationRequest(PUSH_REQUIRED)


def finish(pushed: PushedRequest, session_id: str | None, answer: Answer) -> None:
    """Mark a pushed request answered by this browser session (None if no one is signed in)
    with a code or an error, before that answer is sent.

    RFC 9126 §4 allows a request answered again when the user reloads or resubmits: the
    browser shows the last answer, so a double click on Allow, or the form sent again after
    Back, must not end on an error page while the app was sent a code it will never get. Only
    the session that answered may, and only the same way: after the app was told
    access_denied, Back and Allow must not send it a code for the same request. Any other
    browser, a replayed URL without a session, or a racing request from elsewhere is refused
    as expired.
    """
    if not store.spend(pushed.request_uri_hash, session_id, answer):
        raise BadAuthorizationRequest(EXPIRED)
