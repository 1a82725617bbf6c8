"""Users as browser sign-in reads them."""

from __future__ import annotations

from sqlalchemy import Table, select

from ..extensions import db
from ..models import USER_COLUMNS, Subject, User

_users: Table = User.__table__


def subject(user_id: int) -> Subject | None:
    """The user with this id as a token names them, or None."""
    with db.engine.connect() as conn:
        row = conn.execute(select(*USER_COLUMNS).where(_users.c.id == user_id)).first()
    return Subject.from_row(row) if row is not None else None
