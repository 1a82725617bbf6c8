"""The `tokenserver` command: database, users, clients, keys and token housekeeping."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, with_appcontext
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from . import accounts
from .clients import (
    ClientSpec,
    delete_client,
    issue_initial_access_token,
    register_client,
    registered_spec,
    rotate_secret,
    update_client,
)
from .config import ConfigError, Settings, current_settings, unknown_variables
from .digests import new_secret
from .errors import APIError
from .extensions import db
from .keys import list_keys, revoke, rotate
from .keywrap import check_at_startup, rewrap
from .models import (
    GRANT_TYPES,
    isoformat,
)
from .payloads import parse_json
from .store import clients as client_store

F = TypeVar("F", bound=Callable[..., Any])
# Seconds in a century: any longer, and a date computed from now leaves the calendar.
_LONGEST = 100 * 365 * 86400


def _one_line_errors(f: F) -> F:
    """Turn domain and database failures into one line on stderr and exit status 1."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except APIError as exc:
            raise click.ClickException(exc.description) from None
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", exc)).splitlines()[0]
            raise click.ClickException(f"database error: {reason}") from None

    return wrapper  # type: ignore[return-value]


def _text_arguments(f: F) -> F:
    """Refuse an argument that is not UTF-8 before it reaches the database.

    Python hands such bytes over as lone surrogates, which no driver can send: each would
    otherwise end the command in a traceback.
    """

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for param in click.get_current_context().command.params:
            value = kwargs.get(param.name or "")
            for text in value if isinstance(value, tuple) else (value,):
                if isinstance(text, str) and not _is_utf8(text):
                    raise click.BadParameter(f"{text!r} is not UTF-8 text", param=param)
        return f(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def command(group: click.Group, *args: Any, **kwargs: Any) -> Callable[[F], F]:
    """A subcommand that runs in the app context with one-line errors."""

    def decorator(f: F) -> F:
        checked = _one_line_errors(_text_arguments(f))
        return group.command(*args, **kwargs)(with_appcontext(checked))  # type: ignore[return-value]

    return decorator


@click.group()
def users() -> None:
    """Create, list, disable and enable user accounts, and reset a lost password."""


def _read_password(prompt: str, from_stdin: bool) -> str:
    """A password from the first line of stdin, or typed twice at a hidden prompt."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password: str = click.prompt(prompt, hide_input=True, confirmation_prompt=True)
    return password


@command(users, "create")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def users_create(username: str, password_stdin: bool) -> None:
    """Create USERNAME, asking for the password (or reading it from stdin)."""
    accounts.check_name_free(username)  # before the password is typed twice in vain
    user = accounts.register(username, _read_password("Password", password_stdin))
    click.echo(f"created user {user.username} (id {user.id})")


@command(users, "set-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def users_set_password(username: str, password_stdin: bool) -> None:
    """Give USERNAME a new password (asked for, or read from stdin); every login they have ends."""
    accounts.get(username)  # an unknown name is refused before the password is typed
    user, ended = accounts.reset_password(username, _read_password("New password", password_stdin))
    logins = "1 login" if ended == 1 else f"{ended} logins"
    click.echo(f"new password set for {user.username}; {logins} ended")


@command(users, "disable")
@click.argument("username")
def users_disable(username: str) -> None:
    """Disable USERNAME: no new tokens, and every token they hold stops working at once."""
    user = accounts.set_disabled(username, True)
    click.echo(f"disabled {user.username}")


@command(users, "enable")
@click.argument("username")
def users_enable(username: str) -> None:
    """Enable USERNAME again."""
    user = accounts.set_disabled(username, False)
    click.echo(f"enabled {user.username}")


@command(users, "list")
def users_list() -> None:
    """List every user: id, username, state, creation time."""
    every = accounts.list_all()
    for user in every:
        state = "disabled" if user.disabled else "active"
        click.echo(f"{user.id}\t{user.username}\t{state}\t{isoformat(user.created_at)}")
    if not every:
        _none_yet("no users yet")


def _none_yet(words: str) -> None:
    """Say that a list is empty on stderr: a script reading stdout still sees no rows."""
    click.echo(words, err=True)


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
    rows = client_store.every()
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
        _none_yet("no clients yet: `tokenserver clients create NAME` registers one")


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
    type=click.IntRange(0, _LONGEST),
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


@command(clients, "ensure-demo")
def clients_ensure_demo() -> None:
    """Create a demo client if there is no client at all, and print a sign-in URL for it.

    Used by `make run`: the URL opens our sign-in page in a browser, and the printed curl line
    exchanges the code it returns (the demo client's loopback redirect URI, RFC 8252 §7.3).
    """
    demo = client_store.named(DEMO_NAME)
    if demo is None and client_store.any_registered():
        click.echo("a client exists already; no demo client created")
        return
    secret = None
    if demo is None:
        demo, secret = register_client(
            ClientSpec(
                DEMO_NAME,
                grants=("password", "refresh_token", "client_credentials", "authorization_code"),
                introspect=True,
                redirect_uris=(DEMO_REDIRECT,),
            )
        )
        click.echo(f"demo client_id: {demo.client_id}\ndemo client_secret: {secret}")
    if DEMO_REDIRECT in demo.redirect_uri_list:
        click.echo(demo_sign_in(demo.client_id, secret))


DEMO_NAME = "demo"
DEMO_REDIRECT = "http://127.0.0.1/callback"
_DEMO_CALLBACK = "http://127.0.0.1:8400/callback"  # any port matches the loopback URI


def demo_sign_in(client_id: str, secret: str | None) -> str:
    """Instructions to sign in as the demo client in a browser and exchange the code."""
    from urllib.parse import urlencode

    from authlib.oauth2.rfc7636 import create_s256_code_challenge

    issuer = current_settings().issuer
    verifier = new_secret(32)
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": _DEMO_CALLBACK,
            "scope": "openid profile junk:read junk:write",
            "state": new_secret(8),
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
        }
    )
    auth = f"{client_id}:{secret or 'DEMO_SECRET'}"
    return (
        "\nSign in through the browser: make a user first (.venv/bin/tokenserver users create\n"
        "NAME), then open this URL, sign in and allow the demo app\n"
        f"  {issuer}/oauth/authorize?{query}\n"
        "The browser then lands on 127.0.0.1:8400 (nothing listens there): copy `code` from\n"
        "its address bar within 60 seconds and exchange it:\n"
        f"  curl -s -u '{auth}' -d grant_type=authorization_code -d code=CODE \\\n"
        f"    -d redirect_uri={_DEMO_CALLBACK} -d code_verifier={verifier} \\\n"
        f"    {issuer}/oauth/token\n"
    )


@click.group()
def keys() -> None:
    """Rotate, revoke, list and re-encrypt signing keys."""


def _duration(raw: str) -> timedelta:
    """A duration such as 30d, 12h, 15m or 3600 (seconds)."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    text = raw.strip().lower()
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    if not number.isascii() or not number.isdigit():
        raise click.BadParameter(f"{raw!r} is not a duration such as 30d, 12h, 15m or 3600")
    seconds = int(number) * units[unit]
    if seconds > _LONGEST:
        raise click.BadParameter(f"{raw!r} is longer than a century")
    return timedelta(seconds=seconds)


@command(keys, "rotate")
@click.option("--now", "at_once", is_flag=True, help="Sign with the new key at once (emergency).")
@click.option(
    "--if-older-than",
    "older_than",
    help="Only if the current key has signed this long, e.g. 30d (safe from cron on every node).",
)
def keys_rotate(at_once: bool, older_than: str | None) -> None:
    """Publish a new signing key, to sign later.

    It is in every JWKS at once and signs after TOKENSERVER_KEY_PUBLISH_SECONDS.
    """
    settings = current_settings()
    rotation = rotate(
        db.engine,
        current_app.extensions["tokenserver.keywrap"],
        settings.key_publish_seconds or 0,
        now=at_once,
        if_older_than=None if older_than is None else _duration(older_than),
    )
    if rotation is None:
        click.echo("the current signing key is not that old; nothing to do")
        return
    signs_from = isoformat(rotation.signs_from)
    if not rotation.made:
        click.echo(f"signing key {rotation.kid} is already published; it signs from {signs_from}")
        return
    click.echo(f"new signing key {rotation.kid}")
    click.echo(f"published now; it signs from {signs_from}", err=True)


# A kid is an RFC 7638 thumbprint in base64url: it may begin with "-", which is not an option.
@command(keys, "revoke", context_settings={"ignore_unknown_options": True})
@click.argument("kid")
def keys_revoke(kid: str) -> None:
    """Withdraw a leaked key KID at once.

    It leaves the JWKS and every token it signed is refused; a revoked current key is
    replaced at once.
    """
    replacement = revoke(db.engine, current_app.extensions["tokenserver.keywrap"], kid)
    click.echo(f"revoked {kid}")
    if replacement:
        click.echo(f"signing key {replacement} signs from now")


@command(keys, "list")
def keys_list() -> None:
    """List signing keys and their states.

    Columns: kid, state (next, current, retired, revoked), created, became current, stopped
    signing.
    """
    every = list_keys(db.engine)
    for key in every:
        times = (key.created_at, key.activated_at, key.retired_at)
        click.echo("\t".join([key.kid, key.state, *(isoformat(t) if t else "-" for t in times)]))
    if not every:
        _none_yet("no signing keys yet: the server makes its first one when it starts")


@command(keys, "rewrap")
def keys_rewrap() -> None:
    """Re-encrypt every private key under a new key.

    The first key of TOKENSERVER_KEY_ENCRYPTION_KEY (NEW,OLD while rotating) encrypts.
    """
    changed = rewrap(db.engine, current_app.extensions["tokenserver.keywrap"])
    click.echo(f"re-encrypted {changed} signing key{'' if changed == 1 else 's'}")


@click.group()
def tokens() -> None:
    """Housekeeping for token records."""


@command(tokens, "purge")
@click.option(
    "--older-than",
    default=86400,
    show_default=True,
    type=click.IntRange(0, _LONGEST),
    help="Keep records until this many seconds past their expiry.",
)
@click.option(
    "--batch-size",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Rows deleted per transaction, so the table is never locked for long.",
)
def tokens_purge(older_than: int, batch_size: int) -> None:
    """Delete records of tokens expired long enough ago, and what nothing can need any more."""
    from .purge import purge

    counts = purge(older_than, batch_size)
    records = _counted(counts.pop("token records"), "token records")
    families = _counted(counts.pop("token families"), "token families")
    rest = " and ".join(_counted(count, name) for name, count in counts.items())
    click.echo(f"purged {records} and {families}; deleted {rest}")


def _counted(count: int, things: str) -> str:
    """ "1 token family", "2 token families": `things` is plural, a last word in -s or -ies."""
    if count != 1:
        return f"{count} {things}"
    return f"1 {things[:-3] + 'y' if things.endswith('ies') else things[:-1]}"


def register_commands(app: Flask) -> None:
    """Attach the command groups to the app's CLI (Flask-Migrate adds `db`)."""
    for group in (users, clients, keys, tokens):
        app.cli.add_command(group)


# What operators never need: Flask-Limiter's maintenance group, Flask-Migrate's developer
# commands (still callable, e.g. `db migrate`, but not listed) and Flask's own options.
_HIDDEN_COMMANDS = frozenset({"limiter"})
_OPERATOR_DB_COMMANDS = frozenset({"upgrade"})
_HIDDEN_OPTIONS = frozenset({"app", "debug", "env_file"})


class _OperatorGroup(FlaskGroup):
    """Flask's CLI group showing only the commands an operator uses."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in super().list_commands(ctx) if name not in _HIDDEN_COMMANDS]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if name == "db" and isinstance(command, click.Group):
            _for_operators(command)
        return command


def _for_operators(db_group: click.Group) -> None:
    """Hide Flask-Migrate's developer commands and options; give every `db` command one-line
    errors (a database that does not answer is one line and status 1, never a traceback)."""
    db_group.help = "Create or migrate the database schema."
    for param in db_group.params:
        param.hidden = True  # type: ignore[attr-defined]
    for name, sub in db_group.commands.items():
        sub.hidden = name not in _OPERATOR_DB_COMMANDS
        if sub.callback is None or hasattr(sub.callback, "one_line"):
            continue  # already wrapped: the group is looked up once per command run
        if name == "upgrade":
            sub.callback = _upgrade_errors(sub.callback)
            sub.help = "Create the schema, or migrate it to the newest version."
            for param in sub.params:
                param.hidden = True  # type: ignore[attr-defined]
        else:
            sub.callback = _marked(_one_line_errors(sub.callback))


def _marked(f: F) -> F:
    """`f`, marked as wrapped for one-line errors (so it is not wrapped twice)."""
    f.one_line = True  # type: ignore[attr-defined]
    return f


def _upgrade_errors(f: F) -> F:
    """`db upgrade` failing on a missing database says so in one line."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from flask import current_app

        settings: Settings = current_app.extensions["tokenserver.settings"]
        url = make_url(settings.database_url)
        if settings.is_sqlite and url.database and url.database != ":memory:":
            folder = Path(url.database).parent
            if not folder.is_dir():
                raise click.ClickException(
                    f"cannot create the SQLite database: the folder {folder} does not exist"
                )
        return _one_line_errors(f)(*args, **kwargs)

    return _marked(wrapper)  # type: ignore[return-value]


def command_group(create_app: Callable[[], Flask]) -> FlaskGroup:
    """The `tokenserver` command group, run against the app `create_app` builds."""
    group = _OperatorGroup(
        create_app=create_app,
        add_default_commands=False,
        add_version_option=False,
        help="Administer tokenserver: database, users, clients, signing keys, token records.",
    )
    for param in group.params:
        if param.name in _HIDDEN_OPTIONS:
            param.hidden = True  # type: ignore[attr-defined]
    return group


def run(create_app: Callable[[], Flask]) -> None:
    """Run the `tokenserver` command: check the environment, then run the command group."""
    try:
        warning = check_at_startup(Settings.from_env())
    except ConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    if warning:
        click.echo(f"Warning: {warning}", err=True)
    for line in unknown_variables():
        click.echo(line, err=True)
    try:
        command_group(create_app).main(prog_name="tokenserver")
    except ConfigError as exc:  # found while building the app (create_app checks again)
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
