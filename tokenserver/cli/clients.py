"""`tokenserver clients`: register, change and list clients; registration tokens."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import click

from ..clients import (
    ClientSpec,
    delete_client,
    issue_initial_access_token,
    list_all,
    register_client,
    registered_spec,
    rotate_secret,
    update_client,
)
from ..models import GRANT_TYPES, isoformat
from ..payloads import parse_json
from .command import LONGEST, command, none_yet


@click.group()
def clients() -> None:
    """Register, change, list, delete OAuth clients and rotate their secrets."""


def _refuse_blank_scope(scope: str | None) -> None:
    """An empty --scope (an unset variable, most likely) is refused: left out, --scope means
    every scope, so taking "" as left out would widen a client instead of narrowing it."""
    if scope is not None and not scope.split():
        raise click.ClickException("--scope: must name at least one scope")


@command(clients, "create")
@click.argument("name")
@click.option("--public", is_flag=True, help="A public client (no secret; auth method none).")
@click.option(
    "--grant",
    "grants",
    multiple=True,
    type=click.Choice(GRANT_TYPES),
    help="A grant type it may use; repeat for several. Default: password and refresh_token.",
)
@click.option("--scope", help="Space-separated scopes it may ask for. Default: every scope.")
@click.option("--introspect", is_flag=True, help="A resource server: may introspect any token.")
@click.option(
    "--redirect-uri",
    "redirect_uris",
    multiple=True,
    help="An exact redirect URI for browser sign-in; repeat for several. Without --grant, "
    "the client gets authorization_code and refresh_token.",
)
@click.option("--first-party", is_flag=True, help="One of our own apps: users skip consent.")
@click.option(
    "--audience",
    "audiences",
    multiple=True,
    help="A resource server (RFC 8707 `resource`, an absolute URI) it may ask tokens for; "
    "repeat for several.",
)
@click.option(
    "--jwks-file",
    type=click.File("r"),
    help="A JSON Web Key Set of the client's public keys: it authenticates with private_key_jwt.",
)
@click.option(
    "--jwks-uri", help="Where the client publishes its public keys (https): private_key_jwt."
)
@click.option(
    "--dpop-bound",
    is_flag=True,
    help="Refuse its token requests without a DPoP proof (RFC 9449 dpop_bound_access_tokens).",
)
@click.option(
    "--pushed-only",
    is_flag=True,
    help="Take its authorization requests only pushed to /oauth/par first (RFC 9126 "
    "require_pushed_authorization_requests).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def clients_create(
    name: str,
    public: bool,
    grants: tuple[str, ...],
    scope: str | None,
    introspect: bool,
    redirect_uris: tuple[str, ...],
    first_party: bool,
    audiences: tuple[str, ...],
    jwks_file: Any,
    jwks_uri: str | None,
    dpop_bound: bool,
    pushed_only: bool,
    as_json: bool,
) -> None:
    """Register client NAME and print its id and (once only) its secret."""
    if not name.strip():
        raise click.ClickException("NAME: must not be empty (the name users see on consent)")
    _refuse_blank_scope(scope)
    if jwks_file is not None and jwks_uri is not None:
        raise click.UsageError("give --jwks-file or --jwks-uri, not both")
    jwks = None
    if jwks_file is not None:
        try:
            jwks = parse_json(jwks_file.read())
        except ValueError:
            raise click.ClickException(f"{jwks_file.name} is not a JSON document") from None
    spec = ClientSpec(
        name,
        public,
        grants,
        scope,
        introspect,
        redirect_uris,
        first_party,
        audiences,
        jwks,
        jwks_uri,
        dpop_bound=dpop_bound,
        pushed_only=pushed_only,
    )
    client, secret = register_client(spec)
    if as_json:
        output = {"client_id": client.client_id, "client_secret": secret, **client.to_dict()}
        if secret is None:
            del output["client_secret"]
        click.echo(json.dumps(output))
        return
    click.echo(f"client_id: {client.client_id}")
    if secret:
        click.echo(f"client_secret: {secret}")
        click.echo("The secret is shown only now; store it safely.", err=True)


@command(clients, "update")
@click.argument("client_id")
@click.option("--name", help="The name users see on consent.")
@click.option(
    "--redirect-uri",
    "redirect_uris",
    multiple=True,
    help="Replace its redirect URIs with these; repeat for several.",
)
@click.option("--add-redirect-uri", "added", multiple=True, help="Register one more redirect URI.")
@click.option(
    "--remove-redirect-uri", "removed", multiple=True, help="Drop one of its redirect URIs."
)
@click.option(
    "--grant",
    "grants",
    multiple=True,
    type=click.Choice(GRANT_TYPES),
    help="Replace its grant types with these; repeat for several.",
)
@click.option("--scope", help="Replace its scopes (space-separated).")
@click.option(
    "--audience", "audiences", multiple=True, help="Replace its audiences; repeat for several."
)
@click.option(
    "--first-party/--not-first-party", default=None, help="Whether its users skip consent."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def clients_update(
    client_id: str,
    name: str | None,
    redirect_uris: tuple[str, ...],
    added: tuple[str, ...],
    removed: tuple[str, ...],
    grants: tuple[str, ...],
    scope: str | None,
    audiences: tuple[str, ...],
    first_party: bool | None,
    as_json: bool,
) -> None:
    """Change what CLIENT_ID is registered with; what no option names stays as it is.

    Its id and secret stay. A redirect URI dropped takes its unspent codes with it; scopes
    narrowed narrow its logins' next refreshes (as an RFC 7592 update does).
    """
    if redirect_uris and (added or removed):
        raise click.UsageError("give --redirect-uri, or --add/--remove-redirect-uri, not both")
    spec = registered_spec(client_id)
    uris = list(redirect_uris or spec.redirect_uris)
    for uri in removed:
        if uri not in uris:
            raise click.ClickException(f"{uri} is not one of its redirect URIs")
        uris.remove(uri)
    uris += [uri for uri in added if uri not in uris]
    if name is not None and not name.strip():
        raise click.ClickException("--name: must not be empty (the name users see on consent)")
    _refuse_blank_scope(scope)
    spec = replace(
        spec,
        name=spec.name if name is None else name,
        redirect_uris=tuple(uris),
        grants=grants or spec.grants,
        scope=spec.scope if scope is None else scope,
        audiences=audiences or spec.audiences,
        first_party=spec.first_party if first_party is None else first_party,
    )
    client, _secret = update_client(client_id, spec)  # the secret stays: no new one
    if as_json:
        click.echo(json.dumps({"client_id": client.client_id, **client.to_dict()}))
        return
    click.echo(f"updated {client.client_id}")


@command(clients, "list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def clients_list(as_json: bool) -> None:
    """List registered clients (never their secrets)."""
    rows = list_all()
    if as_json:
        click.echo(json.dumps([c.to_dict() for c in rows]))
        return
    for c in rows:
        kind = "public" if c.is_public else "confidential"
        extra = " introspect" if c.can_introspect else ""
        extra += " dpop-bound" if c.dpop_bound else ""
        extra += " pushed-only" if c.pushed_only else ""
        audiences = c.audiences or "-"
        click.echo(
            f"{c.client_id}\t{c.name}\t{kind}\t{c.auth_method}\t{c.grant_types}\t{c.scope}{extra}"
            f"\t{audiences}\t{c.jwks_uri or '-'}"
        )
    if not rows:
        none_yet("no clients yet: `tokenserver clients create NAME` registers one")


@command(clients, "delete")
@click.argument("client_id")
def clients_delete(client_id: str) -> None:
    """Delete CLIENT_ID and every token issued to it."""
    delete_client(client_id)
    click.echo(f"deleted {client_id}")


@command(clients, "rotate-secret")
@click.argument("client_id")
@click.option(
    "--overlap",
    default=0,
    show_default=True,
    type=click.IntRange(0, LONGEST),
    help="Seconds the old secret keeps working, so deployed apps can switch over.",
)
def clients_rotate_secret(client_id: str, overlap: int) -> None:
    """Give CLIENT_ID a new secret, shown once.

    The old secret keeps working for --overlap seconds.
    """
    secret, until = rotate_secret(client_id, overlap)
    click.echo(f"client_secret: {secret}")
    old = f"works until {isoformat(until)}" if until else "no longer works"
    click.echo(f"The secret is shown only now; store it safely. The old secret {old}.", err=True)


@command(clients, "registration-token")
@click.option(
    "--expires-in",
    default=86400,
    show_default=True,
    type=click.IntRange(60, 30 * 86400),
    help="Seconds until the token expires, if it has not been used.",
)
def clients_registration_token(expires_in: int) -> None:
    """Print an initial access token for one dynamic client registration (RFC 7591).

    The token is shown once and stored only as a digest. It registers one client at
    POST /oauth/register, then is spent.
    """
    token, expires_at = issue_initial_access_token(expires_in)
    click.echo(token)
    click.echo(
        f"Registers one client; expires at {isoformat(expires_at)}. Shown only now.", err=True
    )
