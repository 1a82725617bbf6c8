"""Settings parsed once from the TOKENSERVER_* environment; the only reader of os.environ."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

PREFIX = "TOKENSERVER_"
# The schemes of a Redis URL, as the limits library spells them (shared_redis.py connects).
REDIS_SCHEMES = frozenset({"redis", "rediss", "redis+unix"})
# Seconds resource servers may cache the JWKS (its Cache-Control), part of the publish delay.
JWKS_MAX_AGE = 60


class ConfigError(Exception):
    """A setting that cannot be used; the message names the variable."""


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


# No count or number of seconds we read needs more (a century of seconds is 3.2e9); far past
# it, dates overflow (timedelta stops at 1e9 days) before anything else does.
_LARGEST = 10**10


def _whole_number(raw: str, smallest: int, expected: str) -> int:
    # int() would also take "1_000" or "+5", and its error speaks Python ("invalid literal").
    value = raw.strip()
    if not value.isascii() or not value.isdigit() or not smallest <= int(value) <= _LARGEST:
        raise ValueError(expected)
    return int(value)


def _positive_int(raw: str) -> int:
    return _whole_number(raw, 1, f"expected a positive whole number, at most {_LARGEST:,}")


def _non_negative_int(raw: str) -> int:
    return _whole_number(raw, 0, f"expected a whole number of 0 or more, at most {_LARGEST:,}")


def _port(raw: str) -> int:
    port = _whole_number(raw, 1, "expected a TCP port from 1 to 65535")
    if port > 65535:
        raise ValueError("expected a TCP port from 1 to 65535")
    return port


# Workers per gunicorn master. Each is a process of about 115 MB holding up to eight database
# connections (4 threads x 2): past this, a typo (an extra zero or three) would fork the machine
# out of memory, or the database out of connections, before serving anything.
MOST_WORKERS = 1000


def _worker_count(raw: str) -> int:
    expected = f"expected a number of workers from 1 to {MOST_WORKERS:,}"
    count = _whole_number(raw, 1, expected)
    if count > MOST_WORKERS:
        raise ValueError(expected)
    return count


def _is_plain_uri(value: str) -> bool:
    # It goes into tokens, JSON and (as a URL) our WWW-Authenticate challenges: nothing that
    # could end a quoted header value or a line, nor a space no URI may hold.
    return value.isprintable() and not any(c.isspace() or c in '"\\' for c in value)


def _http_url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    expected = "expected an http(s) URL such as https://auth.example.com"
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname or not _is_plain_uri(value):
        raise ValueError(expected)
    if not _port_ok(parts):
        raise ValueError(f"{expected}, with a port from 1 to 65535 if any")
    return value


def _port_ok(parts: SplitResult) -> bool:
    """Whether a URL's port, if it names one, is a number from 1 to 65535."""
    try:
        port = parts.port  # urlsplit checks the port only when it is read
    except ValueError:
        return False
    return port != 0


def _issuer(raw: str) -> str:
    value = _http_url(raw)
    parts = urlsplit(value)
    # RFC 8414 §2, OpenID Connect Discovery §3: an issuer has no query or fragment; each
    # endpoint we publish is the issuer followed by a path, which would land inside them.
    if "?" in value or "#" in value:
        raise ValueError("must be a URL without a query or fragment (? or #)")
    # It is published in every token and metadata document: a user or password in it would be
    # too (RFC 9110 §4.2.4 deprecates them in http(s) URLs).
    if parts.username is not None or parts.password is not None:
        raise ValueError("must be a URL without a user or password (user@host)")
    # RFC 6749 §3.2 requires TLS: a plain-http issuer serves only this machine (development).
    if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
        raise ValueError("must be an https URL (plain http is for localhost only)")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _database_url(raw: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    value = raw.strip()
    expected = "expected sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/NAME"
    try:
        url = make_url(value)  # ValueError too, for a port that is not a number
    except (ArgumentError, ValueError):
        raise ValueError(expected) from None
    if url.port is not None and not 1 <= url.port <= 65535:
        # Else the service starts, and only its readiness check says what is wrong.
        raise ValueError(f"{expected}, with a port from 1 to 65535")
    try:
        # The driver is imported here, not at the first connection: a `postgres://` copied
        # from a platform's DATABASE_URL, or a driver we do not ship, is named at start-up.
        url.get_dialect().import_dbapi()
    except (ArgumentError, ImportError):
        raise ValueError(f"no database driver for {url.drivername!r}; {expected}") from None
    return value


def _audience(raw: str) -> str:
    value = raw.strip()
    if not _is_plain_uri(value):
        raise ValueError("expected a URI (no spaces, quotes or backslashes)")
    return value


def _without_password(raw: str) -> str:
    """A value as it may be shown: a URL's password masked, wherever it ends (one written with
    a "/" or "@" in it is no valid URL, yet it is what we must not print) and in a query."""
    scheme, separator, rest = raw.partition("://")
    if separator and "@" in rest:
        userinfo, _, host = rest.rpartition("@")  # the last "@": over-masking is harmless
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        raw = f"{scheme}://{userinfo}@{host}"
    return re.sub(r"(?i)(password=)[^&#]*", r"\1***", raw)


def _storage_uri(raw: str) -> str:
    value = raw.strip()
    expected = "expected memory:// or a redis:// URL"
    parts = urlsplit(value)
    if parts.scheme not in {"memory", *REDIS_SCHEMES}:
        raise ValueError(expected)
    # Else the first worker to connect refuses it with a traceback (redis-py parses it late).
    if parts.scheme != "memory" and not _port_ok(parts):
        raise ValueError(f"{expected}, with a port from 1 to 65535 if any")
    database = parts.path.strip("/") if parts.scheme != "redis+unix" else ""
    if database and not (database.isascii() and database.isdigit()):
        raise ValueError(f"{expected}, with a database number if any (redis://HOST:PORT/0)")
    return value


def _rate_limit(raw: str) -> str:
    from limits import parse_many

    value = raw.strip()
    try:
        parsed = parse_many(value)
    except ValueError:
        parsed = []
    if not parsed or any(item.amount < 1 for item in parsed):
        raise ValueError("expected limits such as 10/minute or 20/minute;200/hour")
    return value


def _key_prefix(raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
        raise ValueError("expected up to 64 letters, digits, '.', '_' or '-'")
    return value


def _encryption_keys(raw: str) -> tuple[bytes, ...]:
    """One or more comma-separated base64 keys of 32 bytes; the first encrypts, any decrypts."""
    import base64
    import binascii

    keys = []
    for part in raw.split(","):
        try:
            key = base64.b64decode(part.strip(), validate=True)
        except binascii.Error:
            key = b""
        if len(key) != 32:
            raise ValueError("expected base64 of 32 random bytes (comma-separated while rotating)")
        keys.append(key)
    return tuple(keys)


def _setting(
    env: str,
    parse: Callable[[str], Any],
    default: Any,
    *,
    secret: bool = False,
    bare: bool = False,
) -> Any:
    """Declare a field read from TOKENSERVER_<env> (or from <env> itself, if `bare`)."""
    name = env if bare else PREFIX + env
    metadata = {"env": env, "name": name, "parse": parse, "secret": secret}
    return field(default=default, repr=not secret, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    """Everything the service can be told, typed and validated."""

    database_url: str = _setting("DATABASE_URL", _database_url, "")
    issuer: str = _setting("ISSUER", _issuer, "http://localhost:8000")
    audience: str = _setting("AUDIENCE", _audience, "")
    access_token_ttl: int = _setting("ACCESS_TOKEN_TTL", _positive_int, 900)
    refresh_token_ttl: int = _setting("REFRESH_TOKEN_TTL", _positive_int, 2_592_000)
    registration_open: bool = _setting("REGISTRATION_OPEN", _parse_bool, True)
    ratelimit_storage_uri: str = _setting("RATELIMIT_STORAGE_URI", _storage_uri, "memory://")
    ratelimit_enabled: bool = _setting("RATELIMIT_ENABLED", _parse_bool, True)
    # Per-IP limits (README "Abuse limits"); each is a limits string, e.g. "20/minute;200/hour".
    ratelimit_signup: str = _setting("RATELIMIT_SIGNUP", _rate_limit, "10/hour")
    ratelimit_token_failures: str = _setting(
        "RATELIMIT_TOKEN_FAILURES", _rate_limit, "20/minute;200/hour"
    )
    ratelimit_default: str = _setting("RATELIMIT_DEFAULT", _rate_limit, "120/minute")
    # Wrong user codes at /device, per IP and per browser session (RFC 8628 §5.1: guessing).
    ratelimit_user_code: str = _setting("RATELIMIT_USER_CODE", _rate_limit, "10/hour")
    # Namespace of our keys in a Redis shared with other services (or other test runs).
    ratelimit_key_prefix: str = _setting("RATELIMIT_KEY_PREFIX", _key_prefix, "tokenserver")
    # Proxies in front of us whose X-Forwarded-For we believe; 0 trusts none (spoofable otherwise).
    trusted_proxies: int = _setting("TRUSTED_PROXIES", _non_negative_int, 0)
    # argon2id cost; the defaults sit above OWASP's minimum (19 MiB, t=2, p=1).
    argon2_time_cost: int = _setting("ARGON2_TIME_COST", _positive_int, 2)
    argon2_memory_kib: int = _setting("ARGON2_MEMORY_KIB", _positive_int, 19_456)
    argon2_parallelism: int = _setting("ARGON2_PARALLELISM", _positive_int, 1)
    # How long a worker trusts its copy of the signing keys before asking the database again.
    key_cache_seconds: int = _setting("KEY_CACHE_SECONDS", _positive_int, 5)
    # How long a rotated key is published before it signs; None: JWKS max-age + key cache.
    key_publish_seconds: int | None = _setting("KEY_PUBLISH_SECONDS", _non_negative_int, None)
    # AES-GCM keys for private signing keys at rest (README "Key-encryption key").
    key_encryption_keys: tuple[bytes, ...] = _setting(
        "KEY_ENCRYPTION_KEY", _encryption_keys, (), secret=True
    )
    # A login (refresh family) ends this long after it began, however often it is refreshed.
    session_max_age: int = _setting("SESSION_MAX_AGE", _positive_int, 2_592_000)
    # Seconds in which a just-spent refresh token may be presented again (two tabs racing).
    refresh_reuse_grace: int = _setting("REFRESH_REUSE_GRACE", _non_negative_int, 0)
    max_body_bytes: int = _setting("MAX_BODY_BYTES", _positive_int, 64 * 1024)
    # RFC 9700 §2.4: deployments that follow it turn the password grant off.
    password_grant: bool = _setting("PASSWORD_GRANT", _parse_bool, True)
    # RFC 9449 §8-9: every DPoP proof must carry a nonce we issued a few minutes ago at most.
    dpop_nonce: bool = _setting("DPOP_NONCE", _parse_bool, False)
    # Lifetime of a browser session on our pages (/login, /consent, /account), seconds.
    login_session_max_age: int = _setting("LOGIN_SESSION_MAX_AGE", _positive_int, 86_400)
    # Read by gunicorn.conf.py, under the names platforms (Heroku, Dokku...) set.
    port: int = _setting("PORT", _port, 8000, bare=True)
    web_concurrency: int = _setting(
        "WEB_CONCURRENCY",
        _worker_count,
        min(2 * (os.cpu_count() or 1) + 1, MOST_WORKERS),
        bare=True,
    )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, instance_path: str | None = None
    ) -> Settings:
        """Build settings from the environment, raising ConfigError naming a bad variable."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata["name"]
            raw = environ.get(name)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                # The value is shown to help, but never a secret, nor a password in a URL.
                shown = "" if f.metadata["secret"] else f"={_without_password(raw)!r}"
                raise ConfigError(f"{name}{shown} is not valid: {exc}") from None
        settings = cls(**values).resolved(instance_path)
        settings._check_argon2()
        return settings

    def _check_argon2(self) -> None:
        """Refuse argon2 parameters the library refuses, naming the variable, before serving."""
        from argon2 import PasswordHasher
        from argon2.exceptions import HashingError

        hasher = PasswordHasher(
            time_cost=self.argon2_time_cost,
            memory_cost=self.argon2_memory_kib,
            parallelism=self.argon2_parallelism,
        )
        try:
            hasher.hash("a password to try the parameters on")
        except (HashingError, OverflowError) as exc:
            reason = "a value is too large" if isinstance(exc, OverflowError) else str(exc).lower()
            named = [n for word, ns in _ARGON2_NAMES.items() if word in reason for n in ns]
            names = list(dict.fromkeys(named)) or [
                "ARGON2_TIME_COST",
                "ARGON2_MEMORY_KIB",
                "ARGON2_PARALLELISM",
            ]
            given = ", ".join(f"{PREFIX}{n}={self._argon2_value(n)}" for n in names)
            raise ConfigError(f"{given} is not valid: argon2 refuses it ({reason})") from None

    def _argon2_value(self, env: str) -> int:
        value: int = getattr(self, next(f.name for f in fields(self) if f.metadata["env"] == env))
        return value

    def resolved(self, instance_path: str | None = None) -> Settings:
        """Fill the defaults that depend on other values (audience, SQLite path)."""
        changes: dict[str, Any] = {}
        if not self.audience:
            changes["audience"] = self.issuer
        if self.key_publish_seconds is None:
            # No verifier can hold a key set older than its max-age plus our own cache.
            changes["key_publish_seconds"] = JWKS_MAX_AGE + self.key_cache_seconds
        folder = Path(instance_path or Path.cwd() / "instance")
        if not self.database_url:
            changes["database_url"] = f"sqlite:///{folder / 'tokenserver.db'}"
        elif (anchored := _sqlite_anchored(self.database_url, folder)) != self.database_url:
            changes["database_url"] = anchored
        if not changes:
            return self
        return type(self)(**{**self.__dict__, **changes})

    @property
    def jwks_max_age(self) -> int:
        """Seconds verifiers may cache the JWKS: never so long that, added to our key cache, it
        outlasts the time a rotated key is published before it signs (a shorter
        TOKENSERVER_KEY_PUBLISH_SECONDS shortens it)."""
        lead = (self.key_publish_seconds or 0) - self.key_cache_seconds
        return max(0, min(JWKS_MAX_AGE, lead))

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is an SQLite file (which needs WAL and a busy timeout)."""
        return self.database_url.startswith("sqlite")


def _sqlite_anchored(url_text: str, folder: Path) -> str:
    """A relative SQLite path made absolute under the instance folder, where Flask-SQLAlchemy
    opens it. Every other reader of the path must find the same file: the owner-only creation
    of a new database (else made in the working folder while the real one, world-readable,
    went to the instance folder), the key-encryption check, `db upgrade`'s folder check."""
    from sqlalchemy.engine import make_url

    url = make_url(url_text)
    database = url.database or ""
    if (
        url.get_backend_name() != "sqlite"
        or database in ("", ":memory:")
        or database.startswith("file:")
        or os.path.isabs(database)
    ):
        return url_text
    return url.set(database=str(folder / database)).render_as_string(hide_password=False)


# Which variable an argon2 refusal is about, by a word of the library's message.
_ARGON2_NAMES = {
    "time": ("ARGON2_TIME_COST",),
    "memory": ("ARGON2_MEMORY_KIB", "ARGON2_PARALLELISM"),  # memory must be >= 8 x lanes
    "lanes": ("ARGON2_PARALLELISM",),
    "thread": ("ARGON2_PARALLELISM",),
}


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning line per TOKENSERVER_* variable no setting reads, naming the closest one."""
    environ = os.environ if environ is None else environ
    known = [f.metadata["env"] for f in fields(Settings) if f.metadata["name"].startswith(PREFIX)]
    lines = []
    for name in sorted(n for n in environ if n.startswith(PREFIX)):
        if name.removeprefix(PREFIX) in known:
            continue
        close = difflib.get_close_matches(name.removeprefix(PREFIX), known, n=1, cutoff=0.6)
        hint = f"; did you mean {PREFIX}{close[0]}?" if close else ""
        lines.append(f"Warning: {name} is not a tokenserver setting and is ignored{hint}")
    return lines


def current_settings() -> Settings:
    """The settings of the app handling this request or command."""
    from flask import current_app

    settings: Settings = current_app.extensions["tokenserver.settings"]
    return settings
