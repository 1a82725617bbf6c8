"""Users: accounts, their password hashes and the disabled switch."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..extensions import reader
from ..models import USER_COLUMNS, Subject, User, utcnow
from . import transaction

_users: Table = User.__table__


class UsernameTaken(Exception):
    """Another account holds this name, in some letter case."""


@dataclass(frozen=True, slots=True)
class Login:
    """A user as a password login sees them: who, and the hash to check."""

    user: Subject
    password_hash: str


# Built once: the password grant, the bearer checks and sign-in run these.
_BY_ID = select(*USER_COLUMNS).where(_users.c.id == bindparam("user_id"))
_BY_NAME = select(*USER_COLUMNS).where(_users.c.username_key == bindparam("name_key"))
_LOGIN = select(*USER_COLUMNS, _users.c.password_hash).where(
    _users.c.username_key == bindparam("name_key")
)
_ADD = insert(_users).returning(*USER_COLUMNS)
_SET_HASH = (
    update(_users).where(_users.c.id == bindparam("user_id")).values(password_hash=bindparam("new"))
)
# Only over the hash the caller checked: a change committed meanwhile is never written over.
_REPLACE_HASH = _SET_HASH.where(_users.c.password_hash == bindparam("old"))
_SET_DISABLED = (
    update(_users)
    .where(_users.c.id == bindparam("user_id"))
    .values(disabled=bindparam("disabled"))
    .returning(*USER_COLUMNS)
)
_ALL = select(*USER_COLUMNS).order_by(_users.c.id)


def subject(user_id: int) -> Subject | None:
    """The user with this id, or None."""
    row = reader().execute(_BY_ID, {"user_id": user_id}).first()
    return Subject.from_row(row) if row is not None else None


def by_name(name_key: str) -> Subject | None:
    """The user whose case-folded name is `name_key`, or None."""
    row = reader().execute(_BY_NAME, {"name_key": name_key}).first()
    return Subject.from_row(row) if row is not None else None


def login(name_key: str) -> Login | None:
    """The user whose case-folded name is `name_key`, with their password hash; or None."""
    row = reader().execute(_LOGIN, {"name_key": name_key}).first()
    return Login(Subject.from_row(row), row.password_hash) if row is not None else None


def add(username: str, name_key: str, password_hash: str) -> Subject:
    """Store a new account; UsernameTaken if the name is (even concurrently) taken."""
    values = {
        "username": username,
        "username_key": name_key,
        "password_hash": password_hash,
        "disabled": False,
        "created_at": utcnow(),
    }
    try:
        with transaction() as tx:
            row = tx.execute(_ADD, values).one()
    except IntegrityError:
        raise UsernameTaken from None
    return Subject.from_row(row)


def set_password_hash(
    user_id: int, password_hash: str, tx: Connection | None = None, *, over: str | None = None
) -> bool:
    """Replace a user's password hash, or with `over`, only that one; whether it was replaced."""
    params = {"user_id": user_id, "new": password_hash, "old": over}
    with transaction(tx) as conn:
        done = conn.execute(_SET_HASH if over is None else _REPLACE_HASH, params)
    return bool(done.rowcount)


def set_disabled(user_id: int, disabled: bool, tx: Connection | None = None) -> Subject:
    """Disable or enable a user; the user as now stored."""
    with transaction(tx) as conn:
        row = conn.execute(_SET_DISABLED, {"user_id": user_id, "disabled": disabled}).one()
    return Subject.from_row(row)


def every() -> list[Subject]:
    """Every user, oldest first."""
    return [Subject.from_row(row) for row in reader().execute(_ALL)]
