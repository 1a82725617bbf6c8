"""Password hashing: argon2id, legacy Werkzeug hashes, rehashing, dummy verify, deny list."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from werkzeug.security import check_password_hash

MIN_LENGTH = 8
MAX_LENGTH = 1024
# zxcvbn's cost grows fast with length; a prefix this long already tells a common password.
_ANALYSED_PREFIX = 64
_LEGACY_PREFIXES = ("scrypt:", "pbkdf2:")


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking a password against a stored hash."""

    ok: bool
    new_hash: str | None = None  # set when the stored hash should be replaced


class Passwords:
    """Hashes and verifies passwords with one set of argon2id parameters."""

    def __init__(self, time_cost: int, memory_kib: int, parallelism: int) -> None:
        # Every argon2id computation of this process runs on one thread of its own: glibc keeps
        # a hash's memory (19 MiB) in the arena of the thread that ran it, and reusing it keeps
        # hashes fast; run on each request thread, every one would keep a copy (gunicorn.conf.py
        # runs 4 per worker). Workers, at least as many as cores, keep every core hashing.
        self._hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="argon2id")
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID
        )
        # Verified against when the username does not exist, so that a miss costs what a
        # wrong password costs: no user enumeration by timing.
        self._dummy_hash = self.hash("not-a-real-password")
        self.dummy_verifications = 0

    def hash(self, password: str) -> str:
        """An argon2id hash of the password."""
        hashed: str = self._hashing.submit(self._hasher.hash, password).result()
        return hashed

    def verify(self, stored_hash: str, password: str) -> Verdict:
        """Check a password; on success, say whether to store a fresh hash."""
        if stored_hash.startswith(_LEGACY_PREFIXES):
            # Hashes carried over from a Werkzeug app; upgraded to argon2id on first success.
            if check_password_hash(stored_hash, password):
                return Verdict(True, self.hash(password))
            return Verdict(False)
        try:
            self._hashing.submit(self._hasher.verify, stored_hash, password).result()
        except (VerificationError, InvalidHashError):
            return Verdict(False)
        if self._hasher.check_needs_rehash(stored_hash):
            return Verdict(True, self.hash(password))
        return Verdict(True)

    def verify_dummy(self, password: str) -> None:
        """Spend one full verification on nothing (see _dummy_hash)."""
        self.dummy_verifications += 1
        self.verify(self._dummy_hash, password)


def password_problem(password: str, username: str = "") -> str | None:
    """Why a new password is refused, or None. Length and commonness only (NIST 800-63B)."""
    if len(password) < MIN_LENGTH:
        return f"password must be at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"password must be at most {MAX_LENGTH} characters"
    # Imported here: its dictionaries cost every worker 13 MB; only new passwords need them.
    from zxcvbn import zxcvbn
    from zxcvbn.matching import RANKED_DICTIONARIES

    if password.lower() in RANKED_DICTIONARIES["passwords"]:
        return "password is too common; choose another"
    result = zxcvbn(password[:_ANALYSED_PREFIX], user_inputs=[username] if username else [])
    if result["score"] == 0:
        return "password is too easy to guess; choose another"
    return None


def current_passwords() -> Passwords:
    """The password hasher of the app handling this request or command."""
    from flask import current_app

    passwords: Passwords = current_app.extensions["tokenserver.passwords"]
    return passwords
