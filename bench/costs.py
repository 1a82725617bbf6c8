"""The fixed costs the targets are stated against, measured in this process and this run."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

from tokenserver.config import Settings
from tokenserver.digests import new_secret
from tokenserver.keys import ALGORITHM, KEY_SIZE
from tokenserver.passwords import Passwords


def _median_ms(action: Callable[[], Any], repeat: int) -> float:
    action()  # first call pays for imports and caches
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def argon2_verify_ms(repeat: int = 15) -> float:
    """One argon2id verification with the production parameters (the defaults).

    The fastest of `repeat`, not the median: anything else running can only slow a
    verification, and a slow sample would lower the password grant's ceiling.
    """
    settings = Settings()
    passwords = Passwords(
        settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism
    )
    password = new_secret()
    stored = passwords.hash(password)
    passwords.verify(stored, password)  # the first call pays for allocating its memory
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        passwords.verify(stored, password)
        samples.append(time.perf_counter() - started)
    return min(samples) * 1000


_hashing: tuple[Passwords, str, str] | None = None


def _verify_many(times: int) -> None:
    global _hashing
    if _hashing is None:
        settings = Settings()
        passwords = Passwords(
            settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism
        )
        password = new_secret()
        _hashing = (passwords, passwords.hash(password), password)
    passwords, stored, password = _hashing
    for _ in range(times):
        passwords.verify(stored, password)


def argon2_parallel_rps(processes: int, repeat: int = 12) -> float:
    """Verifications per second with every core hashing at once: all that hashing alone allows.

    Below cores / one verification: the cores share caches and memory bandwidth, and each
    verification streams through its 19 MiB.
    """
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(_verify_many, [2] * processes)  # each process makes its hash and warms up
        started = time.perf_counter()
        pool.map(_verify_many, [repeat] * processes)
        return processes * repeat / (time.perf_counter() - started)


def _access_token_claims() -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": "http://localhost:8000",
        "sub": "12345",
        "aud": "http://localhost:8000",
        "exp": now + 900,
        "iat": now,
        "jti": new_secret(18),
        "client_id": new_secret(16),
        "scope": "junk:read junk:write",
        "username": "bench-user",
    }


def rsa_costs_ms(repeat: int = 300) -> tuple[float, float]:
    """Signing and verifying one RS256 access token with a key like the server's."""
    key = RSAKey.generate_key(KEY_SIZE, parameters={"alg": ALGORITHM}, private=True)
    key.ensure_kid()
    header = {"alg": ALGORITHM, "kid": key.kid, "typ": "at+jwt"}
    claims = _access_token_claims()
    token = jwt.encode(header, claims, key)
    sign = _median_ms(lambda: jwt.encode(header, claims, key), repeat)
    verify = _median_ms(lambda: jwt.decode(token, key, algorithms=[ALGORITHM]), repeat)
    return sign, verify


def sqlite_commit_ms(directory: Path, synchronous: str, repeat: int = 200) -> float:
    """One small committed insert on a WAL SQLite file in `directory` (the bench database's disk).

    FULL (what the server uses) against NORMAL is the price of a commit surviving a power cut:
    one fsync of the WAL per commit. A refresh grant commits once.
    """
    path = directory / f"commit-{synchronous.lower()}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")

        def commit() -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (v) VALUES (randomblob(300))")
            conn.execute("COMMIT")

        return _median_ms(commit, repeat)
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def sqlite_commit_costs(directory: Path) -> dict[str, float]:
    """A commit's cost with synchronous=FULL (shipped) and NORMAL, on the bench's own disk."""
    return {
        "sqlite_commit_full_ms": round(sqlite_commit_ms(directory, "FULL"), 3),
        "sqlite_commit_normal_ms": round(sqlite_commit_ms(directory, "NORMAL"), 3),
    }


def measure() -> dict[str, Any]:
    """The per-operation costs and the password-grant ceiling they imply on this machine."""
    cores = os.cpu_count() or 1
    argon2 = argon2_verify_ms()
    sign, verify = rsa_costs_ms()
    parallel = argon2_parallel_rps(cores)
    return {
        "cores": cores,
        "argon2_verify_ms": round(argon2, 2),
        "password_grant_ceiling_rps": round(cores * 1000 / argon2, 1),
        "argon2_parallel_rps": round(parallel, 1),
        "rs256_sign_ms": round(sign, 3),
        "rs256_verify_ms": round(verify, 3),
    }
