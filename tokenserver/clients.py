"""Registering, updating and deleting OAuth clients: the rules every path shares (CLI, API).

A client authenticates one way: a secret (confidential), its keys (`private_key_jwt`,
RFC 7523, a JWKS inline or at a URL), or nothing (public, PKCE only). Every change is audited
here, never by the caller.
"""

from __future__ import annotations

import ipaddress
import json
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, current_app

from . import audit
from .client_jwks import KeysUnavailable, public_key_set
from .digests import digest, new_identifier, new_secret
from .errors import APIError, NotFound
from .models import (
    BROWSER_GRANTS,
    DEFAULT_GRANTS,
    DEVICE_CODE,
    OIDC_SCOPES,
    SCOPES,
    TOKEN_EXCHANGE,
    Client,
    isoformat,
    utcnow,
)
from .redirects import LOOPBACK_HOSTS, UNREADABLE, readable_parts, redirect_uri_problem
from .resource_uris import uri_problem as resource_problem
from .store import clients as store
from .store import initial_tokens, transaction
from .store.tokens import revoking


class InvalidClientMetadata(APIError):
    """RFC 7591 §3.2.2: a client metadata field breaks a rule; the description names it."""

    error = "invalid_client_metadata"


class InvalidRedirectURI(InvalidClientMetadata):
    """RFC 7591 §3.2.2: a redirect URI cannot be registered."""

    error = "invalid_redirect_uri"


_MAX_JWKS_URI_LENGTH = 2048  # the column's width
_MAX_NAME_LENGTH = 200  # shown on the consent page and in `clients list`
# Bidirectional embeddings, overrides and isolates: they would let a name read as another.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Control characters, the line and paragraph separators (U+2028, U+2029) that also end a line,
# and half a surrogate pair: JSON may spell one, but no database's text can hold it.
_BREAKING = frozenset({"Cc", "Zl", "Zp", "Cs"})
# Format characters (zero-width space, soft hyphen...) and marks that show only on a letter.
_UNSEEN = frozenset({"Cf", "Mn", "Me"})
# Letters and symbols that are drawn as blank space (Hangul fillers, the blank Braille cell).
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
_CHANGE_CALLBACKS = "tokenserver.client_change_callbacks"  # app.extensions key, see on_change


@dataclass(frozen=True)
class ClientSpec:
    """What a client is registered with; empty fields take the documented defaults."""

    name: str
    public: bool = False
    grants: tuple[str, ...] = ()
    scope: str | None = None
    introspect: bool = False
    redirect_uris: tuple[str, ...] = ()
    first_party: bool = False
    audiences: tuple[str, ...] = ()
    jwks: dict[str, Any] | None = None  # a JWKS document of public keys (private_key_jwt)
    jwks_uri: str | None = None  # or where to fetch one
    # A secret client's RFC 7591 token_endpoint_auth_method; None is client_secret_basic.
    secret_auth_method: str | None = None
    # RFC 9449 §5.2 dpop_bound_access_tokens: token requests without a DPoP proof are refused.
    dpop_bound: bool = False
    # RFC 9126 §6 require_pushed_authorization_requests: only pushed authorization requests.
    pushed_only: bool = False


@dataclass(frozen=True)
class DynamicRegistration:
    """A client registered over RFC 7591, with what is shown only now."""

    client: Client
    secret: str | None  # None unless it authenticates by secret
    registration_token: str  # RFC 7592: manages this client, and only it


def register_client(spec: ClientSpec) -> tuple[Client, str | None]:
    """Register a client; returns it with its secret (None unless it authenticates by secret).

    Raises InvalidClientMetadata naming the first thing wrong with the spec; nothing is stored
    then.
    """
    columns, secret = _new_client(spec)
    store.add(columns)
    client = _stored(columns["client_id"])
    _changed(client.client_id)
    _audit("client.created", client)
    return client, secret


def register_first(spec: ClientSpec) -> tuple[Client | None, str | None]:
    """The client named `spec.name`, registered from `spec` if no client exists at all (its
    secret is returned then only); (None, None) if others exist and none is so named."""
    found = store.named(spec.name)
    if found is not None:
        return found, None
    if store.any_registered():
        return None, None
    return register_client(spec)


def list_all() -> list[Client]:
    """Every registered client, oldest first."""
    return store.every()


def register_dynamic_client(spec: ClientSpec, initial_access_token: str) -> DynamicRegistration:
    """Register a client over RFC 7591, spending the operator's single-use initial access token.

    Dynamically registered clients follow stricter rules (see _dynamic_rules). The spec is
    checked in full before the token is spent, so bad metadata costs nothing; the token is
    spent by one conditional UPDATE, so two requests racing with it register one client.
    """
    _dynamic_rules(spec)
    columns, secret = _new_client(spec)
    registration_token = new_secret(32)
    columns["registration_token_hash"] = digest(registration_token)  # stored only as a digest
    with transaction() as tx:  # the token is spent if, and only if, the client is stored
        if not initial_tokens.spend(digest(initial_access_token), columns["client_id"], tx):
            raise invalid_token("The initial access token is unknown, expired or already used.")
        store.add(columns, tx)
    client = _stored(columns["client_id"])
    _changed(client.client_id)
    _audit("client.created", client, dynamic=True)
    return DynamicRegistration(client, secret, registration_token)


def update_client(client_id: str, spec: ClientSpec) -> tuple[Client, str | None]:
    """Replace a client's metadata with `spec` (RFC 7592 §2.2), under the rules it was made by.

    Its id, registration token and, while it stays a secret client, its secret are kept; a
    client that becomes a secret client gets a new secret, returned once (else None); a client
    that becomes public loses its live logins. Raises
    InvalidClientMetadata, changing nothing, if the spec breaks a rule.
    """
    client = _stored(client_id)
    if client.registration_token_hash is not None:
        _dynamic_rules(spec)
    columns, by_secret = _checked_columns(spec, client_id)
    secret = None
    if not by_secret:
        columns |= {
            "secret_hash": None,
            "previous_secret_hash": None,
            "previous_secret_expires_at": None,
        }
    elif client.secret_hash is None:
        secret = new_secret(32)
        columns["secret_hash"] = digest(secret)
    # A login granted while the client had to authenticate must not outlive that rule: as a
    # public client, anyone holding one of its refresh tokens could spend it with no credential.
    weakened = not client.is_public and spec.public
    with transaction() as tx:
        if not store.change(client_id, columns, tx):
            raise NotFound(f"no client with id {client_id!r}")  # deleted meanwhile
        ended = revoking.revoke_client_logins(client_id, tx) if weakened else 0
    client = _stored(client_id)
    _changed(client_id)
    _audit("client.updated", client, new_secret=secret is not None, ended=ended)
    return client, secret


def registered_spec(client_id: str) -> ClientSpec:
    """What `client_id` is registered with now, as update_client takes it back unchanged."""
    client = _stored(client_id)
    return ClientSpec(
        client.name,
        client.is_public,
        tuple(client.grants),
        client.scope,
        client.can_introspect,
        tuple(client.redirect_uri_list),
        client.first_party,
        tuple(client.audience_list),
        json.loads(client.jwks) if client.jwks else None,
        client.jwks_uri,
        client.secret_auth_method,
        dpop_bound=client.dpop_bound,
        pushed_only=client.pushed_only,
    )


def delete_client(client_id: str) -> None:
    """Delete a client and, by cascade, every token and code issued to it."""
    gone = store.remove(client_id)
    _changed(client_id)
    if not gone:
        raise NotFound(f"no client with id {client_id!r}")
    audit.event("client.deleted", client_id=client_id)


def rotate_secret(client_id: str, overlap: int) -> tuple[str, datetime | None]:
    """Give a confidential client a new secret (returned once); the old one works `overlap`
    seconds more (0: not at all). Returns the secret and the old one's end, if it has one."""
    client = store.find(client_id)
    if client is None:
        raise NotFound(f"no client with id {client_id!r}")
    if client.secret_hash is None:
        kind = "public" if client.is_public else "authenticated by its keys"
        raise APIError(f"client {client_id} is {kind}: it has no secret to rotate")
    secret, now = new_secret(32), utcnow()
    until = now + timedelta(seconds=overlap) if overlap > 0 else None
    previous = client.secret_hash if until else None
    if not store.replace_secret(client_id, client.secret_hash, digest(secret), previous, until):
        raise APIError(f"the secret of client {client_id} changed meanwhile; try again")
    _changed(client_id)
    audit.event(
        "client.secret_rotated",
        client_id=client_id,
        overlap=overlap,
        previous_valid_until=isoformat(until) if until else None,
    )
    return secret, until


def on_change(app: Flask, callback: Callable[[str], None]) -> None:
    """Have `callback(client_id)` called each time `app` registers, changes or deletes a client.

    The authorization server (oauth/) drops this worker's copy of the client that way, and CORS
    its copy of the web origins; other processes' copies expire within a second.
    """
    app.extensions.setdefault(_CHANGE_CALLBACKS, []).append(callback)


def _changed(client_id: str) -> None:
    """Tell what registered with on_change that this client was just changed or deleted."""
    for callback in current_app.extensions.get(_CHANGE_CALLBACKS, ()):
        callback(client_id)


def managed_client(client_id: str, registration_token: str) -> Client | None:
    """The client `registration_token` manages, if it is `client_id`; else None (RFC 7592 §3).

    Looked up by both, so one client's token never reaches another client.
    """
    return store.find_managed(client_id, digest(registration_token))


def issue_initial_access_token(expires_in: int) -> tuple[str, datetime]:
    """A new RFC 7591 initial access token (shown once) and when it expires.

    Single use: it registers one client. An operator hands one to one party for one app; a
    leaked token then registers at most one client, never an unbounded number.
    """
    token = new_secret(32)
    expires_at = utcnow() + timedelta(seconds=expires_in)
    initial_tokens.issue(digest(token), expires_at)
    audit.event("client.registration_token_issued", expires_at=isoformat(expires_at))
    return token, expires_at


def initial_access_token_usable(token: str) -> bool:
    """Whether `token` is a live, unspent initial access token (the spend itself is atomic)."""
    return initial_tokens.usable(digest(token))


def invalid_token(description: str) -> APIError:
    """RFC 6750 §3.1: a bearer token for registration that is wrong, expired or spent.

    The realm is oauth/protect.py's REALM, as on every bearer-protected route.
    """
    challenge = (
        f'Bearer realm="tokenserver", error="invalid_token", error_description="{description}"'
    )
    return APIError(
        description, status=401, error="invalid_token", headers={"WWW-Authenticate": challenge}
    )


def _new_client(spec: ClientSpec) -> tuple[dict[str, Any], str | None]:
    """The columns of a new client made from `spec`, with its secret if it authenticates by
    one."""
    client_id = new_identifier()
    columns, by_secret = _checked_columns(spec, client_id)
    secret = new_secret(32) if by_secret else None
    columns |= {
        "client_id": client_id,
        "secret_hash": digest(secret) if secret else None,
        "created_at": utcnow(),
    }
    return columns, secret


def _stored(client_id: str) -> Client:
    client = store.find(client_id)
    if client is None:
        raise NotFound(f"no client with id {client_id!r}")
    return client


def readable_name(name: str) -> bool:
    """Whether a client's name has no control characters or line breaks (a newline would split
    a row of `clients list`), no bidirectional controls, and, unless empty, something to see;
    any other Unicode (a no-break or ideographic space, an emoji's joiner, a right-to-left mark)
    is a name's own."""
    if any(unicodedata.category(c) in _BREAKING or c in _BIDI_CONTROLS for c in name):
        return False
    # The consent page says "<name> wants to use your account": a name of spaces or zero-width
    # characters would leave the user nothing to recognise the app by.
    return not name or any(_visible(c) for c in name)


def _visible(char: str) -> bool:
    return not (char.isspace() or unicodedata.category(char) in _UNSEEN or char in _BLANK_LETTERS)


def _checked_columns(spec: ClientSpec, client_id: str) -> tuple[dict[str, Any], bool]:
    """The columns of client `client_id` made from `spec`, and whether it authenticates by
    secret.

    Raises InvalidClientMetadata (InvalidRedirectURI for a redirect URI) naming the field.
    """
    if len(spec.name) > _MAX_NAME_LENGTH or not readable_name(spec.name):
        raise InvalidClientMetadata(
            f"client_name: at most {_MAX_NAME_LENGTH} characters, something visible among them, "
            "none of them control characters or line breaks"
        )
    grants = list(dict.fromkeys(spec.grants or _default_grants(spec)))
    keyed = spec.jwks is not None or spec.jwks_uri is not None
    if spec.jwks is not None and spec.jwks_uri is not None:
        raise InvalidClientMetadata(
            "jwks, jwks_uri: give the client's keys inline (jwks) or by URL (jwks_uri), not both"
        )
    if spec.public and keyed:
        raise InvalidClientMetadata("jwks: a public client has no keys: it authenticates with none")
    for confidential_only in ("client_credentials", TOKEN_EXCHANGE):
        if spec.public and confidential_only in grants:
            raise InvalidClientMetadata(
                f"grant_types: a public client cannot use {confidential_only} (it has no secret)"
            )
    if TOKEN_EXCHANGE in grants and not spec.audiences:
        raise InvalidClientMetadata(
            f"the {TOKEN_EXCHANGE} grant needs at least one --audience: the resources it "
            "serves and may exchange tokens for"
        )
    if spec.secret_auth_method is not None and (spec.public or keyed):
        raise InvalidClientMetadata(
            f"token_endpoint_auth_method: {spec.secret_auth_method} is for clients with a secret"
        )
    if "authorization_code" in grants and not spec.redirect_uris:
        raise InvalidClientMetadata(
            "redirect_uris: the authorization_code grant needs at least one redirect URI"
        )
    for uri in spec.redirect_uris:
        _check_redirect_uri(uri)
    for uri in spec.audiences:
        problem = resource_problem(uri)
        if problem:
            raise InvalidClientMetadata(f"audience {uri!r}: {problem}")
    scopes = _scopes(spec)
    jwks = public_jwks(spec.jwks) if spec.jwks is not None else None
    if spec.jwks_uri is not None:
        _check_jwks_uri(spec.jwks_uri)
    columns = {
        "name": spec.name or client_id,  # RFC 7591 §2: shown instead of a name
        "grant_types": " ".join(grants),
        "scope": " ".join(scopes),
        "can_introspect": spec.introspect,
        "redirect_uris": " ".join(dict.fromkeys(spec.redirect_uris)),
        "first_party": spec.first_party,
        "audiences": " ".join(dict.fromkeys(spec.audiences)),
        "jwks": json.dumps(jwks, separators=(",", ":")) if jwks is not None else None,
        "jwks_uri": spec.jwks_uri,
        "secret_auth_method": spec.secret_auth_method,
        "dpop_bound": spec.dpop_bound,
        "pushed_only": spec.pushed_only,
    }
    return columns, not (spec.public or keyed)


# The grants a dynamically registered public client may use: redirect- and device-based ones.
_PUBLIC_GRANTS = frozenset({"authorization_code", "refresh_token", DEVICE_CODE})
# Grants that issue refresh tokens to a dynamically registered client.
_REFRESHING_GRANTS = frozenset({"authorization_code", DEVICE_CODE})


def _dynamic_rules(spec: ClientSpec) -> None:
    """What a client registered over HTTP may not have, beyond what every client may not.

    Nobody vouched for it: never first-party (consent is always asked), never a resource
    server (introspection of every token), never the password grant (RFC 9700 §2.4: it hands
    users' passwords to the client), and redirect URIs only https or loopback http.
    """
    grants = spec.grants or _default_grants(spec)
    if spec.first_party or spec.introspect:
        raise InvalidClientMetadata(
            "a dynamically registered client is never first-party nor a resource server"
        )
    if "password" in grants:
        raise InvalidClientMetadata(
            "grant_types: the password grant is not offered to dynamically registered clients "
            "(RFC 9700 §2.4)"
        )
    if TOKEN_EXCHANGE in grants:
        # Its audiences, the resources it may exchange tokens for, are no registration field.
        raise InvalidClientMetadata(
            f"grant_types: {TOKEN_EXCHANGE} is not offered to dynamically registered clients; "
            "an administrator registers a resource server with the audiences it serves"
        )
    if spec.public and not set(grants) <= _PUBLIC_GRANTS:
        raise InvalidClientMetadata(
            "grant_types: a client with token_endpoint_auth_method none may use only "
            "authorization_code, refresh_token and the device grant"
        )
    if "refresh_token" in grants and not _REFRESHING_GRANTS & set(grants):
        raise InvalidClientMetadata(
            "grant_types: refresh_token needs a grant that issues refresh tokens "
            "(authorization_code or the device grant)"
        )
    # Every client's URI rules come first: a malformed URI has no scheme or host to judge.
    for uri in spec.redirect_uris:
        _check_redirect_uri(uri)
        if urlsplit(uri).scheme not in ("https", "http"):
            raise InvalidRedirectURI(f"redirect URI {uri!r}: must be https (or http on loopback)")
    if spec.jwks_uri is not None:
        _check_jwks_uri(spec.jwks_uri)
        if not _public_https(spec.jwks_uri):
            # We fetch it: a self-registered client must not point us at our own network.
            raise InvalidClientMetadata(
                "jwks_uri: must be an https URL on a public host (not an IP address of a "
                "private, loopback or link-local network)"
            )


def _check_redirect_uri(uri: str) -> None:
    problem = redirect_uri_problem(uri)
    if problem:
        raise InvalidRedirectURI(f"redirect URI {uri!r}: {problem}")


def _check_jwks_uri(uri: str) -> None:
    problem = jwks_uri_problem(uri)
    if problem:
        raise InvalidClientMetadata(f"jwks_uri {uri[:100]!r}: {problem}")


def _public_https(uri: str) -> bool:
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if parts.scheme != "https" or host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return ipaddress.ip_address(host).is_global
    except ValueError:
        return True  # a name: resolved when fetched


def _audit(name: str, client: Client, **extra: Any) -> None:
    audit.event(
        name,
        client_id=client.client_id,
        name=client.name,
        public=client.is_public,
        auth_method=client.auth_method,
        grant_types=client.grants,
        scope=client.scope,
        introspect=client.can_introspect,
        redirect_uris=client.redirect_uri_list,
        first_party=client.first_party,
        audiences=client.audience_list,
        dpop_bound=client.dpop_bound,
        pushed_only=client.pushed_only,
        **extra,
    )


def public_jwks(document: Any) -> dict[str, Any]:
    """`document` as a JWKS of public signing keys, or APIError saying what is wrong."""
    try:
        keys = public_key_set(document)
    except KeysUnavailable as exc:
        raise InvalidClientMetadata(str(exc)) from None
    return {"keys": [key.as_dict(private=False) for key in keys]}


def jwks_uri_problem(uri: str) -> str | None:
    """Why `uri` cannot be a jwks_uri (https, or http on a loopback host), or None."""
    if len(uri) > _MAX_JWKS_URI_LENGTH:
        return f"must be at most {_MAX_JWKS_URI_LENGTH} characters"
    parts = readable_parts(uri)
    if parts is None:
        return UNREADABLE
    loopback = parts.hostname in LOOPBACK_HOSTS
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        return "must be an https URL"
    if not parts.hostname or parts.fragment or not uri.isprintable() or " " in uri:
        return "must be an absolute URL without a fragment"
    return None


def _default_grants(spec: ClientSpec) -> tuple[str, ...]:
    return BROWSER_GRANTS if spec.redirect_uris else DEFAULT_GRANTS


def _scopes(spec: ClientSpec) -> list[str]:
    known = (*SCOPES, *OIDC_SCOPES)
    default = known if spec.redirect_uris else SCOPES
    scopes = (spec.scope or " ".join(default)).split()
    unknown = [s for s in scopes if s not in known]
    if unknown:
        raise InvalidClientMetadata(
            f"scope: unknown scope {unknown[0]!r}; known: {', '.join(known)}"
        )
    return list(dict.fromkeys(scopes))
