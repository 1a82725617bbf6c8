"""The audit trail: one JSON line per security-relevant action, on the "tokenserver.audit" logger.

Each event says what happened and to whom, with the client, the caller's IP and the request id
(or, from the command line, the operator). Events never carry a password, secret or token:
fields with such names are refused outright, so a careless call fails in tests, not in logs.
"""

from __future__ import annotations

import getpass
import logging
from typing import Any

from authlib.integrations.flask_oauth2.signals import client_authenticated, token_revoked
from flask import Flask, g, has_request_context, request

log = logging.getLogger("tokenserver.audit")

_SECRET_FIELDS = frozenset(
    {
        "password",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "refresh_token",
        "password_hash",
        "secret_hash",
        "device_code",
        "user_code",
    }
)


def event(name: str, /, **fields: Any) -> None:
    """Log audit event `name` with `fields`, adding who asked: IP and request id, or the CLI."""
    refused = _SECRET_FIELDS.intersection(fields)
    if refused:
        raise ValueError(f"audit events never carry secrets: {sorted(refused)}")
    record: dict[str, Any] = {"event": name}
    if has_request_context():
        record["ip"] = request.remote_addr
        record["request_id"] = g.get("request_id")
        client_id = g.get("audit_client_id")
        if client_id and "client_id" not in fields:
            record["client_id"] = client_id
    else:
        record["actor"] = f"cli:{_operator()}"
    record.update(fields)
    log.info(name, extra={"fields": record})


def _operator() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "unknown"


def _client_authenticated(_sender: Any, client: Any = None, **_: Any) -> None:
    # Remember the client, so events later in this request (a login) can name it.
    if client is not None and has_request_context():
        g.audit_client_id = client.client_id


def _token_revoked(_sender: Any, token: Any = None, client: Any = None, **_: Any) -> None:
    # RFC 7009 revocation; `token` is the stored record (kind, family, jti), never the string.
    event(
        "token.revoked",
        client_id=getattr(client, "client_id", None),
        kind=getattr(token, "kind", None),
        family_id=getattr(token, "family_id", None),
        jti=getattr(token, "jti", None),
    )


def init_app(app: Flask) -> None:
    """Listen to Authlib's signals for the events that happen inside its endpoints."""
    # Blinker keeps one connection per receiver, so several apps in a process connect once.
    client_authenticated.connect(_client_authenticated)
    token_revoked.connect(_token_revoked)
