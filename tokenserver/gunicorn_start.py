"""`python -m tokenserver.gunicorn_start ARGS`: gunicorn ARGS, once the settings are known good."""

from __future__ import annotations

import os
import sys

from tokenserver.config import ConfigError, Settings


def main() -> None:
    """Refuse a bad setting in one line (exit 2), as gunicorn.conf.py does, then run gunicorn."""
    # gunicorn reads WEB_CONCURRENCY with a bare int() while importing its own config module,
    # before it loads gunicorn.conf.py: "abc" would be a traceback, "-1" a line not naming it.
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        sys.exit(2)
    # A blank WEB_CONCURRENCY is unset to us, as any blank setting is, and a traceback to
    # gunicorn's int(): it reads the count we settled on instead.
    os.environ["WEB_CONCURRENCY"] = str(settings.web_concurrency)
    from gunicorn.app.wsgiapp import run

    sys.argv[0] = "gunicorn"  # its usage and error lines name the program operators know
    sys.exit(run())


if __name__ == "__main__":
    main()
