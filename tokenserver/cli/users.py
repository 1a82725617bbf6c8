"""`tokenserver users`: create, list, disable and enable accounts, and reset a password."""

from __future__ import annotations

import sys

import click

from .. import accounts
from ..models import isoformat
from .command import command, none_yet


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
        none_yet("no users yet")
