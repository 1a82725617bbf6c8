"""Request ids and JSON logs: every response names its request, every log line inside it too."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, abort, request
from flask.testing import FlaskClient
from gunicorn.config import Config
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tokenserver.extensions import db
from tokenserver.gunicorn_logging import JSONLogger

from .conftest import Actions


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line parsed as JSON (failing the test on any line that is not)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_plain_request_id_is_echoed(client: FlaskClient) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": "edge-7f3a:42"})
    assert response.headers["X-Request-ID"] == "edge-7f3a:42"


@pytest.mark.parametrize(
    "supplied",
    ["", "a" * 129, "two words", "line\\nbreak", 'quote"d', "semi;colon"],
)
def test_an_unsafe_or_missing_request_id_is_replaced(client: FlaskClient, supplied: str) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": supplied})
    made = response.headers["X-Request-ID"]
    assert made != supplied
    assert len(made) == 32 and int(made, 16) >= 0


def test_each_request_gets_its_own_id(client: FlaskClient) -> None:
    ids = {client.get("/healthz").headers["X-Request-ID"] for _ in range(5)}
    assert len(ids) == 5


def test_log_lines_in_a_request_carry_its_id(
    app: Flask, client: FlaskClient, capfd: pytest.CaptureFixture[str]
) -> None:
    @app.get("/chatty")
    def chatty() -> dict[str, str]:
        logging.getLogger("tokenserver.example").info("did a thing", extra={"fields": {"n": 3}})
        logging.getLogger("some.library").warning('a "quoted"\nmessage')
        return {}

    capfd.readouterr()
    client.get("/chatty", headers={"X-Request-ID": "req-abc"})
    lines = json_lines(capfd.readouterr().err)
    ours = [line for line in lines if line["logger"] == "tokenserver.example"]
    theirs = [line for line in lines if line["logger"] == "some.library"]
    assert len(ours) == 1 and len(theirs) == 1
    assert ours[0]["request_id"] == "req-abc"
    assert ours[0]["message"] == "did a thing"
    assert ours[0]["n"] == 3
    assert ours[0]["level"] == "info"
    assert theirs[0]["request_id"] == "req-abc"
    assert theirs[0]["message"] == 'a "quoted"\nmessage'


def test_a_request_refused_by_an_earlier_hook_still_has_its_id(
    app: Flask, client: FlaskClient, capfd: pytest.CaptureFixture[str]
) -> None:
    @app.before_request
    def refuse() -> None:
        if request.path == "/refused":
            logging.getLogger("tokenserver.example").warning("refusing")
            abort(429)

    capfd.readouterr()
    response = client.get("/refused", headers={"X-Request-ID": "req-refused"})
    assert response.status_code == 429
    assert response.headers["X-Request-ID"] == "req-refused"
    (line,) = [x for x in json_lines(capfd.readouterr().err) if x["message"] == "refusing"]
    assert line["request_id"] == "req-refused"


def test_an_unexpected_error_is_one_json_line_with_the_traceback(
    app: Flask, client: FlaskClient, capfd: pytest.CaptureFixture[str]
) -> None:
    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("kaput")

    capfd.readouterr()
    response = client.get("/boom", headers={"X-Request-ID": "req-boom"})
    assert response.status_code == 500
    (line,) = [x for x in json_lines(capfd.readouterr().err) if x["level"] == "error"]
    assert line["request_id"] == "req-boom"
    assert "RuntimeError: kaput" in line["exception"]


def test_lines_outside_requests_have_no_request_id(
    app: Flask, capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    logging.getLogger("tokenserver.example").info("at start-up")
    (line,) = json_lines(capfd.readouterr().err)
    assert line["message"] == "at start-up"
    assert "request_id" not in line


def _access_line(server: Any, request_id: str) -> dict[str, Any]:
    """The access-log line of one request, polled for: gunicorn writes it after responding."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in json_lines("\n".join(server.log_lines("access"))):
            if line.get("request_id") == request_id:
                return line
        time.sleep(0.05)  # polling for a file another process appends to
    raise AssertionError(f"no access-log line for {request_id}")


def test_gunicorn_access_log_is_json_even_with_quotes(live_server: Any) -> None:
    agent = 'evil" agent \\ {"status": 200} \u00e9'
    response = requests.get(
        f'{live_server.url}/no"where%0Aforged',
        headers={"User-Agent": agent, "X-Request-ID": "req-access"},
        timeout=10,
    )
    assert response.status_code == 404
    assert response.headers["X-Request-ID"] == "req-access"
    line = _access_line(live_server, "req-access")
    assert line["path"] == '/no"where\nforged'
    assert line["user_agent"].startswith('evil" agent \\ {"status": 200}')
    assert line["status"] == 404
    assert line["method"] == "GET"
    assert line["duration_ms"] >= 0


def test_readiness_checks_are_access_logged_only_when_they_fail(live_server: Any) -> None:
    for probe, request_id in [("readyz", "req-ready"), ("healthz", "req-health")]:
        response = requests.get(
            f"{live_server.url}/{probe}", headers={"X-Request-ID": request_id}, timeout=10
        )
        assert response.status_code == 200
    refused = requests.post(
        f"{live_server.url}/readyz", headers={"X-Request-ID": "req-ready-post"}, timeout=10
    )
    assert refused.status_code == 405
    # Lines are written in the order answers finish, by one worker or another: wait for the
    # last one, then the passing readiness check may not be there.
    requests.get(f"{live_server.url}/nowhere", headers={"X-Request-ID": "req-after"}, timeout=10)
    _access_line(live_server, "req-after")
    assert _access_line(live_server, "req-ready-post")["status"] == 405
    assert _access_line(live_server, "req-health")["status"] == 200
    access = json_lines("\n".join(live_server.log_lines("access")))
    assert "req-ready" not in {line.get("request_id") for line in access}


def test_gunicorn_and_app_logs_are_json_lines(live_server: Any) -> None:
    # A password never reaches a log line, even on the failure path.
    requests.post(
        f"{live_server.url}/oauth/token",
        data={"grant_type": "password", "username": "x", "password": "hunter2-secret"},
        headers={"X-Request-ID": "req-login"},
        timeout=10,
    )
    requests.get(f"{live_server.url}/users", headers={"X-Request-ID": "req-last"}, timeout=10)
    _access_line(live_server, "req-last")
    error_log = json_lines("\n".join(live_server.log_lines("error")))
    assert any(line["message"].startswith("Booting worker") for line in error_log)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in error_log)
    everything = "\n".join(live_server.log_lines("error") + live_server.log_lines("access"))
    assert "hunter2-secret" not in everything


@pytest.mark.parametrize(
    "head",
    [
        b"GET /junk?code=leaked-code-1\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /junk HTTP/1.1\r\nHost: x\r\nAuthorization Bearer leaked-token-2\r\n\r\n",
        b"GET /oauth/authorize?code=leaked-code-4\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
def test_a_request_gunicorn_refuses_leaves_no_query_or_header_in_the_log(
    live_server: Any, head: bytes
) -> None:
    host, port = live_server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(head)
        # gunicorn logs its refusal before it answers, so the line is written by now.
        assert connection.recv(100).startswith(b"HTTP/1.1 400")
    refusals = [line for line in live_server.log_lines("error") if "Invalid request" in line]
    assert refusals  # the refusal is still on record, with its kind
    assert all("Invalid HTTP" in line for line in refusals)
    assert "leaked" not in "\n".join(
        live_server.log_lines("error") + live_server.log_lines("access")
    )


def test_a_request_that_fails_past_the_app_leaves_no_query_in_the_log(tmp_path: Path) -> None:
    # gunicorn's own line when handling a request raised past Flask (our 500 in JSON) names it
    # by method and URI, the query with its code or token too: the path is enough.
    cfg = Config()
    cfg.set("errorlog", str(tmp_path / "error.log"))
    log = JSONLogger(cfg)
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        log.exception("Error handling request %s %s", "GET", "/callback?code=leaked-code-5")
    log.exception("Error handling request %s", "/callback?access_token=leaked-token-6")
    lines = json_lines((tmp_path / "error.log").read_text())
    assert [line["message"] for line in lines] == [
        "Error handling request GET /callback",
        "Error handling request /callback",
    ]
    assert "RuntimeError" in lines[0]["exception"]
    assert "leaked" not in (tmp_path / "error.log").read_text()


def test_database_errors_never_carry_the_statements_values(app: Flask) -> None:
    with app.app_context(), pytest.raises(DBAPIError) as raised:
        db.session.execute(text("SELECT * FROM no_such_table WHERE x = :v"), {"v": "s3cret-value"})
    assert "s3cret-value" not in str(raised.value)


def test_tokens_stay_out_of_the_log_even_at_debug(
    actions: Actions, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the root, as an operator chasing a problem might
    issued = actions.login("alice")
    assert issued["access_token"] and issued["refresh_token"]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert issued["access_token"] not in logged
    assert issued["refresh_token"] not in logged
