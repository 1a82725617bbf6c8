"""Client authentication: exactly one method per request, chosen by what the request presents."""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any
from urllib.parse import unquote

from authlib.oauth2.rfc6749.authenticate_client import (
    ClientAuthentication as _ClientAuthentication,
)
from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidRequestError

from .. import audit
from .assertions import PrivateKeyJWT, unverified_parts

log = logging.getLogger(__name__)

# One answer for every failure: an unknown client and a wrong secret must read the same.
FAILED = "Client authentication failed."


class ClientAuthentication(_ClientAuthentication):
    """Authlib's registry of methods, used one method per request (RFC 6749 §2.3).

    Authlib tries each allowed method in turn, so a request whose Basic secret is wrong still
    authenticated as the public client its body named: credentials that fail must fail the
    request. The method is the one the request presents (Basic header, assertion, secret in
    the body, bare client_id); presenting two is invalid_request, and any failure of the one
    is one 401 invalid_client, audited.
    """

    def __init__(self, query_client: Any, private_key_jwt: PrivateKeyJWT) -> None:
        super().__init__(query_client)
        # Authlib's decoder lets a non-UTF-8 header escape as a 500; ours refuses it.
        self.register("client_secret_basic", _authenticate_basic)
        self.register("private_key_jwt", private_key_jwt)

    def authenticate(self, request: Any, methods: list[str], endpoint: str) -> Any:
        presented = presented_methods(request)
        if len(presented) > 1:
            # RFC 6749 §2.3: "The client MUST NOT use more than one authentication method in
            # each request" (§5.2: invalid_request); else a wrong second secret passes unread.
            raise InvalidRequestError(
                "The request uses more than one client authentication method."
            )
        method = presented[0] if presented else None
        client = None
        if method in methods and method in self._methods:
            try:
                client = self._methods[method](self.query_client, request)
            except InvalidClientError as exc:
                # Why, for the operator only (never a secret: a claim name, a key problem).
                log.info("%s authentication failed: %s", method, exc.description)
                client = None
        if client is not None and not _may_use(client, method, endpoint):
            client = None
        if client is None:
            _audit_failure(request, method, endpoint, self.query_client)
            raise InvalidClientError(status_code=401, description=FAILED)
        claimed = request.payload.data.get("client_id")
        if claimed and claimed != client.client_id:
            # Which client asks must not depend on which of two ids the server reads (an
            # assertion's is checked against its sub in assertions.py, before this).
            raise InvalidRequestError("'client_id' does not name the authenticated client.")
        request.auth_method = method
        return client


def presented_methods(request: Any) -> list[str]:
    """Every authentication method this request presents (none, one, or too many)."""
    form = request.payload.data
    presented = []
    # Any header of the Basic scheme counts, however malformed (`Basic` alone, a tab after
    # it): else its failure would be skipped and the public client the body names let in.
    # Other schemes are not client authentication here, and are left unread.
    if _authorization(request.headers)[0] == "basic":
        presented.append("client_secret_basic")
    if form.get("client_assertion") or form.get("client_assertion_type"):
        presented.append("private_key_jwt")
    if form.get("client_secret"):
        presented.append("client_secret_post")
    if not presented and form.get("client_id"):
        presented.append("none")
    return presented


def basic_credentials(headers: Any) -> tuple[str, str] | None:
    """The client id and secret of an `Authorization: Basic` header, or None if malformed."""
    scheme, credentials = _authorization(headers)
    if scheme != "basic":
        return None
    try:
        # A header is read as Latin-1: bytes past ASCII reach b64decode as a str it refuses
        # with a bare ValueError (not binascii.Error), which must not escape as a 500.
        decoded = base64.b64decode(credentials.encode("ascii"), validate=True).decode("utf-8")
    except (UnicodeError, binascii.Error):
        return None
    client_id, colon, secret = decoded.partition(":")
    if not colon or not client_id or not secret:
        return None
    # RFC 6749 §2.3.1: both parts are form-urlencoded before being joined.
    return unquote(client_id), unquote(secret)


def _authorization(headers: Any) -> tuple[str, str]:
    """The Authorization header's scheme, lowercased (RFC 9110 §11.1), and what follows it."""
    parts = (headers.get("Authorization") or "").split(None, 1)
    if not parts:
        return "", ""
    return parts[0].lower(), parts[1].strip() if len(parts) > 1 else ""


def _authenticate_basic(query_client: Any, request: Any) -> Any:
    credentials = basic_credentials(request.headers)
    if credentials is None:
        return None
    client = query_client(credentials[0])
    if client is None or not client.check_client_secret(credentials[1]):
        return None
    return client


def _may_use(client: Any, method: str | None, endpoint: str) -> bool:
    if not client.check_endpoint_auth_method(method, endpoint):
        return False
    # RFC 6749 §3.2.1: a confidential client must authenticate, never pass as public.
    return method != "none" or client.check_endpoint_auth_method("none", "token")


def _audit_failure(request: Any, method: str | None, endpoint: str, query_client: Any) -> None:
    """One audit line per failed client authentication; the claimed id only if it is real."""
    claimed = _claimed_client_id(request, method)
    known = claimed is not None and query_client(claimed) is not None
    audit.event(
        "client.auth_failed",
        method=method,
        endpoint=endpoint,
        client_id=claimed if known else None,
    )


def _claimed_client_id(request: Any, method: str | None) -> str | None:
    if method == "client_secret_basic":
        credentials = basic_credentials(request.headers)
        return credentials[0] if credentials else None
    client_id = request.payload.data.get("client_id")
    if client_id is None and method == "private_key_jwt":
        client_id = _assertion_subject(request.payload.data.get("client_assertion"))
    return client_id if isinstance(client_id, str) else None


def _assertion_subject(assertion: Any) -> Any:
    """The unverified `sub` of a client assertion: whom it claims to be, for the audit line."""
    parts = unverified_parts(assertion) if isinstance(assertion, str) else None
    return parts[1].get("sub") if parts is not None else None
