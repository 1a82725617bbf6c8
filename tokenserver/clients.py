"""Registering, updating and deleting OAuth clients, for every path (CLI, API); what a
client may be registered with is client_rules.py's.

A client authenticates one way: a secret (confidential), its keys (`private_key_jwt`,
RFC 7523, a JWKS inline or at a URL), or nothing (public, PKCE only). Every change is audited
here, never by the caller.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, current_app

from . import audit
from .client_rules import ClientSpec, checked_columns, dynamic_rules
from .digests import digest, new_identifier, new_secret
from .errors import APIError, NotFound
from .models import Client, isoformat, utcnow
from .store import clients as store
from .store import initial_tokens, transaction
from .store.tokens import revoking

_CHANGE_CALLBACKS = "tokenserver.client_change_callbacks"  # app.extensions key, see on_change


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

    Dynamically registered clients follow stricter rules (client_rules.dynamic_rules). The
    spec is checked in full before the token is spent, so bad metadata costs nothing; the token
    is spent by one conditional UPDATE, so two requests racing with it register one client.
    """
    dynamic_rules(spec)
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
        dynamic_rules(spec)
    columns, by_secret = checked_columns(spec, client_id)
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
    columns, by_secret = checked_columns(spec, client_id)
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
