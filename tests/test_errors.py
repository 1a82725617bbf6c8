"""Every error is JSON: Werkzeug's own 404/405/413, and unexpected 500s without internals."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient


def _assert_json_error(response, status: int, error: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert response.json["error"] == error
    assert isinstance(response.json["error_description"], str)


def test_unknown_route_is_json_404(client: FlaskClient) -> None:
    _assert_json_error(client.get("/no/such/route"), 404, "not_found")


def test_wrong_method_is_json_405_with_allow(client: FlaskClient) -> None:
    response = client.delete("/healthz")
    _assert_json_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


def test_oversized_body_is_json_413(client: FlaskClient) -> None:
    response = client.post("/users", data=b"x" * (64 * 1024 + 1), content_type="application/json")
    _assert_json_error(response, 413, "request_too_large")


def test_unexpected_error_is_json_500_with_request_id(app: Flask, caplog) -> None:  # type: ignore[no-untyped-def]
    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    response = app.test_client().get("/boom", headers={"X-Request-ID": "req-123"})
    _assert_json_error(response, 500, "server_error")
    assert "secret internals" not in response.get_data(as_text=True)
    assert response.headers["X-Request-ID"] == "req-123"


def test_request_id_is_made_when_absent_or_unsafe(client: FlaskClient) -> None:
    made = client.get("/healthz").headers["X-Request-ID"]
    assert len(made) == 32
    unsafe = client.get("/healthz", headers={"X-Request-ID": 'bad"id<script>'})
    assert unsafe.headers["X-Request-ID"] != 'bad"id<script>'
