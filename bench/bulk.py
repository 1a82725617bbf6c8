"""Rows written straight into the database: the refresh-token pool and the scale data set.

Both use the package's own tables and digests, with SQLAlchemy Core executemany in batches,
because going through the API would cost an argon2id hash or an RSA signature per row.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, create_engine, event, select, text

from tokenserver.config import Settings
from tokenserver.digests import digest, new_secret
from tokenserver.models import JunkItem, TokenFamily, TokenRecord, User, utcnow
from tokenserver.passwords import Passwords

_BATCH = 10_000
_SCOPE = "junk:read junk:write"


def engine_for(database_url: str) -> Engine:
    """An engine for writing alongside the running server (SQLite waits for its lock)."""
    if not database_url.startswith("sqlite"):
        return create_engine(database_url)
    engine = create_engine(database_url, connect_args={"timeout": 60})
    event.listen(engine, "connect", _fast_sqlite_load)
    return engine


def _fast_sqlite_load(dbapi_connection: Any, _record: Any) -> None:
    # A throwaway database: no fsync per batch, and a page cache big enough for the indexes
    # of a million random token digests (random inserts into a B-tree miss the cache).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=OFF")
    cursor.execute("PRAGMA cache_size=-262144")  # 256 MiB
    cursor.close()


def _batches(rows: Iterator[dict[str, Any]], size: int = _BATCH) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _insert(engine: Engine, table: Any, rows: Iterator[dict[str, Any]]) -> int:
    """Insert rows in batches: COPY on PostgreSQL, executemany elsewhere."""
    count = 0
    for batch in _batches(rows):
        if engine.dialect.name == "postgresql":
            _copy(engine, table.name, batch)
        else:
            with engine.begin() as conn:
                conn.execute(table.insert(), batch)
        count += len(batch)
    return count


def _copy(engine: Engine, table: str, batch: list[dict[str, Any]]) -> None:
    columns = list(batch[0])
    raw = engine.raw_connection()
    try:
        statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        with raw.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[attr-defined]
            for row in batch:
                copy.write_row([row[c] for c in columns])
        raw.commit()
    finally:
        raw.close()


def mint_refresh_pool(
    database_url: str, client_id: str, user_ids: list[int], count: int, ttl: int
) -> list[str]:
    """`count` live refresh tokens, each the only token of its own login (family)."""
    now = utcnow()
    tokens = [new_secret(32) for _ in range(count)]
    family_ids = [secrets.token_hex(16) for _ in range(count)]
    families = (
        {
            "id": family_ids[n],
            "client_id": client_id,
            "user_id": user_ids[n % len(user_ids)],
            "created_at": now,
        }
        for n in range(count)
    )
    records = (
        {
            "family_id": family_ids[n],
            "kind": "refresh",
            "jti": None,
            "token_hash": digest(token),
            "scope": _SCOPE,
            "issued_at": now,
            "expires_at": now + timedelta(seconds=ttl),
        }
        for n, token in enumerate(tokens)
    )
    engine = engine_for(database_url)
    try:
        _insert(engine, TokenFamily.__table__, families)
        _insert(engine, TokenRecord.__table__, records)
    finally:
        engine.dispose()
    return tokens


def _scale_users(count: int) -> Iterator[dict[str, Any]]:
    now = utcnow()
    # Bulk users never log in, so one real argon2id hash (production parameters, of a random
    # password nobody knows) stands in for 100,000 of them.
    settings = Settings()
    shared_hash = Passwords(
        settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism
    ).hash(new_secret())
    for n in range(count):
        name = f"scale-{n:06d}"
        yield {
            "username": name,
            "username_key": name,
            "password_hash": shared_hash,
            "disabled": n % 100 == 99,  # a few disabled accounts, as in real life
            "created_at": now - timedelta(seconds=count - n),
        }


def _scale_tokens(
    family_ids: list[str], user_ids: list[int], client_id: str, records: int
) -> tuple[Iterator[dict[str, Any]], Iterator[dict[str, Any]]]:
    """Families of four records each: an expired access token, a spent refresh token, and
    the live access/refresh pair that replaced them; every 20th family revoked."""
    now = utcnow()
    rng = random.Random(7)

    def families() -> Iterator[dict[str, Any]]:
        for n, family_id in enumerate(family_ids):
            yield {
                "id": family_id,
                "client_id": client_id,
                "user_id": rng.choice(user_ids),
                "created_at": now - timedelta(hours=1),
                "revoked_at": now if n % 20 == 19 else None,
            }

    def tokens() -> Iterator[dict[str, Any]]:
        made = 0
        for family_id in family_ids:
            for age, kind in ((3600, "access"), (3600, "refresh"), (60, "access"), (60, "refresh")):
                if made == records:
                    return
                made += 1
                issued = now - timedelta(seconds=age)
                access = kind == "access"
                yield {
                    "family_id": family_id,
                    "kind": kind,
                    "jti": secrets.token_urlsafe(18) if access else None,
                    "token_hash": None if access else digest(new_secret(32)),
                    "scope": _SCOPE,
                    "issued_at": issued,
                    "expires_at": issued + timedelta(seconds=900 if access else 2_592_000),
                    "spent_at": now - timedelta(seconds=60) if age == 3600 and not access else None,
                }

    return families(), tokens()


def _junk(user_ids: list[int], per_user: int) -> Iterator[dict[str, Any]]:
    now = utcnow()
    for user_id in user_ids:
        for n in range(per_user):
            yield {
                "owner_id": user_id,
                "name": f"scale item {n}",
                "description": "bulk-loaded junk " * 4,
                "created_at": now,
                "updated_at": now,
            }


def seed_scale(
    database_url: str, client_id: str, users: int, records: int, junk_per_user: int
) -> dict[str, Any]:
    """Bulk-load the scale data set; returns what was loaded and how long it took."""
    started = time.monotonic()
    engine = engine_for(database_url)
    try:
        _insert(engine, User.__table__, _scale_users(users))
        with engine.connect() as conn:
            user_ids = list(conn.scalars(select(User.id).where(User.username_key.like("scale-%"))))
        family_ids = [secrets.token_hex(16) for _ in range((records + 3) // 4)]
        families, tokens = _scale_tokens(family_ids, user_ids, client_id, records)
        _insert(engine, TokenFamily.__table__, families)
        loaded_records = _insert(engine, TokenRecord.__table__, tokens)
        junk = _insert(engine, JunkItem.__table__, _junk(user_ids, junk_per_user))
        if engine.dialect.name == "postgresql":
            # Fresh statistics, as autovacuum would have after such a load; keeps runs repeatable.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("ANALYZE"))
    finally:
        engine.dispose()
    return {
        "users": len(user_ids),
        "token_families": len(family_ids),
        "token_records": loaded_records,
        "junk_items": junk,
        "seconds": round(time.monotonic() - started, 1),
    }


def mint_code_pool(
    database_url: str, client_id: str, user_ids: list[int], count: int, redirect_uri: str
) -> tuple[list[str], str]:
    """`count` fresh authorization codes (alive 60 s) and the PKCE verifier they all share."""
    from authlib.oauth2.rfc7636 import create_s256_code_challenge

    from tokenserver.browser_models import AuthorizationCode, BrowserSession

    now, verifier = utcnow(), new_secret(32)
    challenge = create_s256_code_challenge(verifier)
    codes = [new_secret(32) for _ in range(count)]
    # A code dies with the browser session that got it: each user has one, signed in now.
    sessions = {
        user_id: {
            "id": secrets.token_hex(16),
            "secret_hash": digest(new_secret(32)),
            "user_id": user_id,
            "user_agent": "bench",
            "auth_time": now,
            "expires_at": now + timedelta(days=1),
        }
        for user_id in user_ids
    }
    rows = (
        {
            "code_hash": digest(code),
            "client_id": client_id,
            "user_id": user_ids[n % len(user_ids)],
            "redirect_uri": redirect_uri,
            "scope": "openid profile junk:read",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "nonce": secrets.token_urlsafe(12),
            "auth_time": now,
            "session_id": sessions[user_ids[n % len(user_ids)]]["id"],
            "created_at": now,
            "expires_at": now + timedelta(seconds=60),
        }
        for n, code in enumerate(codes)
    )
    engine = engine_for(database_url)
    try:
        _insert(engine, BrowserSession.__table__, iter(sessions.values()))
        _insert(engine, AuthorizationCode.__table__, rows)
    finally:
        engine.dispose()
    return codes, verifier
