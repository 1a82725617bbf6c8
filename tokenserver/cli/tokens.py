"""`tokenserver tokens`: housekeeping for token records."""

from __future__ import annotations

import click

from .command import LONGEST, command


@click.group()
def tokens() -> None:
    """Housekeeping for token records."""


@command(tokens, "purge")
@click.option(
    "--older-than",
    default=86400,
    show_default=True,
    type=click.IntRange(0, LONGEST),
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
    from ..purge import purge

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
