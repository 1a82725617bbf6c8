"""PostgreSQL going away under load: fast JSON 503s, /readyz 503, recovery, no acknowledged loss.

The test runs a PostgreSQL cluster of its own (initdb and pg_ctl, on a port it keeps) and kills it
with `pg_ctl stop -m immediate`, as a crash would; it never touches the shared server. It makes
its cluster whatever TEST_DATABASE_URL says, so it runs once per `make test`: in the PostgreSQL
run, the one that says PostgreSQL is installed here.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from sqlalchemy import create_engine, func, select, text

from bench.server import Port, PortTaken, on_a_port_of_its_own
from tests.conftest import FAST_HASHING, PASSWORD
from tests.helpers import until_a_backend_waits_for_a_lock
from tokenserver import create_app
from tokenserver.clients import ClientSpec, register_client
from tokenserver.config import Settings
from tokenserver.digests import digest
from tokenserver.extensions import db
from tokenserver.models import JunkItem, TokenRecord, User

_BINARIES = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
pytestmark = [
    pytest.mark.skipif(
        not os.environ.get("TEST_DATABASE_URL", "").startswith("postgresql"),
        reason="runs once per make test, in the PostgreSQL run (TEST_DATABASE_URL=postgresql...)",
    ),
    pytest.mark.skipif(not _BINARIES, reason="needs PostgreSQL's server binaries (initdb, pg_ctl)"),
]

OUTAGE_ANSWER_SECONDS = 5  # during the outage each request is refused within this
RECOVERY_SECONDS = 20  # after the database is back, /readyz says ready within this


class Cluster:
    """A throwaway PostgreSQL cluster on a loopback Port of its own, run as the postgres user.

    The port stays ours until remove(), so the cluster can crash and start again on it.
    """

    def __init__(self) -> None:
        self._port = Port()
        self.root = Path(tempfile.mkdtemp(prefix="tokenserver-pg-"))
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"

    @property
    def port(self) -> int:
        return self._port.number

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/tokenserver"

    def _run(self, tool: str, *args: str) -> None:
        runner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        command = [*runner, os.path.join(_BINARIES[-1], tool), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=60, cwd=self.root)

    def create(self) -> Cluster:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        on_a_port_of_its_own(self._first_start, self._move)
        admin = create_engine(
            self.url.replace("/tokenserver", "/postgres"), isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(text("CREATE DATABASE tokenserver"))
        admin.dispose()
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        log = str(self.root / "postgres.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def _first_start(self) -> None:
        """start(), or PortTaken if the postmaster could not bind: another process listens."""
        before = len(self._log())
        try:
            self.start()
        except subprocess.CalledProcessError:
            if "Address already in use" in self._log()[before:]:  # this start's lines only
                raise PortTaken(f"another process listens on 127.0.0.1:{self.port}") from None
            raise

    def _move(self, port: Port) -> None:
        self._port.release()
        self._port = port

    def _log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def crash(self) -> None:
        """Stop at once, as a crash would: no clean shutdown, clients cut off mid-query."""
        self.stop("immediate")

    def stop(self, mode: str) -> None:
        """pg_ctl's stop: `fast` ends every session cleanly, `immediate` as a crash would."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self.crash()  # it may be down already
        self._port.release()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A migrated database on a cluster of this test's own, with an OAuth client."""
    made = Cluster()
    try:
        yield made.create()
    finally:
        made.remove()


@dataclass
class Answer:
    """One request the load made and what came of it."""

    kind: str
    key: str
    started: float
    elapsed: float
    status: int | None = None
    body: Any = None
    error: str | None = None


@dataclass
class Load:
    """Writers in threads, recording every answer; the test waits on what they have seen."""

    url: str
    auth: tuple[str, str]
    bearer: str
    answers: list[Answer] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, worker: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            for kind in ("signup", "login", "junk"):
                self._record(kind, f"w{worker}-{n}", worker)

    def _record(self, kind: str, key: str, worker: int) -> None:
        started = time.monotonic()
        answer = Answer(kind, key, started, 0.0)
        try:
            response = self._send(kind, key, worker)
            answer.status = response.status_code
            answer.body = response.json()
        except (requests.RequestException, ValueError) as exc:
            answer.error = repr(exc)
        answer.elapsed = time.monotonic() - started
        with self.changed:
            self.answers.append(answer)
            self.changed.notify_all()

    def _send(self, kind: str, key: str, worker: int) -> requests.Response:
        timeout = 30  # far above the bound asserted: a hang shows as a slow answer
        if kind == "signup":
            body = {"username": f"user-{key}", "password": PASSWORD}
            return requests.post(f"{self.url}/users", json=body, timeout=timeout)
        if kind == "login":
            # One account per thread: the password guard rightly slows many parallel checks
            # of one account.
            form = {"grant_type": "password", "username": f"steady-{worker}", "password": PASSWORD}
            return requests.post(
                f"{self.url}/oauth/token", data=form, auth=self.auth, timeout=timeout
            )
        headers = {"Authorization": f"Bearer {self.bearer}"}
        item = {"name": f"item {key}"}
        return requests.post(f"{self.url}/junk", json=item, headers=headers, timeout=timeout)

    def wait_for(self, test: Callable[[list[Answer]], bool], seconds: float, what: str) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: test(self.answers), timeout=seconds):
                raise AssertionError(f"not seen within {seconds} s: {what}")


def _successes(answers: list[Answer], since: float = 0.0) -> int:
    return sum(1 for a in answers if a.started >= since and a.status in (200, 201))


def _prepare(url: str, spec: ClientSpec | None = None) -> tuple[str, str]:
    """Migrate the cluster's database and register a client (by default one with the password
    grant); returns its credentials."""
    from flask_migrate import upgrade

    app = create_app(
        Settings(database_url=url, ratelimit_enabled=False, **FAST_HASHING), migrations=True
    )
    with app.app_context():
        upgrade()
        client, secret = register_client(spec or ClientSpec("faults", grants=("password",)))
        db.engine.dispose()
    assert secret is not None
    return client.client_id, secret


def _ready_status(url: str) -> tuple[int, Any]:
    response = requests.get(f"{url}/readyz", timeout=10)
    return response.status_code, response.json()


def _jti(access_token: str) -> str:
    payload = access_token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"])


def _check_nothing_acknowledged_was_lost(url: str, answers: list[Answer]) -> None:
    engine = create_engine(url)
    with engine.connect() as conn:
        users = set(conn.scalars(select(User.username)))
        jtis = set(conn.scalars(select(TokenRecord.jti).where(TokenRecord.jti.is_not(None))))
        hashes = set(
            conn.scalars(select(TokenRecord.token_hash).where(TokenRecord.token_hash.is_not(None)))
        )
        items = set(conn.scalars(select(JunkItem.id)))
    engine.dispose()
    for a in answers:
        if a.kind == "signup" and a.status == 201:
            assert a.body["username"] in users, a
        elif a.kind == "login" and a.status == 200:
            assert _jti(a.body["access_token"]) in jtis, a
            assert digest(a.body["refresh_token"]) in hashes, a
        elif a.kind == "junk" and a.status == 201:
            assert a.body["id"] in items, a


def test_database_outage_answers_503_fast_and_recovers_without_losing_writes(
    cluster: Cluster, live_server_factory: Any
) -> None:
    client_id, secret = _prepare(cluster.url)
    server = live_server_factory(workers=2, TOKENSERVER_DATABASE_URL=cluster.url)
    for worker in range(4):
        account = {"username": f"steady-{worker}", "password": PASSWORD}
        assert requests.post(f"{server.url}/users", json=account, timeout=30).status_code == 201
    form = {"grant_type": "password", "username": "steady-0", "password": PASSWORD}
    first = requests.post(
        f"{server.url}/oauth/token", data=form, auth=(client_id, secret), timeout=30
    )
    assert first.status_code == 200, first.text
    load = Load(server.url, (client_id, secret), first.json()["access_token"])
    threads = [threading.Thread(target=load.run, args=(w,), daemon=True) for w in range(4)]
    for thread in threads:
        thread.start()
    try:
        load.wait_for(lambda a: _successes(a) >= 30, 30, "writes succeeding before the outage")

        cluster.crash()
        down = time.monotonic()
        load.wait_for(
            lambda a: sum(x.started >= down for x in a) >= 24, 30, "answers in the outage"
        )
        status, body = _ready_status(server.url)
        assert status == 503 and body["status"] == "unavailable"
        up = time.monotonic()
        cluster.start()

        recovered = _poll_ready(server.url, RECOVERY_SECONDS)
        load.wait_for(lambda a: _successes(a, recovered) >= 30, 30, "writes succeeding again")
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=60)

    answers = list(load.answers)
    assert not [a for a in answers if a.error], "a request failed without an HTTP answer"
    assert not [a for a in answers if a.status not in (200, 201, 503)]
    during = [a for a in answers if a.started >= down and a.started + a.elapsed <= up]
    assert len(during) >= 24
    for a in during:
        assert a.status == 503, a
        assert a.body["error"] == "service_unavailable", a
        assert a.elapsed < OUTAGE_ANSWER_SECONDS, a
    assert max(a.elapsed for a in answers) < OUTAGE_ANSWER_SECONDS * 2
    for kind in ("signup", "login", "junk"):
        assert any(
            a.kind == kind and a.started >= recovered and a.status in (200, 201) for a in answers
        ), kind
    _check_nothing_acknowledged_was_lost(cluster.url, answers)


def _poll_ready(url: str, seconds: float) -> float:
    """Poll /readyz until it answers 200; returns when it did."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _ready_status(url)[0] == 200:
            return time.monotonic()
        time.sleep(0.1)  # polling a server until it is ready
    raise AssertionError(f"/readyz not ready within {seconds} s of the database's return")


_EVERY_GRANT = ClientSpec(
    "faults",
    grants=(
        "password",
        "refresh_token",
        "client_credentials",
        "urn:ietf:params:oauth:grant-type:device_code",
    ),
    introspect=True,
)
# What each kind of route answers with the database up, for _every_route's requests.
_SERVING = {
    "healthz": 200,
    "readyz": 200,
    "metadata": 200,
    "jwks": 200,
    "password grant": 200,
    "client credentials": 200,
    "introspection": 200,
    "revocation": 200,
    "sign-up": 201,
    "users/me": 200,
    "junk": 201,
    "registration": 401,  # an unknown initial access token, looked up in the database
    "device authorization": 200,
    "authorize page": 400,  # a page: no such client
    "account page": 303,  # an unknown browser session, looked up: to the sign-in page
}
_NEEDS_NO_DATABASE = {"healthz", "metadata"}


@dataclass
class _Caller:
    """A client of every kind of route, with an account and its tokens."""

    url: str
    auth: tuple[str, str]
    access: str = ""
    calls: int = 0

    def every_route(self) -> dict[str, requests.Response]:
        """One request to each kind of route, in _SERVING's order."""
        self.calls += 1
        bearer = {"Authorization": f"Bearer {self.access}"}
        login = {"grant_type": "password", "username": "steady", "password": PASSWORD}
        authorize = {  # well formed, from a client that must be looked up
            "client_id": "unknown-client",
            "response_type": "code",
            "redirect_uri": "http://127.0.0.1/callback",
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256",
        }
        requests_made = {
            "healthz": ("GET", "/healthz", {}),
            "readyz": ("GET", "/readyz", {}),
            "metadata": ("GET", "/.well-known/oauth-authorization-server", {}),
            "jwks": ("GET", "/.well-known/jwks.json", {}),
            "password grant": ("POST", "/oauth/token", {"data": login, "auth": self.auth}),
            "client credentials": (
                "POST",
                "/oauth/token",
                {"data": {"grant_type": "client_credentials"}, "auth": self.auth},
            ),
            "introspection": (
                "POST",
                "/oauth/introspect",
                {"data": {"token": self.access}, "auth": self.auth},
            ),
            "revocation": ("POST", "/oauth/revoke", {"data": {"token": "x"}, "auth": self.auth}),
            "sign-up": (
                "POST",
                "/users",
                {"json": {"username": f"user-{self.calls}", "password": PASSWORD}},
            ),
            "users/me": ("GET", "/users/me", {"headers": bearer}),
            "junk": ("POST", "/junk", {"json": {"name": "lamp"}, "headers": bearer}),
            "registration": (
                "POST",
                "/oauth/register",
                {"json": {"client_name": "x"}, "headers": {"Authorization": "Bearer unknown"}},
            ),
            "device authorization": ("POST", "/oauth/device_authorization", {"auth": self.auth}),
            "authorize page": ("GET", "/oauth/authorize", {"params": authorize}),
            "account page": ("GET", "/account", {"cookies": {"tokenserver_session": "x"}}),
        }
        return {
            name: requests.request(
                method, self.url + path, timeout=30, allow_redirects=False, **options
            )
            for name, (method, path, options) in requests_made.items()
        }


def _caller(cluster: Cluster, live_server_factory: Any) -> _Caller:
    """gunicorn on the cluster, an account `steady` and a client of every grant, signed in."""
    client_id, secret = _prepare(cluster.url, _EVERY_GRANT)
    server = live_server_factory(workers=2, TOKENSERVER_DATABASE_URL=cluster.url)
    caller = _Caller(server.url, (client_id, secret))
    account = {"username": "steady", "password": PASSWORD}
    assert requests.post(f"{server.url}/users", json=account, timeout=30).status_code == 201
    caller.access = caller.every_route()["password grant"].json()["access_token"]
    return caller


def _statuses(answers: dict[str, requests.Response]) -> dict[str, int]:
    return {name: response.status_code for name, response in answers.items()}


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_every_route_answers_json_during_an_outage_and_at_once_after_it(
    cluster: Cluster, live_server_factory: Any, mode: str
) -> None:
    caller = _caller(cluster, live_server_factory)
    for _ in range(3):  # every worker's pool holds connections that the stop will kill
        assert _statuses(caller.every_route()) == _SERVING
    cluster.stop(mode)

    for name, response in caller.every_route().items():
        assert response.headers["Content-Type"] == "application/json", name
        body = response.json()
        if name in _NEEDS_NO_DATABASE or (name == "jwks" and response.status_code == 200):
            assert response.status_code == 200, name  # the JWKS: from the key cache, a while
        elif name == "readyz":
            assert response.status_code == 503
            assert body == {"status": "unavailable", "reason": "database unreachable"}
        else:
            assert response.status_code == 503, (name, body)
            assert body["error"] == "service_unavailable", name
            assert response.headers["Retry-After"] == "1", name

    cluster.start()
    # No pooled connection the outage killed is handed out: the first requests succeed.
    assert _statuses(caller.every_route()) == _SERVING


def test_connections_the_database_ends_while_idle_are_replaced_unnoticed(
    cluster: Cluster, live_server_factory: Any
) -> None:
    caller = _caller(cluster, live_server_factory)
    for _ in range(3):
        assert _statuses(caller.every_route()) == _SERVING
    with psycopg.connect(_libpq(cluster), autocommit=True) as admin:
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert ended is not None and ended[0] >= 2  # each worker's pooled connections
    for _ in range(3):
        assert _statuses(caller.every_route()) == _SERVING


def test_a_refresh_cut_off_mid_transaction_by_a_crash_leaves_nothing_behind(
    cluster: Cluster, live_server_factory: Any
) -> None:
    caller = _caller(cluster, live_server_factory)
    login = {"grant_type": "password", "username": "steady", "password": PASSWORD}
    tokens = requests.post(
        f"{caller.url}/oauth/token", data=login, auth=caller.auth, timeout=30
    ).json()
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    engine = create_engine(cluster.url)
    with engine.connect() as conn:
        records = conn.scalar(select(func.count()).select_from(TokenRecord))
    answers: list[requests.Response] = []

    def send() -> None:
        url = f"{caller.url}/oauth/token"
        answers.append(requests.post(url, data=refresh, auth=caller.auth, timeout=30))

    # The refresh spends its token, then waits to store the new ones (their foreign key needs
    # the login's row, which another session holds): the database dies in that transaction.
    holder, watcher = engine.connect(), engine.connect()
    holder.execute(text("SELECT id FROM token_families FOR UPDATE"))
    sender = threading.Thread(target=send)
    sender.start()
    until_a_backend_waits_for_a_lock(watcher, sender)
    cluster.crash()
    sender.join(30)
    for conn in (holder, watcher):
        conn.invalidate()  # their sessions died with the server: nothing to roll back
    engine.dispose()
    assert answers[0].status_code == 503, answers[0].text
    assert answers[0].json()["error"] == "service_unavailable"

    cluster.start()
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(TokenRecord)) == records
    engine.dispose()
    # Nothing of it was committed: the refresh token is unspent, and spends once.
    url = f"{caller.url}/oauth/token"
    assert requests.post(url, data=refresh, auth=caller.auth, timeout=30).status_code == 200
    again = requests.post(url, data=refresh, auth=caller.auth, timeout=30)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def _libpq(cluster: Cluster) -> str:
    return f"host=127.0.0.1 port={cluster.port} user=postgres dbname=tokenserver"
