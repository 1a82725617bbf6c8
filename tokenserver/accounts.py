"""User accounts: registration rules, lookup, password login and the disabled switch."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .errors import APIError, Conflict, InvalidRequest, NotFound
from .extensions import db
from .models import User
from .passwords import current_passwords, password_problem

_USERNAME = re.compile(r"[A-Za-z0-9._-]{3,64}")


def username_key(username: str) -> str:
    """The case-folded form that makes usernames unique regardless of letter case."""
    return username.lower()


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


def authenticate(username: str, password: str) -> User | None:
    """The active user these credentials belong to, or None. Always costs one hash check."""
    passwords = current_passwords()
    user = find(username) if len(username) <= 64 else None
    if user is None:
        passwords.verify_dummy(password)  # same cost as a real miss: no enumeration by timing
        return None
    verdict = passwords.verify(user.password_hash, password)
    if not verdict.ok or user.disabled:
        return None
    if verdict.new_hash:
        user.password_hash = verdict.new_hash  # parameters changed, or a legacy Werkzeug hash
        db.session.commit()
    return user


def set_disabled(username: str, disabled: bool) -> User:
    """Disable or enable an account; a disabled user's tokens stop working at once."""
    user = get(username)
    user.disabled = disabled
    db.session.commit()
    return user


def list_all() -> Sequence[User]:
    """Every user, oldest first."""
    return db.session.scalars(select(User).order_by(User.id)).all()
