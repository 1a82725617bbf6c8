"""The servers the tests and the bench start get ports of their own and talk only to themselves.

A port is picked before the server binds it. If another process (another test's server, a
parallel run on the same machine) listens there first, the start must not take that process's
answers for its own server's: a first start moves to a fresh port, a restart on a known port
refuses.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from flask import Flask

from bench.server import Gunicorn, Port, PortTaken, listener_owner, server_env
from tokenserver.config import Settings

from .conftest import LiveServer


@contextmanager
def _impostor(port: int) -> Iterator[list[str]]:
    """Another process's server on 127.0.0.1:`port`, answering 200 to every GET; yields the
    paths it was asked for. It binds as servers do, with SO_REUSEADDR."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}')

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _is_tokenserver(url: str) -> bool:
    """Whether `url` is served by tokenserver (its discovery document names its issuer)."""
    answer = requests.get(f"{url}/.well-known/openid-configuration", timeout=10)
    return answer.status_code == 200 and "issuer" in answer.json()


def test_a_server_whose_port_another_took_starts_on_one_of_its_own(
    base_settings: Settings, app: Flask, tmp_path: Path
) -> None:
    live = LiveServer(base_settings, 1, tmp_path)
    taken = live.port
    try:
        with _impostor(taken) as asked:
            live.start()
            assert live.port != taken
            assert asked == []  # the start never took the other server's answers for its own
            assert _is_tokenserver(live.url)
    finally:
        live.stop()


def test_a_restart_on_a_port_another_took_fails_rather_than_use_that_server(
    base_settings: Settings, app: Flask, tmp_path: Path
) -> None:
    """A server started again keeps its address (a balancer names it): it cannot move."""
    live = LiveServer(base_settings, 1, tmp_path).start()
    try:
        live.terminate()
        with _impostor(live.port) as asked, pytest.raises(PortTaken):
            live.start()
        assert asked == []
    finally:
        live.stop()


def test_a_restarted_server_serves_on_its_port_again(
    base_settings: Settings, app: Flask, tmp_path: Path
) -> None:
    live = LiveServer(base_settings, 1, tmp_path).start()
    try:
        port = live.port
        live.terminate()
        with pytest.raises(requests.ConnectionError):  # stopped: its port refuses
            requests.get(f"{live.url}/healthz", timeout=10)
        live.start()
        assert live.port == port and _is_tokenserver(live.url)
    finally:
        live.stop()


def test_the_bench_server_whose_port_another_took_starts_on_one_of_its_own(
    tmp_path: Path,
) -> None:
    env = server_env(f"sqlite:///{tmp_path / 'bench.db'}", 1)
    server = Gunicorn(env, tmp_path, "bench.bare:app", "bare")
    taken = server.port
    try:
        with _impostor(taken) as asked:
            server.start()
            assert server.port != taken and server.env["PORT"] == str(server.port)
            assert asked == []
            assert server.process is not None
            assert listener_owner(server.process.pid, server.port) == "ours"
            assert requests.get(f"{server.url}/healthz", timeout=10).json() == {"status": "ok"}
    finally:
        server.stop()


def test_a_kept_port_refuses_connections_and_is_bound_only_by_our_kind_of_server() -> None:
    with Port() as port:
        address = ("127.0.0.1", port.number)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=10).close()
        with socket.socket() as other:  # what another port pick would do: bind, no reuse
            with pytest.raises(OSError) as refused:
                other.bind(address)
            assert refused.value.errno == errno.EADDRINUSE
        with socket.socket() as server:  # gunicorn, PostgreSQL, HAProxy, werkzeug
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(address)
            server.listen()
            with socket.create_connection(address, timeout=10):
                pass
