"""The `tokenserver` command: database, users, clients, keys and token housekeeping."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from flask import Flask
from flask.cli import FlaskGroup
from sqlalchemy.engine import make_url

from ..config import ConfigError, Settings, unknown_variables
from ..keywrap import check_at_startup
from . import clients, demo, keys, tokens, users  # noqa: F401  (demo adds clients ensure-demo)
from .command import F, one_line_errors


def register_commands(app: Flask) -> None:
    """Attach the command groups to the app's CLI (Flask-Migrate adds `db`)."""
    for group in (users.users, clients.clients, keys.keys, tokens.tokens):
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
            sub.callback = _marked(one_line_errors(sub.callback))


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
        return one_line_errors(f)(*args, **kwargs)

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
