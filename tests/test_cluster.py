"""Two nodes behind HAProxy (deploy/haproxy.cfg) on one PostgreSQL and one Redis act as one.

Each test starts two gunicorn nodes (LiveServer) on the session's throwaway PostgreSQL database
with a Redis key prefix of its own, and HAProxy in front of them. What one node does the other
sees; the limits count across nodes; a node restarted under load fails no request; a node
killed under load is drained and loses no acknowledged write. SQLite is one node's database, so
these run in the PostgreSQL run of `make test` only.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskCliRunner
from joserfc import jws
from sqlalchemy import create_engine, select

from bench.server import Port, listener_owner
from deploy.cluster import Balancer, start_command, supervise, wait_until
from tests.conftest import (
    PASSWORD,
    REDIS_URL,
    Actions,
    LiveServer,
    RegisteredClient,
    delete_redis_keys,
)
from tokenserver.config import Settings
from tokenserver.models import User

pytestmark = [
    pytest.mark.skipif(
        not os.environ.get("TEST_DATABASE_URL", "").startswith("postgresql"),
        reason="several nodes share one PostgreSQL: runs in the PostgreSQL run of make test",
    ),
    pytest.mark.skipif(
        not (Path("/usr/sbin/haproxy").exists() or shutil.which("haproxy")),
        reason="needs HAProxy (Debian's haproxy; .ci/run and make cluster install it)",
    ),
]

WRONG = "not the password at all"
ERROR_PAGES = Path(__file__).resolve().parent.parent / "deploy" / "errors"
# Longer than a HUP takes to boot new workers on a busy machine (requests wait, never fail).
TIMEOUT = 30


@dataclass
class Cluster:
    """Two nodes and the balancer in front of them."""

    nodes: list[LiveServer]
    balancer: Balancer

    @property
    def url(self) -> str:
        return self.balancer.url


def _start_cluster(
    settings: Settings, log_dir: Path, prefix: str, stack: list[Any], **env: str
) -> Cluster:
    """Two nodes on the test database and Redis, behind HAProxy; each added to `stack`."""
    env = {
        "TOKENSERVER_RATELIMIT_STORAGE_URI": REDIS_URL,
        "TOKENSERVER_RATELIMIT_KEY_PREFIX": prefix,
        "TOKENSERVER_TRUSTED_PROXIES": "1",
        **env,
    }
    nodes = []
    for _ in range(2):
        node = LiveServer(settings, 2, log_dir, **env)
        stack.append(node)  # stopped afterwards even if it fails to start
        nodes.append(node.start())
    return Cluster(nodes, _balancing(stack, (nodes[0].address, nodes[1].address), log_dir))


def _balancing(stack: list[Any], addresses: tuple[str, str], folder: Path) -> Balancer:
    """HAProxy with deploy/haproxy.cfg in front of `addresses`, on two ports of its own, added
    to `stack`; once it has both nodes in its pool. Fresh ports if another process listens on
    one first (HAProxy then exits, or would share it: it binds with SO_REUSEPORT)."""
    for attempt in range(1, 4):
        ports = (Port(), Port())
        stack.extend(ports)
        balancer = Balancer(
            f"127.0.0.1:{ports[0].number}",
            addresses,
            f"127.0.0.1:{ports[1].number}",
            folder / "haproxy.sock",
            folder / "haproxy.log",
        )
        stack.append(balancer)
        try:
            balancer.start()
        except RuntimeError:  # it exited, or its stats never answered
            if attempt == 3 or not _taken(balancer, ports):
                raise
            continue
        if not _taken(balancer, ports):
            balancer.wait_for({"node1": "UP", "node2": "UP"})
            return balancer
        balancer.stop()
    raise RuntimeError("another process took HAProxy's ports three times")


def _taken(balancer: Balancer, ports: tuple[Port, Port]) -> bool:
    """Whether another process than HAProxy listens on one of its ports."""
    assert balancer.process is not None
    return any(listener_owner(balancer.process.pid, port.number) == "another" for port in ports)


def _stop(stack: list[Any]) -> None:
    for part in reversed(stack):  # the balancer first, then its ports, then the nodes
        if isinstance(part, Port):
            part.release()
        else:
            part.stop()


@pytest.fixture
def cluster_factory(
    base_settings: Settings, app: Flask, redis_prefix: str, tmp_path: Path
) -> Iterator[Callable[..., Cluster]]:
    """Start clusters of this test's own (other settings); all stopped afterwards."""
    stack: list[Any] = []
    yield lambda **env: _start_cluster(base_settings, tmp_path, redis_prefix, stack, **env)
    _stop(stack)


@pytest.fixture(scope="module")
def shared_cluster(
    base_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """One cluster for the tests that change no setting (per-IP limits off, guard on)."""
    stack: list[Any] = []
    prefix = f"tokenserver-test-{secrets.token_hex(6)}"
    try:
        yield _start_cluster(base_settings, tmp_path_factory.mktemp("cluster"), prefix, stack)
    finally:
        _stop(stack)
        delete_redis_keys(prefix)


@pytest.fixture
def cluster(shared_cluster: Cluster, app: Flask) -> Cluster:
    """The shared cluster; `app` empties the database after each test."""
    return shared_cluster


def _signup(url: str, username: str, session: Any = requests) -> Any:
    return session.post(
        f"{url}/users", json={"username": username, "password": PASSWORD}, timeout=TIMEOUT
    )


def _password_grant(url: str, oauth_client: RegisteredClient, username: str, password: str) -> Any:
    data = {"grant_type": "password", "username": username, "password": password}
    return requests.post(f"{url}/oauth/token", data=data, auth=oauth_client.auth, timeout=TIMEOUT)


def _me(url: str, access_token: str) -> Any:
    return requests.get(f"{url}/users/me", headers=Actions.bearer(access_token), timeout=TIMEOUT)


def test_sign_up_on_one_node_logs_in_on_the_other(cluster: Cluster, actions: Actions) -> None:
    first, second = (node.url for node in cluster.nodes)
    assert _signup(first, "alice").status_code == 201
    assert _signup(second, "ALICE").status_code == 409  # one name, whichever node is asked
    oauth_client = actions.oauth_client()
    tokens = _password_grant(second, oauth_client, "alice", PASSWORD)
    assert tokens.status_code == 200, tokens.text
    for url in (first, second, cluster.url):
        me = _me(url, tokens.json()["access_token"])
        assert me.status_code == 200
        assert me.json()["username"] == "alice"


def test_revocation_on_one_node_holds_on_the_other_at_once(
    cluster: Cluster, actions: Actions
) -> None:
    first, second = (node.url for node in cluster.nodes)
    assert _signup(first, "alice").status_code == 201
    oauth_client = actions.oauth_client()
    tokens = _password_grant(first, oauth_client, "alice", PASSWORD).json()
    assert _me(second, tokens["access_token"]).status_code == 200  # warm the other node
    revoked = requests.post(
        f"{first}/oauth/revoke",
        data={"token": tokens["refresh_token"]},
        auth=oauth_client.auth,
        timeout=TIMEOUT,
    )
    assert revoked.status_code == 200
    assert _me(second, tokens["access_token"]).status_code == 401
    refresh = requests.post(
        f"{second}/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=oauth_client.auth,
        timeout=TIMEOUT,
    )
    assert refresh.status_code == 400
    assert refresh.json()["error"] == "invalid_grant"
    introspected = requests.post(
        f"{second}/oauth/introspect",
        data={"token": tokens["access_token"]},
        auth=oauth_client.auth,
        timeout=TIMEOUT,
    )
    assert introspected.json() == {"active": False}


def test_disabled_user_is_refused_by_every_node_at_once(
    cluster: Cluster, actions: Actions, runner: FlaskCliRunner
) -> None:
    assert _signup(cluster.url, "alice").status_code == 201
    oauth_client = actions.oauth_client()
    tokens = _password_grant(cluster.url, oauth_client, "alice", PASSWORD).json()
    for node in cluster.nodes:
        assert _me(node.url, tokens["access_token"]).status_code == 200
    assert runner.invoke(args=["users", "disable", "alice"]).exit_code == 0
    for node in cluster.nodes:
        assert _me(node.url, tokens["access_token"]).status_code == 401
        refused = _password_grant(node.url, oauth_client, "alice", PASSWORD)
        assert refused.json()["error"] == "invalid_grant"


def test_deleted_client_is_refused_by_every_node(
    cluster: Cluster, actions: Actions, runner: FlaskCliRunner
) -> None:
    """Within the one second a worker may keep its copy of a client (README "Performance")."""
    oauth_client = actions.oauth_client(grants=("client_credentials",))

    def grant(url: str) -> tuple[float, int]:
        """When the grant was sent (monotonic, as the workers' copies age), and its status."""
        data = {"grant_type": "client_credentials"}
        sent = time.monotonic()
        answer = requests.post(
            f"{url}/oauth/token", data=data, auth=oauth_client.auth, timeout=TIMEOUT
        )
        return sent, answer.status_code

    for node in cluster.nodes:
        assert grant(node.url)[1] == 200  # each node's worker now holds a copy
    # Each copy was looked up before its answer came, so none is kept past a second from here.
    copied = time.monotonic()
    assert runner.invoke(args=["clients", "delete", oauth_client.client_id]).exit_code == 0
    served_after_deletion: list[float] = []  # when each grant a copy still answered was sent

    def refused(url: str) -> bool:
        sent, status = grant(url)
        assert status in (200, 401), status
        if status == 200:
            served_after_deletion.append(sent)
        return status == 401

    for node in cluster.nodes:
        wait_until(lambda url=node.url: refused(url), 5, "a deleted client kept working")
    # However long the deletion and the requests took, no grant sent once the copies were a
    # second old was answered from one.
    assert all(sent < copied + 1.0 for sent in served_after_deletion), served_after_deletion


PUBLISH_SECONDS = 8  # how long the test's rotation publishes a key before it signs


def test_rotated_key_is_in_every_jwks_before_any_node_signs_with_it(
    cluster_factory: Callable[..., Cluster], actions: Actions, make_app: Any
) -> None:
    """`keys rotate` publishes first and signs later, on every node (API "keys rotate")."""
    cluster = cluster_factory(
        TOKENSERVER_KEY_CACHE_SECONDS="1", TOKENSERVER_KEY_PUBLISH_SECONDS=str(PUBLISH_SECONDS)
    )
    assert _signup(cluster.url, "alice").status_code == 201
    oauth_client = actions.oauth_client()

    def token_kid() -> tuple[str, str]:
        token = _password_grant(cluster.url, oauth_client, "alice", PASSWORD).json()
        header = jws.extract_compact(token["access_token"].encode()).protected
        return token["access_token"], header["kid"]

    def published(url: str) -> set[str]:
        keys = requests.get(f"{url}/.well-known/jwks.json", timeout=TIMEOUT).json()["keys"]
        return {key["kid"] for key in keys}

    old_token, old_kid = token_kid()
    runner = make_app(key_publish_seconds=PUBLISH_SECONDS).test_cli_runner()
    rotated_at = time.monotonic()
    rotated = runner.invoke(args=["keys", "rotate"])
    assert rotated.exit_code == 0, rotated.output
    new_kid = re.search(r"new signing key (\S+)", rotated.output).group(1)  # type: ignore[union-attr]
    for node in cluster.nodes:  # in every node's JWKS within its key cache (1 s)
        wait_until(lambda url=node.url: new_kid in published(url), 5, "never published")
    issued: list[tuple[float, str, str]] = []  # (answered after rotating, token, kid)

    def next_token() -> str:
        token, kid = token_kid()
        issued.append((time.monotonic() - rotated_at, token, kid))
        return kid

    wait_until(lambda: next_token() == new_kid, PUBLISH_SECONDS + 15, "the new key never signed")
    early = [kid for elapsed, _token, kid in issued if elapsed < PUBLISH_SECONDS]
    assert early and set(early) == {old_kid}  # nobody signed with it while it was only published
    new_token = issued[-1][1]
    for node in cluster.nodes:
        assert _me(node.url, new_token).status_code == 200
        assert _me(node.url, old_token).status_code == 200  # the old key still verifies
        assert {old_kid, new_kid} <= published(node.url)


def test_password_guard_counts_failures_on_every_node_together(
    cluster: Cluster, actions: Actions
) -> None:
    first, second = (node.url for node in cluster.nodes)
    assert _signup(first, "mallory").status_code == 201
    oauth_client = actions.oauth_client()
    # The guard's free attempts (tokenserver.guard.FREE_ATTEMPTS), spread over both nodes.
    statuses = [
        _password_grant(url, oauth_client, "mallory", WRONG).status_code
        for url in (first, second, first, second, first)
    ]
    assert statuses == [400] * 5
    for url in (first, second):
        refused = _password_grant(url, oauth_client, "mallory", PASSWORD)
        assert refused.status_code == 429
        assert "Retry-After" in refused.headers


def test_per_ip_limits_count_requests_to_every_node_together(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory(
        TOKENSERVER_RATELIMIT_ENABLED="true", TOKENSERVER_RATELIMIT_SIGNUP="4/hour"
    )
    statuses = [_signup(cluster.url, f"user{n}").status_code for n in range(6)]
    assert statuses == [201] * 4 + [429] * 2
    for node in cluster.nodes:  # round robin: each node answered some, so neither counted alone
        assert any('"/users"' in line for line in node.log_lines("access"))


def test_requests_reach_the_nodes_while_no_node_passes_its_check(
    cluster_factory: Callable[..., Cluster], actions: Actions
) -> None:
    """Fail open: a pause of the shared database fails every node's check at once, and the
    nodes, which wait for it or answer their own JSON 503, are still the ones to ask."""
    cluster = cluster_factory()
    # Nothing listens there: every check is refused, as when both stop.
    with Port() as closed:
        for name in ("node1", "node2"):
            cluster.balancer.command(f"set server nodes/{name} check-port {closed.number}")
        cluster.balancer.wait_for({"node1": "DOWN", "node2": "DOWN"}, seconds=10)
        served = [_served(node) for node in cluster.nodes]
        jwks = [requests.get(f"{cluster.url}/.well-known/jwks.json", timeout=TIMEOUT) for _ in "ab"]
        assert [answer.status_code for answer in jwks] == [200, 200]
        assert _signup(cluster.url, "alice").status_code == 201
        assert all(
            _served(node) > before for node, before in zip(cluster.nodes, served, strict=True)
        )


def _json_error(answer: requests.Response) -> str:
    """The `error` of a JSON error answer (the API's one shape); fails on anything else."""
    assert answer.headers["Content-Type"] == "application/json", answer.text
    body = answer.json()
    assert set(body) == {"error", "error_description"}, body
    return str(body["error"])


def test_balancer_answers_json_when_no_node_is_running(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory()
    for node in cluster.nodes:
        node.terminate()
    for method in ("GET", "POST"):
        answer = requests.request(method, f"{cluster.url}/users", timeout=TIMEOUT)
        assert answer.status_code == 503
        assert _json_error(answer) == "service_unavailable"
        assert answer.headers["Retry-After"] == "1"


def test_metrics_are_not_served_through_the_balancer(cluster: Cluster) -> None:
    for path in ("/metrics", "/metrics?name[]=x", "/%6Detrics", "//metrics"):  # the node
        assert _get(cluster.nodes[0].address, path)[0] == 200  # reads each as /metrics
        status, content_type, body = _get(cluster.balancer.bind, path)
        assert (status, content_type) == (404, "application/json"), path
        assert json.loads(body)["error"] == "not_found"


def _get(address: str, path: str) -> tuple[int, str | None, bytes]:
    """GET the path exactly as written (requests would decode %6D and merge slashes)."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.getheader("Content-Type"), answer.read()
    finally:
        conn.close()


@pytest.mark.parametrize("page", sorted(ERROR_PAGES.glob("*.http")), ids=lambda page: page.name)
def test_each_error_page_of_the_balancer_is_a_whole_json_answer(page: Path) -> None:
    """HAProxy sends these files as they are: a raw response, CRLF, its body's exact length."""
    head, _, body = page.read_bytes().partition(b"\r\n\r\n")
    status_line, *fields = head.decode().split("\r\n")
    assert status_line.startswith(f"HTTP/1.1 {page.stem} ")
    headers = dict(field.split(": ", 1) for field in fields)
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body)
    assert set(json.loads(body)) == {"error", "error_description"}
    assert ("Retry-After" in headers) == (page.stem in {"502", "503"})


class _FakeNode(http.server.ThreadingHTTPServer):
    """A node that passes its health check and then, if `dies`, reads each other request and
    closes the connection with no answer, as a node killed after committing it would."""

    def __init__(self, dies: bool) -> None:
        self.dies = dies
        self.requests: list[str] = []  # the method of each request it has read
        super().__init__(("127.0.0.1", 0), _FakeNodeHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _FakeNodeHandler(http.server.BaseHTTPRequestHandler):
    server: _FakeNode

    def _handle(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/readyz":
            self.server.requests.append(self.command)
            if self.server.dies:
                self.close_connection = True
                return
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def fake_nodes(tmp_path: Path) -> Iterator[Callable[..., tuple[Balancer, list[_FakeNode]]]]:
    """HAProxy with deploy/haproxy.cfg in front of two fake nodes; all stopped afterwards."""
    stack: list[Any] = []

    def start(*, dies: bool) -> tuple[Balancer, list[_FakeNode]]:
        nodes = [_FakeNode(dies) for _ in range(2)]
        stack.extend(nodes)
        return _balancing(stack, (nodes[0].address, nodes[1].address), tmp_path), nodes

    yield start
    for part in reversed(stack):
        if isinstance(part, Balancer):
            part.stop()
        elif isinstance(part, Port):
            part.release()
        else:
            part.shutdown()
            part.server_close()


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_a_write_a_node_may_have_committed_is_never_sent_again(
    fake_nodes: Callable[..., tuple[Balancer, list[_FakeNode]]], method: str
) -> None:
    """A replayed refresh would present a spent token, and revoke the user's whole login."""
    balancer, nodes = fake_nodes(dies=True)
    answer = requests.request(method, f"{balancer.url}/oauth/token", data="a=b", timeout=TIMEOUT)
    assert answer.status_code == 502
    assert _json_error(answer) == "service_unavailable"
    assert answer.headers["Retry-After"] == "1"
    assert sum(len(node.requests) for node in nodes) == 1


def test_a_read_a_node_dropped_is_sent_again(
    fake_nodes: Callable[..., tuple[Balancer, list[_FakeNode]]],
) -> None:
    balancer, nodes = fake_nodes(dies=True)
    answer = requests.get(f"{balancer.url}/.well-known/jwks.json", timeout=TIMEOUT)
    assert answer.status_code == 502
    assert sum(len(node.requests) for node in nodes) == 1 + 3  # the first try, `retries 3`


def test_every_request_a_closed_node_refuses_is_sent_to_the_other(
    fake_nodes: Callable[..., tuple[Balancer, list[_FakeNode]]],
) -> None:
    """A refused connection was read by nobody: safe to send again, whatever the method."""
    balancer, (alive, closing) = fake_nodes(dies=False)
    balancer.command("disable health nodes/node2")  # still in the pool when its socket closes
    closing.shutdown()
    closing.server_close()
    methods = ["GET", "POST", "PUT", "DELETE"] * 3
    statuses = [
        requests.request(method, f"{balancer.url}/users", timeout=TIMEOUT).status_code
        for method in methods
    ]
    assert statuses == [200] * len(methods)
    assert alive.requests == methods


@dataclass
class Load:
    """A bounded loop of requests through the balancer in a few threads; records every answer."""

    url: str
    work: Callable[[requests.Session, str], tuple[str, int]]
    threads: int = 3
    seconds: float = 90  # a hard bound, whatever the test does
    answers: list[tuple[str, int | str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        deadline = time.monotonic() + self.seconds
        for n in range(self.threads):
            thread = threading.Thread(target=self._run, args=(n, deadline), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def _run(self, n: int, deadline: float) -> None:
        session = requests.Session()
        i = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            name = f"t{n}n{i}"
            i += 1
            try:
                self.answers.append(self.work(session, name))
            except requests.RequestException as exc:
                self.answers.append((name, f"{type(exc).__name__}: {exc}"))

    def wait_for_answers(self, more: int, seconds: float = 20) -> None:
        """Let the loop run until `more` further answers have come back."""
        target = len(self.answers) + more
        wait_until(lambda: len(self.answers) >= target, seconds, "the load stalled")

    def stop(self) -> list[tuple[str, int | str]]:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=15)
        return self.answers


def _served(node: LiveServer) -> int:
    """Requests a node has answered, the balancer's health checks aside."""
    return sum("/readyz" not in line for line in node.log_lines("access"))


def _booted_workers(node: LiveServer) -> int:
    return sum("Booting worker" in line for line in node.log_lines())


def test_rolling_restart_of_one_node_fails_no_request(
    cluster_factory: Callable[..., Cluster], actions: Actions
) -> None:
    cluster = cluster_factory()
    oauth_client = actions.oauth_client()
    node = cluster.nodes[0]

    def work(session: requests.Session, name: str) -> tuple[str, int]:
        kind = sum(name.encode()) % 3
        if kind == 0:
            answer = session.get(f"{cluster.url}/.well-known/jwks.json", timeout=TIMEOUT)
        elif kind == 1:
            answer = session.post(
                f"{cluster.url}/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=oauth_client.auth,
                timeout=TIMEOUT,
            )
        else:
            answer = _signup(cluster.url, name, session)
            return name, 200 if answer.status_code == 201 else answer.status_code
        return name, answer.status_code

    load = Load(cluster.url, work).start()
    load.wait_for_answers(30)
    booted = _booted_workers(node)
    node.signal(signal.SIGHUP)  # reload: new workers take over the socket, the old ones finish
    wait_until(lambda: _booted_workers(node) >= booted + 2, 20, "HUP started no new workers")
    load.wait_for_answers(30)
    cluster.balancer.drain("node1")  # no new request, in-flight ones answered
    node.terminate()  # TERM: gunicorn's graceful stop
    load.wait_for_answers(30)  # served by the other node alone
    served = _served(node)
    node.start()
    cluster.balancer.ready("node1")
    load.wait_for_answers(30)
    assert _served(node) > served  # back in the pool, and serving
    answers = load.stop()
    failed = [(name, status) for name, status in answers if status != 200]
    assert failed == [], f"{len(failed)} of {len(answers)} requests failed: {failed[:10]}"
    assert len(answers) >= 120


def test_killed_node_is_drained_and_loses_no_acknowledged_write(
    cluster_factory: Callable[..., Cluster], database_url: str
) -> None:
    cluster = cluster_factory()

    def work(session: requests.Session, name: str) -> tuple[str, int]:
        return name, _signup(cluster.url, name, session).status_code

    load = Load(cluster.url, work).start()
    load.wait_for_answers(30)
    killed_at = len(load.answers)
    cluster.nodes[0].kill()  # SIGKILL to the master and its workers, mid-request
    cluster.balancer.wait_for({"node1": "DOWN"}, seconds=5)
    load.wait_for_answers(30)  # the other node alone now
    answers = load.stop()
    acknowledged = {name for name, status in answers if status == 201}
    engine = create_engine(database_url)
    with engine.connect() as conn:
        stored = set(conn.scalars(select(User.username)).all())
    engine.dispose()
    assert acknowledged <= stored, f"acknowledged but lost: {sorted(acknowledged - stored)}"
    assert len(acknowledged) >= 60
    # Only requests that reached the killed node can fail: the one in flight on each thread
    # (at most one more, should a thread send another in the instant the node dies). The node
    # died before answering, whether or not it had committed, and the balancer does not send
    # such a POST again (a replay of a committed sign-up would answer 409): the client gets a
    # 502, or its connection closed. Nothing after that: a refused connection is retried.
    failed = [(i, name, status) for i, (name, status) in enumerate(answers) if status != 201]
    assert len(failed) <= 2 * load.threads, failed
    assert not any(status == 409 for _i, _name, status in failed), failed
    assert all(i < killed_at + load.threads * 3 for i, _name, _status in failed), failed


def test_launcher_serves_on_when_a_node_exits_and_stops_when_haproxy_does() -> None:
    """A rolling restart under `make cluster` stops a node by hand: that is no reason to end."""
    processes = {name: subprocess.Popen(["sleep", "60"]) for name in ("node1", "node2", "lb")}
    lines: list[str] = []
    ended: list[int] = []
    balancer = processes.pop("lb")
    watcher = threading.Thread(
        target=lambda: ended.append(
            supervise(processes, balancer, lambda: False, lines.append, {"node1": "start-1"})
        ),
        daemon=True,
    )
    watcher.start()
    try:
        processes["node1"].terminate()
        wait_until(lambda: lines, 5, "the launcher never reported the node")
        assert lines == ["node1 down (exit status -15); to start it again: start-1"]
        assert watcher.is_alive() and processes["node2"].poll() is None
        balancer.terminate()
        watcher.join(timeout=5)
        assert ended == [1]
        assert lines[1:] == ["Error: HAProxy exited with status -15"]
    finally:
        for process in (balancer, *processes.values()):
            process.kill()
            process.wait()


def test_launcher_prints_a_command_that_starts_a_node_again(base_settings: Settings) -> None:
    node = LiveServer(base_settings, 1)  # its environment and port; started by the command
    command = start_command(node.address, node.env)
    assert f"PORT={node.port}" in command
    assert f"TOKENSERVER_DATABASE_URL={base_settings.database_url}" in command
    shell = subprocess.Popen(
        ["sh", "-c", command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def healthy() -> bool:
            try:
                return requests.get(f"{node.url}/healthz", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(healthy, 30, "the printed command started no node", shell)
    finally:
        os.killpg(shell.pid, signal.SIGTERM)
        shell.wait(timeout=35)
        node.stop()  # its port and logs
