"""RFC 7591 client metadata: what a registration request may say, and how a client reads back.

This module only translates between the JSON of RFC 7591 / 7592 and a ClientSpec; the rules a
client must follow are client_rules.py's, the same for the CLI and for HTTP.
"""

from __future__ import annotations

import json
from typing import Any

from ..client_rules import ClientSpec, InvalidClientMetadata
from ..models import GRANT_TYPES, TOKEN_EXCHANGE, Client

AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
_SECRET_METHODS = frozenset({"client_secret_basic", "client_secret_post"})
# The RFC 7591 §2 fields we register; any other field is ignored, as §2 says.
_STRINGS = ("client_name", "token_endpoint_auth_method", "scope", "jwks_uri")
_LISTS = ("redirect_uris", "grant_types", "response_types")
# RFC 9449 §5.2: every token request of the client must carry a DPoP proof.
_DPOP_BOUND = "dpop_bound_access_tokens"
# RFC 9126 §6: the client's authorization requests must be pushed first.
_PUSHED_ONLY = "require_pushed_authorization_requests"
_MAX_ITEMS = 20  # redirect URIs, grants: enough for any app, bounded for the database


def requested(document: Any) -> dict[str, Any]:
    """The fields of a registration request we register, each of the right JSON type.

    Raises InvalidClientMetadata naming the field; unknown fields are dropped (RFC 7591 §2).
    """
    if not isinstance(document, dict):
        raise InvalidClientMetadata("the body must be a JSON object of client metadata")
    metadata: dict[str, Any] = {}
    for name in _STRINGS:
        value = document.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidClientMetadata(f"{name}: must be a string")
        # A name may hold any Unicode but controls (client_rules.readable_name checks it).
        if name != "client_name" and not value.isprintable():
            raise InvalidClientMetadata(f"{name}: must be a string of printable characters")
        metadata[name] = value
    for name in _LISTS:
        value = document.get(name)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise InvalidClientMetadata(f"{name}: must be an array of strings")
        if len(value) > _MAX_ITEMS:
            raise InvalidClientMetadata(f"{name}: at most {_MAX_ITEMS} values")
        metadata[name] = list(dict.fromkeys(value))
    if document.get("jwks") is not None:
        if not isinstance(document["jwks"], dict):
            raise InvalidClientMetadata('jwks: must be a JSON object with a "keys" array')
        metadata["jwks"] = document["jwks"]
    for flag in (_DPOP_BOUND, _PUSHED_ONLY):
        if flag in document:
            # A JSON boolean only: "false" is a truthy string, so none is guessed at.
            if not isinstance(document[flag], bool):
                raise InvalidClientMetadata(f"{flag}: must be true or false")
            metadata[flag] = document[flag]
    return metadata


def to_spec(metadata: dict[str, Any]) -> ClientSpec:
    """The ClientSpec that `metadata` (from requested()) asks for, with RFC 7591's defaults."""
    method = metadata.get("token_endpoint_auth_method", "client_secret_basic")
    if method not in AUTH_METHODS:
        raise InvalidClientMetadata(
            f"token_endpoint_auth_method: must be one of {', '.join(AUTH_METHODS)}"
        )
    # RFC 7591 §2: without grant_types a client uses authorization_code only.
    grants = metadata.get("grant_types", ["authorization_code"])
    if not grants:
        raise InvalidClientMetadata("grant_types: must name at least one grant")
    unknown = [grant for grant in grants if grant not in GRANT_TYPES]
    if unknown:
        raise InvalidClientMetadata(
            f"grant_types: {unknown[0]!r} is not supported; supported: "
            f"{', '.join(g for g in GRANT_TYPES if g not in ('password', TOKEN_EXCHANGE))}"
        )
    _check_response_types(metadata, grants)
    keyed = "jwks" in metadata or "jwks_uri" in metadata
    if method == "private_key_jwt" and not keyed:
        raise InvalidClientMetadata(
            "token_endpoint_auth_method: private_key_jwt needs the client's keys "
            "in jwks or jwks_uri"
        )
    if method != "private_key_jwt" and keyed:
        field = "jwks" if "jwks" in metadata else "jwks_uri"
        raise InvalidClientMetadata(
            f"{field}: keys are registered only with token_endpoint_auth_method private_key_jwt"
        )
    return ClientSpec(
        name=metadata.get("client_name", ""),
        public=method == "none",
        grants=tuple(grants),
        # RFC 7591 §2: omitted, the server picks; only spaces name no scope, so as if omitted.
        scope=" ".join(metadata.get("scope", "").split()) or None,
        redirect_uris=tuple(metadata.get("redirect_uris", ())),
        jwks=metadata.get("jwks"),
        jwks_uri=metadata.get("jwks_uri"),
        secret_auth_method=method if method in _SECRET_METHODS else None,
        dpop_bound=metadata.get(_DPOP_BOUND, False),  # RFC 9449 §5.2: false when omitted
        pushed_only=metadata.get(_PUSHED_ONLY, False),  # RFC 9126 §6: false when omitted
    )


def _check_response_types(metadata: dict[str, Any], grants: list[str]) -> None:
    """RFC 7591 §2.1: `code` goes with the authorization_code grant, and only with it."""
    code = "authorization_code" in grants
    response_types = metadata.get("response_types", ["code"] if code else [])
    if any(response_type != "code" for response_type in response_types):
        raise InvalidClientMetadata("response_types: only code is supported")
    if code != ("code" in response_types):
        raise InvalidClientMetadata(
            "response_types: code goes with the authorization_code grant, and only with it"
        )


def describe(client: Client) -> dict[str, Any]:
    """The client's metadata as registered (RFC 7591 §3.2.1), never its secret."""
    grants = client.grants
    metadata: dict[str, Any] = {
        "client_id": client.client_id,
        "client_id_issued_at": int(client.created_at.timestamp()),
        "client_name": client.name,
        "redirect_uris": client.redirect_uri_list,
        "grant_types": grants,
        "response_types": ["code"] if "authorization_code" in grants else [],
        "token_endpoint_auth_method": client.auth_method,
        "scope": client.scope,
        _DPOP_BOUND: client.dpop_bound,
        _PUSHED_ONLY: client.pushed_only,
    }
    if client.jwks is not None:
        metadata["jwks"] = json.loads(client.jwks)
    if client.jwks_uri is not None:
        metadata["jwks_uri"] = client.jwks_uri
    if client.secret_hash is not None:
        metadata["client_secret_expires_at"] = 0  # RFC 7591 §3.2.1: 0, it does not expire
    return metadata
