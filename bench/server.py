"""The server under test: a throwaway database and gunicorn started as deployed, on loopback."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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


def server_env(database_url: str, workers: int, gunicorn_args: str = "") -> dict[str, str]:
    """The environment of the server and of the `tokenserver` command for this run.

    argon2 keeps its production defaults (the password grant is measured against them); the
    per-IP limits are off so that one loopback client is not throttled as an attacker would be.
    `gunicorn_args` override gunicorn.conf.py (GUNICORN_CMD_ARGS), e.g. for the sync baseline.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSERVER_")}
    env.update(
        TOKENSERVER_DATABASE_URL=database_url,
        TOKENSERVER_RATELIMIT_ENABLED="false",
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


class Port:
    """A loopback port kept for a server of ours, from before it starts until we are done.

    Binding port 0 and closing the socket at once leaves the port free until the server binds
    it, and the kernel may hand it to anyone meanwhile. A Port keeps its socket bound (never
    listening) with SO_REUSEADDR set after the bind: the kernel gives the port to no other
    bind to port 0 and to no outgoing connection, a connection to it is refused while nothing
    of ours listens there (so a stopped server's port refuses, and it can be started again on
    it), and our servers, which all bind with SO_REUSEADDR (gunicorn, PostgreSQL, HAProxy,
    werkzeug), can still listen on it. A process that picks its port some other way can still
    take it: `wait_until_serving` tells.
    """

    def __init__(self) -> None:
        self._socket = socket.socket()
        # Without SO_REUSEADDR at the bind: a port no other socket is bound to.
        self._socket.bind(("127.0.0.1", 0))
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.number = int(self._socket.getsockname()[1])

    def release(self) -> None:
        """Give the port back: anyone may have it from now on."""
        self._socket.close()

    def __enter__(self) -> Port:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class PortTaken(RuntimeError):
    """Another process listens on the port a server of ours was started on, so ours cannot."""


# Addresses (as /proc/net/tcp{,6} spells them) whose listener takes connections to 127.0.0.1.
_LOOPBACK = {
    "0100007F",  # 127.0.0.1
    "00000000",  # 0.0.0.0
    "00000000000000000000000000000000",  # ::
    "0000000000000000FFFF00000100007F",  # ::ffff:127.0.0.1
}
_LISTEN = "0A"


def _listeners(port: int) -> set[str]:
    """The inodes of the sockets listening for connections to 127.0.0.1:`port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:  # no IPv6
            continue
        for row in rows:
            fields = row.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] == _LISTEN and int(hex_port, 16) == port and address in _LOOPBACK:
                inodes.add(fields[9])
    return inodes


def _sockets_of(pid: int) -> set[str]:
    """The inodes of the sockets process `pid` has open (none once it has exited)."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except FileNotFoundError:  # closed while we looked
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return inodes


def listener_owner(pid: int, port: int) -> str | None:
    """Who listens on 127.0.0.1:`port`: "ours" if process `pid` alone does (connections to the
    port reach it), "another" if some other process does too, None if nobody does (yet).

    The table is read before the process's sockets: a socket is open before it listens, so a
    listener of ours in the table is always among them.
    """
    listening = _listeners(port)
    if not listening:
        return None
    return "another" if listening - _sockets_of(pid) else "ours"


def wait_until_serving(
    process: subprocess.Popen[bytes],
    port: int,
    path: str = "/healthz",
    seconds: float = 60,
    failed: Callable[[], str] = lambda: "",
) -> None:
    """Poll http://127.0.0.1:`port``path` until it answers 200 from a socket `process` listens
    on, never from another process's.

    Raises PortTaken as soon as another process listens on the port (our bind fails, or will),
    and RuntimeError (with `failed()`, e.g. the end of the log) if the process exits or stays
    silent for `seconds`.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {failed()}")
        owner = listener_owner(process.pid, port)
        if owner == "another":
            raise PortTaken(f"another process listens on 127.0.0.1:{port}")
        if owner == "ours":
            try:
                url = f"http://127.0.0.1:{port}{path}"
                if requests.get(url, timeout=5).status_code == 200:
                    return
            except requests.RequestException:  # the workers are still loading the app
                pass
        time.sleep(0.05)  # polling for start-up, not waiting out a race
    raise RuntimeError(f"the server did not answer {path} within {seconds:g} s: {failed()}")


def on_a_port_of_its_own(
    start: Callable[[], None], move: Callable[[Port], None], attempts: int = 3
) -> None:
    """start(); if another process listens on the port first (PortTaken), move(Port()) to a
    fresh one and start again. Only for a first start: nobody has been told the port yet."""
    for attempt in range(1, attempts + 1):
        try:
            start()
            return
        except PortTaken:
            if attempt == attempts:
                raise
            move(Port())


class Gunicorn:
    """gunicorn with the deployed gunicorn.conf.py, bound to loopback only, on a Port of its own
    (its PORT in `env` is set to it)."""

    def __init__(
        self, env: dict[str, str], workdir: Path, app: str = "wsgi:app", name: str = "gunicorn"
    ) -> None:
        self.app = app
        self.log = workdir / f"{name}.log"
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self._port: Port | None = None
        self._use(Port(), env)

    def _use(self, port: Port, env: dict[str, str]) -> None:
        """Serve on `port` (the previous one, if any, given back)."""
        if self._port is not None:
            self._port.release()
        self._port = port
        self.port = port.number
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "PORT": str(self.port)}

    def start(self) -> Gunicorn:
        """Start the master and wait until it answers /healthz; on a fresh port if another
        process took this one first."""
        on_a_port_of_its_own(self._start_once, lambda port: self._use(port, self.env))
        return self

    def _start_once(self) -> None:
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
        log.close()
        try:
            wait_until_serving(self.process, self.port, failed=lambda: f"see {self.log}")
        except PortTaken:
            # Not serving yet, and it could only fail to bind (after 5 s of gunicorn's retries).
            self.process.kill()
            self.process.wait()
            raise
        except BaseException:
            self.stop()
            raise

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
        """Stop the master gracefully (it stops its workers), or kill it; give the port back."""
        if self._port is not None:
            self._port.release()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
