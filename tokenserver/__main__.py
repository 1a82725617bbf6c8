"""The `tokenserver` command (also `python -m tokenserver`): cli/'s group on create_app."""

from __future__ import annotations

import functools

from . import create_app
from .cli import run


def main() -> None:
    """Entry point of the `tokenserver` console script."""
    run(functools.partial(create_app, migrations=True))


if __name__ == "__main__":
    main()
