"""Typed SQLAlchemy models: users, OAuth clients, signing keys, token records, junk items."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    and_,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from .extensions import db

SCOPES = ("junk:read", "junk:write")
# OpenID Connect Core 1.0 §5.4: who signed in (and, with profile, their username).
OIDC_SCOPES = ("openid", "profile")
DEFAULT_GRANTS = ("password", "refresh_token")
# What a client registered with redirect URIs and no explicit grant gets.
BROWSER_GRANTS = ("authorization_code", "refresh_token")
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # RFC 8693
DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"  # RFC 8628 §3.4
GRANT_TYPES = (
    "password",
    "refresh_token",
    "client_credentials",
    "authorization_code",
    TOKEN_EXCHANGE,
    DEVICE_CODE,
)

# SQLite only auto-increments an INTEGER PRIMARY KEY, so 64-bit ids are plain INTEGER there.
BigId = BigInteger().with_variant(Integer, "sqlite")


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware (SQLite forgets zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def isoformat(value: datetime) -> str:
    """RFC 3339 text for a UTC timestamp, as the API renders it."""
    if value.tzinfo is not UTC:  # what UTCDateTime reads back already is
        value = value.astimezone(UTC)
    return value.isoformat().replace("+00:00", "Z")


class RFC3339Text(TypeDecorator[str]):
    """A UTC timestamp column read straight into the API's text, as `isoformat` renders it.

    For timestamps rendered in bulk (a page of /junk has 40): SQLite's stored text is
    rewritten without a datetime in between, in a fifth of the time. Read only.
    """

    impl = String
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if isinstance(value, datetime):  # PostgreSQL's driver reads a datetime
            return isoformat(value)
        # As UTCDateTime stores it on SQLite: "2026-01-31 12:00:00.250000" (always 6 digits);
        # isoformat leaves out a fraction of zero.
        text = value.replace(" ", "T", 1)
        return (text[:-7] if text.endswith(".000000") else text) + "Z"


class User(db.Model):  # type: ignore[name-defined,misc]
    """A resource owner who signs in with a username and password."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    # Lower-cased copy that carries the uniqueness rule: "Alice" and "alice" are one account.
    username_key: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(512))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        """The public view of the user, as every route renders it."""
        return render_user(self)


# The columns a Subject is read from, as Core columns for the prebuilt hot-path statements.
USER_COLUMNS = tuple(
    User.__table__.c[name] for name in ("id", "username", "disabled", "created_at")
)


@dataclass(frozen=True, slots=True)
class Subject:
    """A user as a token names them: a plain row of USER_COLUMNS, read-only by design.

    The hot paths (every bearer request, every token grant) read these four columns and never
    write the user, so they skip the ORM's identity map and change tracking.
    """

    id: int
    username: str
    disabled: bool
    created_at: datetime
    # Set only on a login: the password hash its password was just checked against. What the
    # login stores (a token family, a browser session) is stored only while it is still the
    # user's, so a login racing a password change cannot outlive it.
    checked_hash: str | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_row(cls, row: Any) -> Subject:
        """The Subject in a row that selected USER_COLUMNS."""
        return cls(row.id, row.username, row.disabled, row.created_at)

    def get_user_id(self) -> int:
        """Authlib's hook for the `sub` claim."""
        return self.id

    def to_dict(self) -> dict[str, Any]:
        """The public view of the user, as every route renders it."""
        return render_user(self)


def render_user(user: User | Subject) -> dict[str, Any]:
    """A user, or a Subject, as the API renders it."""
    return {
        "id": user.id,
        "username": user.username,
        "disabled": user.disabled,
        "created_at": isoformat(user.created_at),
    }


class Client(db.Model):  # type: ignore[name-defined,misc]
    """An OAuth client; confidential ones hold a secret stored only as its SHA-256 digest."""

    __tablename__ = "clients"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str | None] = mapped_column(String(64))
    # After `clients rotate-secret --overlap`, the old secret works until this time.
    previous_secret_hash: Mapped[str | None] = mapped_column(String(64))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    grant_types: Mapped[str] = mapped_column(String(200))
    scope: Mapped[str] = mapped_column(String(200))
    can_introspect: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Space-separated exact redirect URIs for the authorization code grant (RFC 6749 §3.1.2).
    redirect_uris: Mapped[str] = mapped_column(Text, default="", server_default="")
    # Our own apps: the consent screen is skipped.
    first_party: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # Space-separated resource servers (RFC 8707 `resource` values) it may ask tokens for.
    audiences: Mapped[str] = mapped_column(Text, default="", server_default="")
    # private_key_jwt (RFC 7523): the client's public keys, inline (a JWKS document) or by URL.
    jwks: Mapped[str | None] = mapped_column(Text)
    jwks_uri: Mapped[str | None] = mapped_column(String(2048))
    # RFC 7591: client_secret_post when a secret client registered so (NULL: client_secret_basic).
    secret_auth_method: Mapped[str | None] = mapped_column(String(32))
    # RFC 7592: digest of the token that manages a dynamically registered client (NULL: CLI's).
    registration_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    # RFC 9449 §5.2 dpop_bound_access_tokens: every token request must carry a DPoP proof.
    dpop_bound: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # RFC 9126 §6 require_pushed_authorization_requests: /oauth/authorize takes only a request
    # the client pushed to /oauth/par.
    pushed_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")

    @hybrid_property
    def is_public(self) -> bool:
        """Public clients (apps that cannot keep a secret) authenticate with `none`."""
        return self.secret_hash is None and not self.has_keys

    @is_public.inplace.expression
    @classmethod
    def _is_public_in_sql(cls) -> ColumnElement[bool]:
        """The same rule in a statement (no secret, no keys), for a store's WHERE clause."""
        return and_(cls.secret_hash.is_(None), cls.jwks.is_(None), cls.jwks_uri.is_(None))

    @property
    def has_keys(self) -> bool:
        """It authenticates with `private_key_jwt`, by keys registered inline or by URL."""
        return self.jwks is not None or self.jwks_uri is not None

    @hybrid_property
    def self_registered(self) -> bool:
        """It registered itself over RFC 7591: its name is its own claim, no operator's."""
        return self.registration_token_hash is not None

    @self_registered.inplace.expression
    @classmethod
    def _self_registered_in_sql(cls) -> ColumnElement[bool]:
        """The same rule in a statement, for the stores' lists of apps and devices."""
        return cls.registration_token_hash.is_not(None)

    @property
    def scopes(self) -> list[str]:
        """The scopes this client is registered for."""
        return self.scope.split()

    def still_registered(self, granted: str) -> str:
        """The part of a `granted` scope this client is still registered for, in its order:
        one that narrowed its scope since (RFC 7592) keeps only the rest ("" if nothing)."""
        registered = set(self.scopes)
        return " ".join(scope for scope in granted.split() if scope in registered)

    @property
    def grants(self) -> list[str]:
        """The grant types this client may use."""
        return self.grant_types.split()

    # --- Authlib's ClientMixin protocol -------------------------------------------------
    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        # RFC 6749 §3.1.2.3: redirect_uri may be left out only when exactly one is registered.
        uris = self.redirect_uri_list
        return uris[0] if len(uris) == 1 else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        from .redirects import redirect_uri_matches

        return any(redirect_uri_matches(uri, redirect_uri) for uri in self.redirect_uri_list)

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grants

    @property
    def audience_list(self) -> list[str]:
        """The resource servers this client may ask tokens for (RFC 8707)."""
        return self.audiences.split()

    @property
    def auth_method(self) -> str:
        """How it authenticates at the token endpoint (RFC 7591 token_endpoint_auth_method)."""
        if self.has_keys:
            return "private_key_jwt"
        return "none" if self.is_public else self.secret_auth_method or "client_secret_basic"

    @property
    def redirect_uri_list(self) -> list[str]:
        """The registered redirect URIs."""
        return self.redirect_uris.split()

    @property
    def client_metadata(self) -> dict[str, Any]:
        """RP-Initiated Logout 1.0 §3: post-logout URIs are the registered redirect URIs."""
        return {"post_logout_redirect_uris": self.redirect_uri_list}

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grants

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.has_keys:
            return method == "private_key_jwt"
        if self.is_public:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_client_secret(self, client_secret: str) -> bool:
        from .digests import digest

        if self.secret_hash is None:
            return False
        # Constant-time comparison of digests: no timing oracle on the secret.
        presented = digest(client_secret)
        if hmac.compare_digest(self.secret_hash, presented):
            return True
        previous, until = self.previous_secret_hash, self.previous_secret_expires_at
        return (
            previous is not None
            and until is not None
            and until > utcnow()
            and hmac.compare_digest(previous, presented)
        )

    def get_allowed_scope(self, scope: str | None) -> str:
        """The scope to grant: all registered scopes when none is asked for.

        Authlib drops scopes the client may not have; RFC 6749 §5.2 says invalid_scope.
        """
        from authlib.oauth2.rfc6749.errors import InvalidScopeError

        requested = (scope or "").split()
        if not requested:  # "" or only delimiters: no scope asked for (RFC 6749 §3.2, §3.3)
            return self.scope
        if not set(requested) <= set(self.scopes):
            raise InvalidScopeError("The requested scope exceeds what this client may ask for.")
        return " ".join(dict.fromkeys(requested))

    def to_dict(self) -> dict[str, Any]:
        """The public description of the client (never its secret)."""
        return {
            "client_id": self.client_id,
            "name": self.name,
            "public": self.is_public,
            "grant_types": self.grants,
            "scope": self.scope,
            "introspect": self.can_introspect,
            "redirect_uris": self.redirect_uri_list,
            "first_party": self.first_party,
            "audiences": self.audience_list,
            "token_endpoint_auth_method": self.auth_method,
            "jwks_uri": self.jwks_uri,
            "dpop_bound_access_tokens": self.dpop_bound,
            "require_pushed_authorization_requests": self.pushed_only,
            "created_at": isoformat(self.created_at),
        }


class SigningKey(db.Model):  # type: ignore[name-defined,misc]
    """An RSA signing key shared by every worker and node: next, current, retired or revoked.

    A `next` key is published before it signs; a retired key still verifies its tokens; a
    revoked key does neither. The partial unique index lets the database, not luck, hold at
    most one `next` and one `current` key, however many workers create or promote at once.
    """

    __tablename__ = "signing_keys"
    __table_args__ = (
        Index(
            "uq_signing_keys_state_active",
            "state",
            unique=True,
            sqlite_where=text("state IN ('next', 'current')"),
            postgresql_where=text("state IN ('next', 'current')"),
        ),
    )

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    # AES-GCM-wrapped PEM (see keywrap.py), a plain PEM, or "" once the key can never sign again.
    private_key: Mapped[str] = mapped_column(Text)
    public_jwk: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # became current
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # stopped signing


class TokenFamily(db.Model):  # type: ignore[name-defined,misc]
    """Every token descended from one login (or one client-credentials grant)."""

    __tablename__ = "token_families"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    client_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("clients.client_id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The login's RFC 8707 resources, space-separated: a refresh may narrow to one, never widen.
    resources: Mapped[str] = mapped_column(Text, default="", server_default="")
    # RFC 9449 §5: a public client's login bound to a DPoP key (its RFC 7638 thumbprint).
    dpop_jkt: Mapped[str | None] = mapped_column(String(64))
    # The sign-in behind the login, kept from when it was granted: a refreshed id_token carries
    # the same auth_time and sid (OpenID Connect Core §12.2), however the browser session has
    # fared since. None when unknown (client credentials; logins stored before these columns).
    auth_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    session_id: Mapped[str | None] = mapped_column(String(32))  # the browser session's public id


class TokenRecord(db.Model):  # type: ignore[name-defined,misc]
    """One issued token: an access token by its `jti`, a refresh token by its SHA-256 digest."""

    __tablename__ = "token_records"
    __table_args__ = (
        # Revoking a token walks down to the tokens exchanged from it; the rest (nearly every
        # record) have no parent and stay out of this index.
        Index(
            "ix_token_records_parent_jti",
            "parent_jti",
            sqlite_where=text("parent_jti IS NOT NULL"),
            postgresql_where=text("parent_jti IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    family_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("token_families.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # "access" or "refresh"
    jti: Mapped[str | None] = mapped_column(String(64), unique=True)
    # The signing key of an access token: revoking the key kills the token at once.
    kid: Mapped[str | None] = mapped_column(String(64))
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(200))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    spent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A token exchanged (RFC 8693) in its subject's family is another client's, for another
    # audience: both are its own, so it dies with the login yet is checked as what it is.
    client_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("clients.client_id", ondelete="CASCADE"), index=True
    )
    audience: Mapped[str | None] = mapped_column(Text)  # space-separated; None: the family's
    # The access token an exchanged one was exchanged from (RFC 8693 subject token): revoking
    # that token revokes this one too, and what was exchanged from it in turn.
    parent_jti: Mapped[str | None] = mapped_column(String(64))


class JunkItem(db.Model):  # type: ignore[name-defined,misc]
    """A user's own piece of data."""

    __tablename__ = "junk_items"
    # Keyset pagination walks (owner_id, id): a deep page costs what the first one does.
    __table_args__ = (Index("ix_junk_items_owner_id_id", "owner_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    owner_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LoginThrottle(db.Model):  # type: ignore[name-defined,misc]
    """The password-guessing guard's count for one account name, shared by every worker."""

    __tablename__ = "login_throttles"

    # SHA-256 of the normalised username: unknown names are guarded like real ones.
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer)  # password checks since the last success
    # Stale rows (no attempt for a day) mean nothing and are pruned by this index.
    last_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    day_started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    day_attempts: Mapped[int] = mapped_column(Integer)


class SpentJti(db.Model):  # type: ignore[name-defined,misc]
    """A single-use JWT id already presented (client assertions, DPoP proofs), until it expires.

    The key is a digest of the id's kind, issuer and `jti`: every worker and node sees it, and
    an id cannot be spent twice however many processes receive it at once (primary key).
    """

    __tablename__ = "spent_jtis"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class InitialAccessToken(db.Model):  # type: ignore[name-defined,misc]
    """An RFC 7591 initial access token from the CLI: registers one client, before it expires.

    Only the token's SHA-256 digest is kept; `spent_at` marks the registration it allowed.
    """

    __tablename__ = "initial_access_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    spent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    client_id: Mapped[str | None] = mapped_column(String(64))  # the client it registered
