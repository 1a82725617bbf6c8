"""What every subcommand shares: the app context, one-line errors, UTF-8 arguments."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click
from flask.cli import with_appcontext
from sqlalchemy.exc import SQLAlchemyError

from ..errors import APIError

F = TypeVar("F", bound=Callable[..., Any])
# Seconds in a century: any longer, and a date computed from now leaves the calendar.
LONGEST = 100 * 365 * 86400


def one_line_errors(f: F) -> F:
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
        checked = one_line_errors(_text_arguments(f))
        return group.command(*args, **kwargs)(with_appcontext(checked))  # type: ignore[return-value]

    return decorator


def none_yet(words: str) -> None:
    """Say that a list is empty on stderr: a script reading stdout still sees no rows."""
    click.echo(words, err=True)
