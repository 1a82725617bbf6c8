"""The WSGI entry point gunicorn serves: `gunicorn wsgi:app`."""

import sys

from tokenserver import create_app
from tokenserver.config import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    # gunicorn.conf.py refuses a bad setting before forking; served without it (another
    # folder, another config), each worker would print a traceback instead. Exit status 4 is
    # gunicorn's "app failed to load", which stops the master rather than respawning.
    sys.stderr.write(f"Error: {exc}\n")
    sys.exit(4)
