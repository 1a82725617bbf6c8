"""Users as browser sign-in reads and writes them: the password hash."""

from __future__ import annotations

from sqlalchemy import Table, select, update

from ..extensions import db
from ..models import USER_COLUMNS, Subject, User

_users: Table = User.__table__


def set_password_hash(user_id: int, password_hash: str) -> None:
    """Store a user's new password hash."""
    with db.engine.begin() as conn:
        conn.execute(
            update(_users).where(_users.c.id == user_id).values(password_hash=password_hash)
        )


def subject(user_id: int) -> Subject | None:
    """The user with this id as a token names them, or None."""
    with db.engine.connect() as conn:
        row = conn.execute(select(*USER_COLUMNS).where(_users.c.id == user_id)).first()
    return Subject.from_row(row) if row is not None else None
