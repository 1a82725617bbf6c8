"""GET /metrics: requests, latency and domain events, counted exactly across gunicorn workers."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from flask import Flask, abort
from flask.testing import FlaskClient
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PASSWORD, ROOT, Actions
from tokenserver import metric_files

from .helpers import REQUESTS, Flow, sample

_UNUSED_PATH = "/no-such-route-but-this-test"


def label_values(text: str, name: str, label: str) -> set[str]:
    """Every value `label` takes among the samples called `name`."""
    return {
        s.labels[label]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and label in s.labels
    }


def scrape(client: FlaskClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_metrics_are_prometheus_text(client: FlaskClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert response.headers["Cache-Control"] == "no-store"
    names = {f.name for f in text_string_to_metric_families(response.get_data(as_text=True))}
    assert {
        "tokenserver_http_requests",
        "tokenserver_http_request_duration_seconds",
        "tokenserver_tokens_issued",
        "tokenserver_login_failures",
        "tokenserver_unknown_user_password_checks",
        "tokenserver_throttled_requests",
        "tokenserver_introspections",
    } <= names


def test_requests_are_labelled_by_route_template_never_raw_path(
    app: Flask, client: FlaskClient
) -> None:
    @app.get("/things/<name>")
    def thing(name: str) -> dict[str, str]:
        return {"name": name}

    before = scrape(client)
    for name in ("first-secret-looking-path", "second", "third"):
        assert client.get(f"/things/{name}").status_code == 200
    after = scrape(client)
    labels = {"method": "GET", "route": "/things/<name>", "status": "200"}
    assert sample(after, REQUESTS, **labels) - sample(before, REQUESTS, **labels) == 3
    assert not any("secret" in route for route in label_values(after, REQUESTS, "route"))


def test_unknown_paths_share_one_series(client: FlaskClient) -> None:
    before = scrape(client)
    for n in range(5):
        assert client.get(f"/no/such/{n}").status_code == 404
    assert client.open("/healthz", method="BREW").status_code == 405
    after = scrape(client)
    labels = {"method": "GET", "route": "<unmatched>", "status": "404"}
    assert sample(after, REQUESTS, **labels) - sample(before, REQUESTS, **labels) == 5
    # An invented method cannot mint series either.
    assert "BREW" not in label_values(after, REQUESTS, "method")
    assert not any(route.startswith("/no/such") for route in label_values(after, REQUESTS, "route"))


def test_latency_is_observed_once_per_request(client: FlaskClient) -> None:
    count = "tokenserver_http_request_duration_seconds_count"
    before = sample(scrape(client), count, method="GET", route="/healthz")
    for _ in range(4):
        client.get("/healthz")
    after = scrape(client)
    assert sample(after, count, method="GET", route="/healthz") - before == 4
    assert sample(after, "tokenserver_http_request_duration_seconds_sum", route="/healthz") > 0


def test_scrapes_do_not_count_themselves(client: FlaskClient) -> None:
    scrape(client)
    scrape(client)
    assert "/metrics" not in label_values(scrape(client), REQUESTS, "route")


def test_tokens_issued_are_counted_by_grant(actions: Actions, client: FlaskClient) -> None:
    before = scrape(client)
    login = actions.login("alice")
    oauth_client = login["client"]
    refreshed = client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": login["refresh_token"]},
        auth=oauth_client.auth,
    )
    assert refreshed.status_code == 200
    machine = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=oauth_client.auth
    )
    assert machine.status_code == 200
    after = scrape(client)
    issued = "tokenserver_tokens_issued_total"
    for grant in ("password", "refresh_token", "client_credentials"):
        delta = sample(after, issued, grant_type=grant) - sample(before, issued, grant_type=grant)
        assert delta == 1, grant


def test_wrong_passwords_count_as_login_failures(actions: Actions, client: FlaskClient) -> None:
    actions.user("alice")
    oauth_client = actions.oauth_client()
    failures = "tokenserver_login_failures_total"
    before = scrape(client)
    assert actions.token(oauth_client, "alice", "not the password").status_code == 400
    assert actions.token(oauth_client, "nobody-here", "not the password").status_code == 400
    # A malformed request is not a failed login.
    bad = client.post("/oauth/token", data={"grant_type": "password"}, auth=oauth_client.auth)
    assert bad.status_code == 400
    assert actions.token(oauth_client, "alice").status_code == 200
    after = scrape(client)
    assert sample(after, failures) - sample(before, failures) == 2
    issued = "tokenserver_tokens_issued_total"
    assert (
        sample(after, issued, grant_type="password") - sample(before, issued, grant_type="password")
        == 1
    )


def test_a_grant_type_sent_after_an_empty_one_is_counted_as_that_grant(
    actions: Actions, client: FlaskClient
) -> None:
    # The token endpoint reads the grant type sent with a value; so do the counters.
    actions.user("alice")
    oauth_client = actions.oauth_client()
    issued, failures = "tokenserver_tokens_issued_total", "tokenserver_login_failures_total"
    before = scrape(client)
    for password in (PASSWORD, "not the password"):
        client.post(
            "/oauth/token",
            data=urlencode(
                [("grant_type", ""), ("grant_type", "password")]
                + [("username", "alice"), ("password", password)]
            ),
            content_type="application/x-www-form-urlencoded",
            auth=oauth_client.auth,
        )
    after = scrape(client)
    assert (
        sample(after, issued, grant_type="password") - sample(before, issued, grant_type="password")
        == 1
    )
    assert sample(after, failures) - sample(before, failures) == 1


def test_wrong_passwords_on_the_sign_in_page_count_as_login_failures(
    app: Flask, actions: Actions, client: FlaskClient
) -> None:
    # With the password grant off, the page is where every password is typed.
    actions.user("alice")
    browser = Flow(app, app.test_client())
    failures = "tokenserver_login_failures_total"
    before = scrape(client)
    assert browser.login("alice", "not the password").status_code == 400
    assert browser.login("nobody-here", "not the password").status_code == 400
    # A form that is refused before any password is checked is no failed sign-in.
    assert client.post("/login", data={"username": "alice", "password": "x"}).status_code == 403
    assert browser.login("alice").status_code == 303
    after = scrape(client)
    assert sample(after, failures) - sample(before, failures) == 2


def test_introspections_are_counted_by_result(actions: Actions, client: FlaskClient) -> None:
    login = actions.login("alice")
    auth = login["client"].auth
    counted = "tokenserver_introspections_total"
    before = scrape(client)
    for token in (login["access_token"], login["refresh_token"]):
        answer = client.post("/oauth/introspect", data={"token": token}, auth=auth)
        assert answer.json["active"] is True
    answer = client.post("/introspect", data={"token": "not-a-token"}, auth=auth)
    assert answer.json == {"active": False}
    after = scrape(client)
    assert sample(after, counted, active="true") - sample(before, counted, active="true") == 2
    assert sample(after, counted, active="false") - sample(before, counted, active="false") == 1


def test_429_answers_count_as_throttled(app: Flask, client: FlaskClient) -> None:
    @app.get("/limited")
    def limited() -> None:
        abort(429)

    throttled = "tokenserver_throttled_requests_total"
    before = sample(scrape(client), throttled, route="/limited")
    assert client.get("/limited").status_code == 429
    assert client.get("/limited").status_code == 429
    assert sample(scrape(client), throttled, route="/limited") - before == 2


def test_metrics_are_never_rate_limited(make_app: Any) -> None:
    client = make_app(ratelimit_enabled=True, ratelimit_default="5/minute").test_client()
    assert {client.get("/metrics").status_code for _ in range(20)} == {200}
    # The same limit does apply to its neighbours: the limiter is on in this app.
    assert 429 in {
        client.get("/.well-known/oauth-authorization-server").status_code for _ in range(20)
    }


def _hammer(url: str, paths: list[str]) -> list[int]:
    def get(path: str) -> int:
        # Generous: under load a recycled worker may take seconds to load the app.
        return requests.get(url + path, timeout=60).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        return list(pool.map(get, paths))


def _pids_with_counts(folder: Path) -> set[str]:
    """Worker pids whose own counter file holds a request count above zero."""
    pids = set()
    for path in folder.glob("counter_*.db"):
        values = MmapedDict.read_all_values_from_file(str(path))
        if any(REQUESTS in key and value > 0 for key, value, _ts, _pos in values):
            pids.add(path.stem.split("_", 1)[1])
    return pids


def _wait_for_workers(folder: Path, workers: int) -> None:
    """Poll until every worker has loaded the app (each makes its counter file at import)."""
    deadline = time.monotonic() + 60
    while len(list(folder.glob("counter_*.db"))) < workers:
        assert time.monotonic() < deadline, "the workers did not all start"
        time.sleep(0.05)  # polling for start-up


def test_totals_are_exact_across_workers(live_server_factory: Any, tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    stale = folder / "counter_4242.db"  # left by an earlier master: must not count
    left = MmapedDict(str(stale))
    help_text = "HTTP requests answered, by method, route template and status."
    labels = (["method", "route", "status"], ["GET", "/healthz", "200"])
    key = mmap_key("tokenserver_http_requests", REQUESTS, *labels, help_text)
    left.write_value(key, 1000.0, 0.0)
    left.close()
    server = live_server_factory(workers=2, PROMETHEUS_MULTIPROC_DIR=str(folder))
    assert not stale.exists()
    _wait_for_workers(folder, 2)
    before = requests.get(f"{server.url}/metrics", timeout=10).text
    assert sample(before, REQUESTS, method="GET", route="/healthz", status="200") < 1000
    # A path nothing else asks for: the start-up poll of /healthz may still be answered (and
    # counted) after its client gave up, which would make a /healthz total off by one.
    n = 0
    while n == 0 or len(_pids_with_counts(folder)) < 2:  # until both workers answered some
        assert n < 1200, "one worker answered every request"
        assert set(_hammer(server.url, [_UNUSED_PATH] * 120)) == {404}
        n += 120
    labels = {"method": "GET", "route": "<unmatched>", "status": "404"}
    count = "tokenserver_http_request_duration_seconds_count"
    # Whichever worker answers the scrape, it reports every worker's counts.
    for _ in range(6):
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        assert sample(text, REQUESTS, **labels) - sample(before, REQUESTS, **labels) == n
        assert (
            sample(text, count, method="GET", route="<unmatched>")
            - sample(before, count, method="GET", route="<unmatched>")
            == n
        )


def test_counts_survive_worker_recycling(live_server_factory: Any, tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    server = live_server_factory(
        workers=2,
        PROMETHEUS_MULTIPROC_DIR=str(folder),
        GUNICORN_CMD_ARGS="--max-requests 10 --max-requests-jitter 0",
    )
    labels = {"method": "GET", "route": "<unmatched>", "status": "404"}
    before = sample(requests.get(f"{server.url}/metrics", timeout=10).text, REQUESTS, **labels)
    n = 30  # more than the two workers may serve: at least one is recycled
    assert set(_hammer(server.url, [_UNUSED_PATH] * n)) == {404}
    for _ in range(3):
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        assert sample(text, REQUESTS, **labels) - before == n
    # Dead workers are folded into one archive file per type, so files do not pile up.
    assert (folder / "counter_archive.db").exists()
    assert len(list(folder.glob("counter_*.db"))) <= 4  # two workers, the archive, one reaping


def test_a_scrape_while_a_worker_starts_is_answered(
    live_server_factory: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "metrics"
    server = live_server_factory(workers=1, PROMETHEUS_MULTIPROC_DIR=str(folder))
    requests.get(f"{server.url}{_UNUSED_PATH}", timeout=10)
    # A worker starting (one replacing a recycled worker) has opened its file, not yet sized it.
    (folder / "counter_4243.db").touch()
    (folder / "histogram_4243.db").touch()
    answer = requests.get(f"{server.url}/metrics", timeout=10)
    assert answer.status_code == 200
    assert sample(answer.text, REQUESTS, method="GET", route="<unmatched>", status="404") == 1


def test_a_worker_that_died_starting_is_folded_as_nothing(tmp_path: Path) -> None:
    key = _write_counts(tmp_path / "counter_101.db", 3.0)
    metric_files.worker_exited(101, str(tmp_path))
    (tmp_path / "counter_102.db").touch()  # opened, never sized
    metric_files.worker_exited(102, str(tmp_path))
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_archive.db"]
    archived = MmapedDict.read_all_values_from_file(str(tmp_path / "counter_archive.db"))
    assert [(k, v) for k, v, _ts, _pos in archived] == [(key, 3.0)]


def test_only_prometheus_free_modules_load_before_the_directory_is_chosen() -> None:
    # gunicorn.conf.py imports these before choosing PROMETHEUS_MULTIPROC_DIR; had one of them
    # imported prometheus_client, every worker would count for itself alone.
    check = (
        "import sys, tokenserver.metric_files, tokenserver.config, tokenserver.gunicorn_logging;"
        "sys.exit('prometheus_client' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", check], cwd=ROOT, timeout=60).returncode == 0


def test_the_operators_directory_is_kept_and_others_masters_are_not_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # directories it makes go here
    operators = tmp_path / "operators"
    operators.mkdir()
    monkeypatch.setenv(metric_files.ENV, str(operators))
    assert metric_files.choose_directory() == str(operators)
    metric_files.remove_if_own(str(operators))
    assert operators.exists()  # never deleted: it is not ours

    monkeypatch.delenv(metric_files.ENV)
    made = metric_files.choose_directory()
    assert made != str(operators) and os.environ[metric_files.ENV] == made
    assert metric_files.choose_directory() == made  # a configuration reload keeps it

    (Path(made) / ".owner").write_text("1")  # as if made for another master (USR2 upgrade)
    fresh = metric_files.choose_directory()
    assert fresh != made
    metric_files.remove_if_own(fresh)
    assert not Path(fresh).exists()


def test_a_master_that_cannot_bind_leaves_no_metrics_directory(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104 (where the deployed config binds)
        taken.listen()
        port = str(taken.getsockname()[1])
        failed = subprocess.run(
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env={"PATH": "/usr/bin:/bin", "PORT": port, "TMPDIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert failed.returncode == 1 and "Connection in use" in failed.stderr
    assert list(tmp_path.glob("tokenserver-metrics-*")) == []


def test_a_stopped_master_leaves_no_metrics_directory(
    tmp_path: Path, live_server_factory: Any
) -> None:
    made = tmp_path / "made"
    made.mkdir()
    server = live_server_factory(workers=1, TMPDIR=str(made))
    [folder] = made.glob("tokenserver-metrics-*")  # made for this master while it serves
    assert requests.get(f"{server.url}/metrics", timeout=10).status_code == 200
    server.stop()
    assert not folder.exists()


def _write_counts(path: Path, value: float) -> str:
    key = mmap_key("demo", "demo_total", ["route"], ["/x"], "A demo counter.")
    values = MmapedDict(str(path))
    values.write_value(key, value, 0.0)
    values.close()
    return key


def test_a_dead_workers_counts_are_folded_into_the_archive(tmp_path: Path) -> None:
    _write_counts(tmp_path / "counter_101.db", 3.0)
    _write_counts(tmp_path / "counter_102.db", 4.0)
    metric_files.worker_exited(101, str(tmp_path))
    metric_files.worker_exited(102, str(tmp_path))
    key = _write_counts(tmp_path / "counter_103.db", 5.0)  # still alive
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_103.db", "counter_archive.db"]
    archived = MmapedDict.read_all_values_from_file(str(tmp_path / "counter_archive.db"))
    assert [(k, v) for k, v, _ts, _pos in archived] == [(key, 7.0)]
    total = MultiProcessCollector(None, path=str(tmp_path)).collect()
    (family,) = [f for f in total if f.name == "demo"]
    assert [s.value for s in family.samples] == [12.0]
