"""`tokenserver keys`: rotate, revoke, list and re-encrypt signing keys."""

from __future__ import annotations

from datetime import timedelta

import click
from flask import current_app

from ..config import current_settings
from ..extensions import db
from ..keys import list_keys, revoke, rotate
from ..keywrap import rewrap
from ..models import isoformat
from .command import LONGEST, command, none_yet


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
    if seconds > LONGEST:
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
        none_yet(
            "no signing keys yet: the server makes its first one when first needed "
            "(the first token, or the first JWKS served)"
        )


@command(keys, "rewrap")
def keys_rewrap() -> None:
    """Re-encrypt every private key under a new key.

    The first key of TOKENSERVER_KEY_ENCRYPTION_KEY (NEW,OLD while rotating) encrypts.
    """
    changed = rewrap(db.engine, current_app.extensions["tokenserver.keywrap"])
    click.echo(f"re-encrypted {changed} signing key{'' if changed == 1 else 's'}")
