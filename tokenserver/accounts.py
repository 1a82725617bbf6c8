"""User accounts: registration rules, lookup, password login and the disabled switch."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.exc import IntegrityError

from . import audit
from .errors import APIError, Conflict, InvalidRequest, NotFound
from .extensions import db, reader
from .guard import Throttled, current_guard
from .models import USER_COLUMNS, Subject, User
from .passwords import current_passwords, password_problem

_USERNAME = re.compile(r"[A-Za-z0-9._-]{3,64}")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def username_key(username: str) -> str:
    """The case-folded form that makes usernames unique regardless of letter case.

    Only ASCII letters fold, as usernames are ASCII: str.lower() would also fold look-alikes
    such as the Kelvin sign (U+212A) into "k", so a non-ASCII name could reach an account.
    """
    return username.translate(_ASCII_LOWER)


def validate_username(username: object) -> str:
    """The username if it follows the rules, else a 400 saying which."""
    if username is None:
        raise InvalidRequest("'username' is required")
    if not isinstance(username, str):
        raise InvalidRequest("'username' must be a string")
    if not _USERNAME.fullmatch(username):
        raise InvalidRequest(
            "'username' must be 3-64 characters of letters, digits, '.', '_' or '-'"
        )
    return username


def register(username: object, password: object) -> User:
    """Create an account, refusing bad usernames, weak passwords and taken names."""
    name = validate_username(username)
    if password is None:
        raise InvalidRequest("'password' is required")
    if not isinstance(password, str):
        raise InvalidRequest("'password' must be a string")
    if _as_utf8(password) != password:
        raise InvalidRequest("'password' must be valid Unicode text")
    problem = password_problem(password, name)
    if problem:
        raise InvalidRequest(f"'password': {problem}")
    if find(name) is not None:
        raise _taken()
    user = User(
        username=name,
        username_key=username_key(name),
        password_hash=current_passwords().hash(password),
    )
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise _taken() from None  # lost a race with a concurrent sign-up
    return user


def _taken() -> APIError:
    return Conflict("that username is taken", error="username_taken")


def find(username: str) -> User | None:
    """The user with this name in any letter case, or None."""
    return db.session.scalars(
        select(User).where(User.username_key == username_key(username))
    ).first()


def get(username: str) -> User:
    """The user with this name, or NotFound."""
    user = find(username)
    if user is None:
        raise NotFound(f"no user named {username!r}")
    return user


def authenticate(username: str, password: str) -> Subject | None:
    """The active user these credentials belong to, or None; a throttled guess raises Throttled.

    The guard counts the check before any hash is computed, keyed on the normalised name
    whether or not such a user exists, so its answers do not tell which accounts exist.
    """
    name = username_key(username)
    try:
        current_guard().admit(name)
    except Throttled:
        _login_failed(username, "throttled")
        raise
    user = _check_password(username, password)
    if user is None:
        return None
    current_guard().clear(name)
    audit.event("login.success", user_id=user.id, username=user.username)
    return user


# Core, built once: every password grant runs these (see oauth/records.py).
_users: Table = User.__table__
_LOGIN = select(*USER_COLUMNS, _users.c.password_hash).where(
    _users.c.username_key == bindparam("name_key")
)
_REHASH = (
    update(_users).where(_users.c.id == bindparam("user_id")).values(password_hash=bindparam("new"))
)


def _check_password(username: str, password: str) -> Subject | None:
    """The active user if the password is theirs. Always costs one full hash check."""
    passwords = current_passwords()
    # A name that breaks the username rules names no account: no need to ask the database.
    row = None
    if _USERNAME.fullmatch(username):
        row = reader().execute(_LOGIN, {"name_key": username_key(username)}).first()
    if row is None:
        passwords.verify_dummy(_as_utf8(password))  # a miss costs what a wrong password does
        _login_failed(username, "unknown_user")
        return None
    user = Subject.from_row(row)
    verdict = passwords.verify(row.password_hash, _as_utf8(password))
    if not verdict.ok or user.disabled:
        _login_failed(username, "disabled" if verdict.ok else "wrong_password", user)
        return None
    if verdict.new_hash:
        # The parameters changed, or a legacy Werkzeug hash: store the current kind.
        db.session.execute(_REHASH, {"user_id": user.id, "new": verdict.new_hash})
        db.session.commit()
    return user


def _as_utf8(text: str) -> str:
    """The text with any lone surrogate (a Python string may hold one; UTF-8 may not) replaced.

    No stored password holds one, so a password with one is simply wrong, not an error.
    """
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _login_failed(username: str, reason: str, user: Subject | None = None) -> None:
    # A name that breaks the username rules is left out: it may be a password typed one field
    # too early, and the audit log must never hold one.
    audit.event(
        "login.failure",
        reason=reason,
        username=username if _USERNAME.fullmatch(username) else None,
        user_id=user.id if user else None,
    )


def set_disabled(username: str, disabled: bool) -> User:
    """Disable or enable an account; a disabled user's tokens stop working at once, for good."""
    from .oauth.records import revoke_user_families

    user = get(username)
    user.disabled = disabled
    if disabled:
        revoke_user_families(user.id)  # so enabling again brings none of them back
    db.session.commit()
    return user


def list_all() -> Sequence[User]:
    """Every user, oldest first."""
    return db.session.scalars(select(User).order_by(User.id)).all()
