"""What a client may be registered with: the rules every path shares (CLI, RFC 7591 / 7592),
and the stricter ones for a client that registered itself.

Each check raises InvalidClientMetadata (InvalidRedirectURI for a redirect URI) naming the
field, before anything is stored.
"""

from __future__ import annotations

import ipaddress
import json
import unicodedata
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .client_jwks import KeysUnavailable, public_key_set
from .errors import APIError
from .models import BROWSER_GRANTS, DEFAULT_GRANTS, DEVICE_CODE, OIDC_SCOPES, SCOPES, TOKEN_EXCHANGE
from .redirects import LOOPBACK_HOSTS, UNREADABLE, readable_parts, redirect_uri_problem
from .resource_uris import uri_problem as resource_problem


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


def checked_columns(spec: ClientSpec, client_id: str) -> tuple[dict[str, Any], bool]:
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


def dynamic_rules(spec: ClientSpec) -> None:
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
