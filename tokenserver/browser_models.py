"""Typed models of browser sign-in: pushed authorization requests (RFC 9126), authorization
codes, remembered consents, browser sessions, and device authorizations (RFC 8628)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .extensions import db
from .models import BigId, UTCDateTime, utcnow


class PushedAuthorization(db.Model):  # type: ignore[name-defined,misc]
    """A pushed authorization request (RFC 9126), its request_uri kept only as a digest."""

    __tablename__ = "pushed_authorizations"

    request_uri_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("clients.client_id", ondelete="CASCADE"), index=True
    )
    # The request's parameters as pushed: a JSON list of [name, value] pairs.
    parameters: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # The request was answered (a code, or an error at the redirect URI): by no other browser.
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The browser session that answered it, if one was signed in: it may answer again while the
    # request lives (a double click on Allow, the form sent again after Back).
    session_id: Mapped[str | None] = mapped_column(String(32))
    # How it was answered, "code" or "error": answered again, only the same way, so a Deny
    # followed by Back and Allow sends no code after the app was told access_denied.
    answer: Mapped[str | None] = mapped_column(String(8))


class AuthorizationCode(db.Model):  # type: ignore[name-defined,misc]
    """An authorization code (RFC 6749 §4.1.2), kept only as its SHA-256 digest; single use."""

    __tablename__ = "authorization_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("clients.client_id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    # The redirect_uri the authorization request named (None when it relied on the only one).
    redirect_uri: Mapped[str | None] = mapped_column(Text)
    # Where the code was sent: the redirect_uri named, or else the client's only one. The
    # exchange refuses the code once that URI is no longer registered (RFC 7592 PUT). None on
    # a code stored before this was kept: its redirect_uri, if named, is where it went.
    sent_to: Mapped[str | None] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(String(200))
    code_challenge: Mapped[str] = mapped_column(String(128))
    code_challenge_method: Mapped[str] = mapped_column(String(8))
    nonce: Mapped[str | None] = mapped_column(String(255))
    auth_time: Mapped[datetime] = mapped_column(UTCDateTime)
    session_id: Mapped[str] = mapped_column(String(32))
    # The RFC 8707 resources asked for at /oauth/authorize, space-separated: the exchange's limit.
    resources: Mapped[str] = mapped_column(Text, default="", server_default="")
    # RFC 9449 §10: the DPoP key (thumbprint) whose proof alone may exchange the code.
    dpop_jkt: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A second presentation (RFC 6749 §4.1.2): whatever the code issued is revoked.
    reused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    family_id: Mapped[str | None] = mapped_column(String(32))


class Consent(db.Model):  # type: ignore[name-defined,misc]
    """A user's remembered "allow" for one client: a set of scopes, at a set of resources."""

    __tablename__ = "consents"

    user_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    client_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("clients.client_id", ondelete="CASCADE"), primary_key=True
    )
    # The scopes, sorted and space-separated: one row per distinct set.
    scope: Mapped[str] = mapped_column(String(200), primary_key=True)
    # The SHA-256 (hex) of `resources`: one row per distinct resource set, keyed at a fixed
    # width, since the set itself has no length cap and PostgreSQL refuses an index entry past
    # about 2.7 kB (the remembered answer would fail to save).
    resources_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The RFC 8707 resources they were allowed at, sorted and space-separated; "" for our own
    # routes' audience (TOKENSERVER_AUDIENCE), which is what a request naming none is for.
    resources: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BrowserSession(db.Model):  # type: ignore[name-defined,misc]
    """A signed-in browser on our pages; its cookie holds a secret kept here as a digest."""

    __tablename__ = "browser_sessions"
    __table_args__ = (Index("ix_browser_sessions_user_id_ended_at", "user_id", "ended_at"),)

    # Public id: the `sid` claim of id tokens, and what /account names a session by.
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"))
    user_agent: Mapped[str] = mapped_column(String(200), default="")
    auth_time: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # Indexed alone, like expires_at, for `tokens purge`: each batch picks sessions ended before
    # a cutoff, which the (user_id, ended_at) index cannot find without a user_id.
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)


class DeviceAuthorization(db.Model):  # type: ignore[name-defined,misc]
    """A device authorization (RFC 8628 §3.2): both codes kept only as digests; single use."""

    __tablename__ = "device_authorizations"

    device_code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Unique among all stored codes: the page finds the authorization by the code alone.
    user_code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("clients.client_id", ondelete="CASCADE"), index=True
    )
    scope: Mapped[str] = mapped_column(String(200))
    # The RFC 8707 resources asked for, space-separated: the token request may only narrow them.
    resources: Mapped[str] = mapped_column(Text, default="", server_default="")
    # Seconds the device must wait between polls; raised by 5 at each slow_down (§3.5).
    interval: Mapped[int] = mapped_column(Integer)
    # How many polls have been counted: each poll's UPDATE is conditional on the count it read.
    polls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))  # "pending", "allowed" or "denied"
    user_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    auth_time: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the approver's sign-in
    # The approver's browser session: the approval dies with it, as a code does.
    session_id: Mapped[str | None] = mapped_column(String(32))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # tokens were issued
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
