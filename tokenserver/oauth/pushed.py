"""Pushed authorization requests (RFC 9126).

A client posts its authorization request to /oauth/par, authenticated as at the token
endpoint, and gets a request_uri that stands for it; the browser then carries only client_id
and request_uri. The request is checked when it is pushed (the client hears what is wrong as
JSON, not the user as a page), its parameters never travel through the browser (nor its
history, logs or referrers), and a request too long for a URL fits.
"""

from __future__ import annotations

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
from .authorize import BadAuthorizationRequest, RedirectBack, validate
from .grants import _AUTH_METHODS

# RFC 9126 §2.2: the URN prefix of a request_uri the server made up.
REQUEST_URI_PREFIX = "urn:ietf:params:oauth:request_uri:"
# Seconds a pushed request lives: long enough to sign in and consent on the way, since the
# request_uri is what the browser carries through /login and /consent (FAPI 2.0: under 600).
LIFETIME = 300
# Client authentication travels with the push; it is not part of the authorization request.
_CLIENT_AUTHENTICATION = frozenset({"client_secret", "client_assertion", "client_assertion_type"})
_MAX_REQUEST_URI = 128  # ours are about 80 characters
# Errors that depend on who is signed in (OpenID Connect Core §3.1.2.6): judged when the
# browser arrives, as they would be for the same request sent without pushing it.
_ABOUT_THE_USER = frozenset(
    {"login_required", "consent_required", "interaction_required", "account_selection_required"}
)
EXPIRED = "This sign-in link has expired or has been used: go back to the app and start again."


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
        client: Client = self.server.authenticate_client(
            request, self.CLIENT_AUTH_METHODS, self.ENDPOINT_NAME
        )
        form: MultiDict[str, str] = request.payload.data
        if "request_uri" in form:
            # RFC 9126 §2.1: a pushed request cannot name another one.
            raise InvalidRequestError("'request_uri' must not be pushed.")
        parameters = [
            (name, value)
            for name, value in form.items(multi=True)
            if name not in _CLIENT_AUTHENTICATION and name != "client_id"
        ]
        parameters.insert(0, ("client_id", client.client_id))  # the authenticated client's
        try:
            validate(None, MultiDict(parameters))
        except BadAuthorizationRequest as exc:
            raise InvalidRequestError(exc.description) from None
        except RedirectBack as exc:
            if exc.error not in _ABOUT_THE_USER:
                raise InvalidPushError(exc.error, exc.description) from None
        return _Push(request, client, parameters)

    def create_response(self, validated: _Push) -> tuple[int, dict[str, Any], list[Any]]:
        assert validated.parameters is not None
        request_uri = REQUEST_URI_PREFIX + new_secret(32)
        store.save(digest(request_uri), validated.client.client_id, validated.parameters, LIFETIME)
        body = {"request_uri": request_uri, "expires_in": LIFETIME}
        return 201, body, [("Content-Type", "application/json"), ("Cache-Control", "no-store")]


@dataclass(frozen=True)
class PushedRequest:
    """The request a request_uri stands for, and what the browser carries instead of it."""

    parameters: MultiDict[str, str]
    reference: MultiDict[str, str]  # client_id and request_uri
    pushed_at: datetime
    request_uri_hash: str


def resolve(parameters: MultiDict[str, str]) -> PushedRequest | None:
    """The pushed request an authorization request names by request_uri, or None if it names
    none; BadAuthorizationRequest if it is not a live one of this client's.

    Only the pushed parameters count: anything sent beside client_id and request_uri is
    ignored, so the browser cannot change what the client pushed.
    """
    uris = parameters.getlist("request_uri")
    if not uris or not uris[0].startswith(REQUEST_URI_PREFIX):
        return None  # none, or a request object's address: refused as unsupported (parameters.py)
    uri = uris[0]
    if len(uris) > 1 or len(uri) > _MAX_REQUEST_URI:
        raise BadAuthorizationRequest("The request_uri is not one this server issued.")
    request_uri_hash = digest(uri)
    found = store.find(request_uri_hash)
    if found is None or found.client_id != parameters.get("client_id"):
        raise BadAuthorizationRequest(EXPIRED)
    reference = MultiDict([("client_id", found.client_id), ("request_uri", uri)])
    return PushedRequest(MultiDict(found.parameters), reference, found.pushed_at, request_uri_hash)


def finish(pushed: PushedRequest) -> None:
    """Mark a pushed request answered, before its code or error is sent; once only (RFC 9126
    §4), so a second tab, a replayed URL or a racing request is refused as expired."""
    if not store.spend(pushed.request_uri_hash):
        raise BadAuthorizationRequest(EXPIRED)
