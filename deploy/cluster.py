"""`make cluster`: two gunicorn nodes on one PostgreSQL and one Redis, behind HAProxy.

Migrates the database (creating it if the server lacks it), makes a demo client if there is
none, starts both nodes and HAProxy (deploy/haproxy.cfg), waits until the balancer has both
nodes in its pool, and serves until HAProxy exits or the launcher gets Ctrl-C or SIGTERM; then
it stops them all, balancer first. A node that exits (stopped by hand for a rolling restart,
or crashed) is reported and the other one serves on; it may be started again by hand with
the command printed for it.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

ROOT = Path(__file__).resolve().parent.parent
HAPROXY_CFG = Path(__file__).resolve().with_name("haproxy.cfg")
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/tokenserver"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class Balancer:
    """HAProxy with deploy/haproxy.cfg, its addresses given through the environment."""

    def __init__(
        self, bind: str, nodes: tuple[str, str], stats: str, socket: Path, log: Path | None = None
    ):
        self.bind = bind
        self.socket = socket
        self.url = f"http://{bind}"
        self.stats_url = f"http://{stats}/stats;csv"
        self.env = {
            **os.environ,
            "TOKENSERVER_LB_BIND": bind,
            "TOKENSERVER_NODE1": nodes[0],
            "TOKENSERVER_NODE2": nodes[1],
            "TOKENSERVER_LB_STATS": stats,
            "TOKENSERVER_LB_SOCKET": str(socket),
        }
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Balancer:
        """Run HAProxy in the foreground (-db) as a child; raise if it refuses to start."""
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        output = open(self.log, "ab") if self.log else None  # noqa: SIM115 (the child keeps it)
        self.process = subprocess.Popen(
            [haproxy, "-db", "-f", str(HAPROXY_CFG)],
            env=self.env,
            stdout=output,
            stderr=output,
            start_new_session=True,  # Ctrl-C reaches the launcher only; it stops us in order
        )
        if output:
            output.close()
        wait_until(lambda: self.states() is not None, 10, "HAProxy did not start", self.process)
        return self

    def states(self) -> dict[str, str] | None:
        """Each node's state as the balancer sees it ("UP", "DOWN", ...); None if unreachable."""
        try:
            with urllib.request.urlopen(self.stats_url, timeout=1) as response:  # noqa: S310
                body = response.read().decode()
        except (urllib.error.URLError, OSError):
            return None
        rows = csv.DictReader(io.StringIO(body.lstrip("# ")))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == "nodes" and row["svname"] not in {"FRONTEND", "BACKEND"}
        }

    def wait_for(self, wanted: dict[str, str], seconds: float = 20) -> None:
        """Poll the balancer's view until the named nodes are in the wanted states."""

        def reached() -> bool:
            states = self.states() or {}
            return all(states.get(name, "").startswith(state) for name, state in wanted.items())

        wait_until(reached, seconds, f"the balancer never saw {wanted}: {self.states()}")

    def command(self, line: str) -> str:
        """One command to HAProxy's runtime API (its stats socket); its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(5)
            conn.connect(str(self.socket))
            conn.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def sessions(self, name: str) -> int:
        """Requests the balancer has in flight on a node, through every backend naming it."""
        rows = [line.split(",") for line in self.command("show stat").splitlines()]
        counts = [int(row[4]) for row in rows if len(row) > 4 and row[1] == name]  # scur
        if not counts:
            raise KeyError(name)
        return sum(counts)

    def drain(self, name: str, seconds: float = 35) -> None:
        """Send a node no new request, and wait until its in-flight ones are answered."""
        self.command(f"set server nodes/{name} state drain")
        wait_until(lambda: self.sessions(name) == 0, seconds, f"{name} did not drain")

    def ready(self, name: str, seconds: float = 30) -> None:
        """Put a drained node back in the pool once its health check passes."""
        self.command(f"set server nodes/{name} state ready")
        self.wait_for({name: "UP"}, seconds)

    def stop(self) -> None:
        """Stop HAProxy (and wait for it)."""
        stop_process(self.process)


def wait_until(
    condition: Callable[[], object],
    seconds: float,
    message: str,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll `condition` until true; raise with `message` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{message}: it exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(message)
        time.sleep(0.05)  # polling a state that changes on its own, not waiting out a race


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 35) -> None:
    """TERM (a graceful stop for gunicorn and HAProxy), then KILL if it outlives `timeout`."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def node_command(bind: str) -> list[str]:
    """gunicorn serving the app with the shipped settings, on its own address."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "gunicorn.conf.py",
        "--bind",
        bind,
        "wsgi:app",
    ]


SHARED_SERVICES = ("TOKENSERVER_DATABASE_URL", "TOKENSERVER_RATELIMIT_STORAGE_URI")


def start_command(bind: str, env: dict[str, str]) -> str:
    """A shell command that starts a node by hand as the launcher does: the shared services
    (passwords hidden) and the variables the launcher chose; the rest from the caller's shell.
    A node started with no database URL would serve a database of its own (SQLite)."""
    chosen = {name: value for name, value in env.items() if os.environ.get(name) != value}
    for name in SHARED_SERVICES:
        if name in env:
            chosen[name] = make_url(env[name]).render_as_string(hide_password=True)
    assignments = [f"{name}={shlex.quote(value)}" for name, value in sorted(chosen.items())]
    return " ".join(
        ["cd", shlex.quote(str(ROOT)), "&&", *assignments, shlex.join(node_command(bind))]
    )


def supervise(
    nodes: dict[str, subprocess.Popen[bytes]],
    balancer: subprocess.Popen[bytes],
    stopping: Callable[[], bool],
    report: Callable[[str], None],
    commands: dict[str, str] | None = None,
) -> int:
    """Serve until `stopping()` (0) or HAProxy exits (1). A node that exits is reported once
    and not fatal: a rolling restart stops one on purpose, and the balancer takes it out of
    the pool while the other serves."""
    down: set[str] = set()
    while not stopping():
        if balancer.poll() is not None:
            report(f"Error: HAProxy exited with status {balancer.returncode}")
            return 1
        for name, process in nodes.items():
            if name not in down and process.poll() is not None:
                down.add(name)
                again = f"; to start it again: {commands[name]}" if commands else ""
                report(f"{name} down (exit status {process.returncode}){again}")
        time.sleep(0.2)  # polling processes that end on their own, not waiting out a race
    return 0


def _say(line: str) -> None:
    print(line, file=sys.stderr if line.startswith("Error:") else sys.stdout, flush=True)


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database the URL names if the server does not have it yet."""
    target = make_url(url)
    if not target.drivername.startswith("postgresql") or not target.database:
        return
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": target.database}
            ).scalar()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    finally:
        admin.dispose()


def _environment(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TOKENSERVER_DATABASE_URL", DEFAULT_DATABASE_URL)
    env.setdefault("TOKENSERVER_RATELIMIT_STORAGE_URI", DEFAULT_REDIS_URL)
    env.setdefault("TOKENSERVER_ISSUER", f"http://localhost:{args.port}")
    # HAProxy is the one proxy in front: believe its X-Forwarded-For, nobody else's.
    env.setdefault("TOKENSERVER_TRUSTED_PROXIES", "1")
    env.setdefault("WEB_CONCURRENCY", str(args.workers))
    return env


def main(argv: list[str] | None = None) -> int:
    """Run the cluster until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="HAProxy's port")
    parser.add_argument("--node-ports", type=int, nargs=2, default=(8001, 8002))
    parser.add_argument("--stats-port", type=int, default=8404)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per node")
    args = parser.parse_args(argv)
    env = _environment(args)
    tokenserver = [sys.executable, "-m", "tokenserver"]
    try:
        ensure_database(env["TOKENSERVER_DATABASE_URL"])
    except OperationalError as exc:
        print(f"Error: cannot reach the database: {exc.orig}", file=sys.stderr)
        return 1
    for step in (["db", "upgrade"], ["clients", "ensure-demo"]):
        if subprocess.run([*tokenserver, *step], cwd=ROOT, env=env).returncode != 0:
            return 1

    nodes: dict[str, subprocess.Popen[bytes]] = {}
    commands: dict[str, str] = {}
    balancer = Balancer(
        f"0.0.0.0:{args.port}",
        (f"127.0.0.1:{args.node_ports[0]}", f"127.0.0.1:{args.node_ports[1]}"),
        f"127.0.0.1:{args.stats_port}",
        Path(tempfile.mkdtemp(prefix="tokenserver-cluster-")) / "haproxy.sock",
    )
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for number, port in enumerate(args.node_ports, 1):
            bind, node_env = f"127.0.0.1:{port}", {**env, "PORT": str(port)}
            commands[f"node{number}"] = start_command(bind, node_env)
            nodes[f"node{number}"] = subprocess.Popen(
                node_command(bind), cwd=ROOT, env=node_env, start_new_session=True
            )
        balancer.start()
        balancer.wait_for({"node1": "UP", "node2": "UP"}, seconds=60)
        print(
            f"tokenserver cluster: http://localhost:{args.port} -> nodes on ports "
            f"{args.node_ports[0]} and {args.node_ports[1]}; balancer state at "
            f"{balancer.stats_url}, runtime API at {balancer.socket}. Ctrl-C stops everything.",
            flush=True,
        )
        for name, command in commands.items():
            print(f"{name} (PID {nodes[name].pid}) started with: {command}", flush=True)
        assert balancer.process is not None
        return supervise(nodes, balancer.process, lambda: stopping, _say, commands)
    except RuntimeError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    finally:
        balancer.stop()  # first, so no request is sent to a node that is going away
        shutil.rmtree(balancer.socket.parent, ignore_errors=True)
        for process in nodes.values():
            if process.poll() is None:
                process.terminate()
        for process in nodes.values():
            stop_process(process)


if __name__ == "__main__":
    sys.exit(main())
