"""The server under test: a throwaway database and gunicorn started as deployed, on loopback."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@contextmanager
def throwaway_database(base_url: str | None, workdir: Path) -> Iterator[str]:
    """An empty database for one run: an SQLite file in workdir, or a new PostgreSQL database."""
    if not base_url or base_url.startswith("sqlite"):
        yield f"sqlite:///{workdir / 'bench.db'}"
        return
    with throwaway_postgres(base_url, "tokenserver_bench") as url:
        yield url


@contextmanager
def throwaway_postgres(base_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server `base_url` names, dropped afterwards
    (the tests make theirs here too, so that runs never collide)."""
    url = make_url(base_url)
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def server_env(
    database_url: str, workers: int, port: int, gunicorn_args: str = ""
) -> dict[str, str]:
    """The environment of the server and of the `tokenserver` command for this run.

    argon2 keeps its production defaults (the password grant is measured against them); the
    per-IP limits are off so that one loopback client is not throttled as an attacker would be.
    `gunicorn_args` override gunicorn.conf.py (GUNICORN_CMD_ARGS), e.g. for the sync baseline.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSERVER_")}
    env.update(
        TOKENSERVER_DATABASE_URL=database_url,
        TOKENSERVER_RATELIMIT_ENABLED="false",
        PORT=str(port),
        WEB_CONCURRENCY=str(workers),
    )
    env.pop("GUNICORN_CMD_ARGS", None)
    if gunicorn_args:
        env["GUNICORN_CMD_ARGS"] = gunicorn_args
    return env


def tokenserver_command(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    """Run the `tokenserver` command and return its standard output."""
    done = subprocess.run(
        [str(BIN / "tokenserver"), *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tokenserver {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gunicorn:
    """gunicorn with the deployed gunicorn.conf.py, bound to loopback only."""

    def __init__(
        self, env: dict[str, str], workdir: Path, app: str = "wsgi:app", name: str = "gunicorn"
    ) -> None:
        self.env = env
        self.app = app
        self.log = workdir / f"{name}.log"
        self.port = int(env["PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Gunicorn:
        """Start the master and wait until /healthz answers."""
        log = self.log.open("wb")
        self.process = subprocess.Popen(
            [
                str(BIN / "gunicorn"),
                "--config",
                "gunicorn.conf.py",
                # The deployed config binds every interface; the bench stays on loopback.
                "--bind",
                f"127.0.0.1:{self.port}",
                self.app,
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_until_serving()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_serving(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited; see {self.log}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return
            except requests.RequestException:  # not listening, or still booting
                pass
            time.sleep(0.1)  # polling for start-up
        raise RuntimeError("gunicorn did not answer /healthz within 60 s")

    def worker_pids(self) -> list[int]:
        """The master's live worker processes."""
        assert self.process is not None
        pids: list[int] = []
        task_dir = Path(f"/proc/{self.process.pid}/task")
        for task in task_dir.iterdir():
            children = (task / "children").read_text().split()
            pids.extend(int(pid) for pid in children)
        return sorted(pids)

    def pids(self) -> list[int]:
        """The master and its workers."""
        assert self.process is not None
        return [self.process.pid, *self.worker_pids()]

    def worker_rss_mb(self) -> dict[int, float]:
        """Each worker's resident memory (VmRSS), in MB."""
        rss: dict[int, float] = {}
        for pid in self.worker_pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue  # recycled between listing and reading
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    rss[pid] = int(line.split()[1]) * 1024 / 1e6  # kB (KiB) to MB
        return rss

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log (for a failed run: the tracebacks are there)."""
        log = self.log
        if not log.exists():
            return ""
        # Access-log lines are noise here; the error lines say what went wrong.
        kept = [
            line for line in log.read_text(errors="replace").splitlines() if '"path": ' not in line
        ]
        return "\n".join(kept[-lines:])

    def stop(self) -> None:
        """Stop the master gracefully (it stops its workers), or kill it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
