"""The served app (wsgi.py): what every gunicorn worker loads into memory."""

from __future__ import annotations

import inspect
import subprocess
import sys

from flask import Flask

from tokenserver.config import Settings

from .conftest import ROOT

# Runs in a fresh interpreter: this one has loaded alembic and zxcvbn for other tests.
_SERVE_THEN_CHECK_A_PASSWORD = """
import sys
import wsgi
from tokenserver.passwords import password_problem

def heavy():
    loaded = {m.split(".")[0] for m in sys.modules}
    return sorted(loaded & {"alembic", "flask_migrate", "zxcvbn", "redis", "requests"})

client = wsgi.app.test_client()
assert client.get("/healthz").status_code == 200
ready = client.get("/readyz")
assert ready.status_code == 200, ready.json
print(heavy())
assert password_problem("password1") is not None
print(heavy())
"""


def test_workers_load_alembic_never_and_zxcvbn_only_to_check_a_password(
    base_settings: Settings,
) -> None:
    # About 25 MB of a worker's memory: alembic serves only the CLI, zxcvbn only sign-ups.
    # And 13 MB more: redis-py only where a Redis is configured, requests only to fetch a
    # client's jwks_uri.
    result = subprocess.run(
        [sys.executable, "-c", _SERVE_THEN_CHECK_A_PASSWORD],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "TOKENSERVER_DATABASE_URL": base_settings.database_url,
            "TOKENSERVER_RATELIMIT_ENABLED": "false",
            "TOKENSERVER_ARGON2_TIME_COST": "1",
            "TOKENSERVER_ARGON2_MEMORY_KIB": "1024",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "['zxcvbn']"]


def test_every_view_and_hook_is_synchronous(app: Flask) -> None:
    # The app skips Flask's per-call coroutine check (TokenServer.ensure_sync): an async
    # view or hook would hand gunicorn a coroutine instead of a response.
    hooks = [
        *app.view_functions.values(),
        *app.teardown_appcontext_funcs,
        *(
            hook
            for registry in (
                app.before_request_funcs,
                app.after_request_funcs,
                app.teardown_request_funcs,
            )
            for hooks_of_blueprint in registry.values()
            for hook in hooks_of_blueprint
        ),
    ]
    assert len(hooks) > 30
    assert not [hook for hook in hooks if inspect.iscoroutinefunction(hook)]
