"""Registering and deleting OAuth clients: the rules every path shares (CLI, API, pages).

A client authenticates one way: a secret (confidential), its keys (`private_key_jwt`,
RFC 7523, a JWKS inline or at a URL), or nothing (public, PKCE only). Every change is audited
here, never by the caller.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete

from . import audit
from .digests import digest, new_identifier, new_secret
from .errors import APIError, NotFound
from .extensions import db
from .models import BROWSER_GRANTS, DEFAULT_GRANTS, OIDC_SCOPES, SCOPES, Client
from .oauth.client_keys import KeysUnavailable, public_key_set
from .oauth.resources import uri_problem as resource_problem
from .redirects import redirect_uri_problem


@dataclass(frozen=True)
class ClientSpec:
    """What a new client is registered with; empty fields take the documented defaults."""

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


def register_client(spec: ClientSpec) -> tuple[Client, str | None]:
    """Register a client; returns it with its secret (None unless it authenticates by secret).

    Raises APIError naming the first thing wrong with the spec; nothing is stored then.
    """
    grants = list(dict.fromkeys(spec.grants or _default_grants(spec)))
    keyed = spec.jwks is not None or spec.jwks_uri is not None
    if spec.jwks is not None and spec.jwks_uri is not None:
        raise APIError("give the client's keys inline (jwks) or by URL (jwks_uri), not both")
    if spec.public and keyed:
        raise APIError("a public client has no keys: it authenticates with none")
    if spec.public and "client_credentials" in grants:
        raise APIError("a public client cannot use client_credentials (it has no secret)")
    if "authorization_code" in grants and not spec.redirect_uris:
        raise APIError("the authorization_code grant needs at least one redirect URI")
    for uri in spec.redirect_uris:
        problem = redirect_uri_problem(uri)
        if problem:
            raise APIError(f"redirect URI {uri!r}: {problem}")
    for uri in spec.audiences:
        problem = resource_problem(uri)
        if problem:
            raise APIError(f"audience {uri!r}: {problem}")
    scopes = _scopes(spec)
    jwks = public_jwks(spec.jwks) if spec.jwks is not None else None
    if spec.jwks_uri is not None:
        problem = jwks_uri_problem(spec.jwks_uri)
        if problem:
            raise APIError(f"jwks_uri {spec.jwks_uri!r}: {problem}")
    secret = None if spec.public or keyed else new_secret(32)
    client = Client(
        client_id=new_identifier(),
        name=spec.name,
        secret_hash=digest(secret) if secret else None,
        grant_types=" ".join(grants),
        scope=" ".join(scopes),
        can_introspect=spec.introspect,
        redirect_uris=" ".join(dict.fromkeys(spec.redirect_uris)),
        first_party=spec.first_party,
        audiences=" ".join(dict.fromkeys(spec.audiences)),
        jwks=json.dumps(jwks, separators=(",", ":")) if jwks is not None else None,
        jwks_uri=spec.jwks_uri,
    )
    db.session.add(client)
    db.session.commit()
    audit.event(
        "client.created",
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
    )
    return client, secret


def delete_client(client_id: str) -> None:
    """Delete a client and, by cascade, every token and code issued to it."""
    from .oauth import current_server

    result = db.session.execute(delete(Client).where(Client.client_id == client_id))
    db.session.commit()
    current_server().clients.forget(client_id)  # other processes' copies expire within a second
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"no client with id {client_id!r}")
    audit.event("client.deleted", client_id=client_id)


def public_jwks(document: Any) -> dict[str, Any]:
    """`document` as a JWKS of public signing keys, or APIError saying what is wrong."""
    try:
        keys = public_key_set(document)
    except KeysUnavailable as exc:
        raise APIError(str(exc)) from None
    return {"keys": [key.as_dict(private=False) for key in keys]}


def jwks_uri_problem(uri: str) -> str | None:
    """Why `uri` cannot be a jwks_uri (https, or http on a loopback host), or None."""
    parts = urlsplit(uri)
    loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
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
        raise APIError(f"unknown scope {unknown[0]!r}; known: {', '.join(known)}")
    return list(dict.fromkeys(scopes))
