"""`clients rotate-secret`: a new secret shown once; the old one only for the overlap asked."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
import time_machine
from flask.testing import FlaskClient, FlaskCliRunner

from .conftest import Actions, RegisteredClient


def client_credentials(client: FlaskClient, client_id: str, secret: str) -> int:
    data = {"grant_type": "client_credentials"}
    return client.post("/oauth/token", data=data, auth=(client_id, secret)).status_code


def rotate(runner: FlaskCliRunner, client_id: str, *args: str) -> str:
    result = runner.invoke(args=["clients", "rotate-secret", client_id, *args])
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    assert line.startswith("client_secret: ")
    return line.removeprefix("client_secret: ")


@pytest.fixture
def service(actions: Actions) -> RegisteredClient:
    return actions.oauth_client("service")


def test_without_overlap_only_the_new_secret_works(
    client: FlaskClient, runner: FlaskCliRunner, service: RegisteredClient
) -> None:
    assert service.secret is not None
    new = rotate(runner, service.client_id)
    assert new != service.secret
    assert client_credentials(client, service.client_id, new) == 200
    assert client_credentials(client, service.client_id, service.secret) == 401


def test_with_overlap_the_old_secret_works_until_it_ends(
    client: FlaskClient, runner: FlaskCliRunner, service: RegisteredClient
) -> None:
    assert service.secret is not None
    with time_machine.travel(time.time(), tick=False) as clock:
        new = rotate(runner, service.client_id, "--overlap", "3600")
        assert client_credentials(client, service.client_id, new) == 200
        clock.shift(3599)
        assert client_credentials(client, service.client_id, service.secret) == 200
        clock.shift(2)
        assert client_credentials(client, service.client_id, service.secret) == 401
        assert client_credentials(client, service.client_id, new) == 200


def test_a_second_rotation_retires_the_first_secret_for_good(
    client: FlaskClient, runner: FlaskCliRunner, service: RegisteredClient
) -> None:
    assert service.secret is not None
    second = rotate(runner, service.client_id, "--overlap", "3600")
    third = rotate(runner, service.client_id, "--overlap", "3600")
    assert client_credentials(client, service.client_id, service.secret) == 401
    assert client_credentials(client, service.client_id, second) == 200
    assert client_credentials(client, service.client_id, third) == 200


def test_public_and_unknown_clients_are_refused_in_one_line(
    actions: Actions, runner: FlaskCliRunner
) -> None:
    spa = actions.oauth_client("spa", public=True)
    for client_id, words in ((spa.client_id, "public"), ("no-such-client", "no client")):
        result = runner.invoke(args=["clients", "rotate-secret", client_id])
        assert result.exit_code == 1
        assert words in result.output
        assert "Traceback" not in result.output


def test_rotation_is_audited_without_the_secret(
    runner: FlaskCliRunner, service: RegisteredClient, caplog: Any
) -> None:
    with caplog.at_level(logging.INFO, logger="tokenserver.audit"):
        new = rotate(runner, service.client_id, "--overlap", "60")
    [record] = [r for r in caplog.records if r.getMessage() == "client.secret_rotated"]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["client_id"] == service.client_id
    assert fields["overlap"] == 60
    assert fields["previous_valid_until"]
    assert new not in json.dumps(fields)
    assert service.secret not in json.dumps(fields)
