"""The password guard's counts in the database (login_throttles): one row per account name.

The guard (guard.py) owns the policy and hands it in: its schedule of delays, its daily cap
and the day. Each admission is one conditional upsert, built once per dialect with bind
parameters: every password check runs it, and building it (a CASE per step of the schedule)
costs more than running it. A bind parameter may not take a column's name in an INSERT or
UPDATE.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BindParameter, Table, and_, bindparam, case, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from ..models import LoginThrottle, UTCDateTime
from . import delete_in_batches, fleeting

_throttles: Table = LoginThrottle.__table__
_CLEAR = delete(_throttles).where(_throttles.c.key == bindparam("key"))
_STATE = select(
    _throttles.c.next_attempt_at, _throttles.c.day_started_at, _throttles.c.day_attempts
).where(_throttles.c.key == bindparam("key"))


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a name may not try now: when it may next, and its day's count."""

    next_attempt_at: datetime
    day_started_at: datetime
    day_attempts: int


class ThrottleTable:
    """The counts of one database, under one policy."""

    def __init__(self, engine: Engine, schedule: list[int], daily_cap: int, day: int) -> None:
        self._engine = engine
        self._schedule = schedule
        self._day = timedelta(seconds=day)
        self._admission = _admission(engine.dialect.name, len(schedule), daily_cap)

    def admit(self, key: str, now: datetime) -> Refused | None:
        """Count one check for `key` if it may try now (None); else why not, uncounted.

        A connection of its own: the count commits whatever becomes of the request. Counts
        need not survive a power cut: they are committed without an fsync of their own.
        """
        with fleeting(self._engine) as conn:
            admitted = conn.execute(self._admission, self._params(key, now)).first()
            row = None if admitted else conn.execute(_STATE, {"key": key}).first()
        if admitted:
            return None
        if row is None:  # cleared by a success since the refusal: try again in a moment
            return Refused(now, now, 0)
        return Refused(row.next_attempt_at, row.day_started_at, row.day_attempts)

    def clear(self, key: str) -> None:
        """Forget `key`'s count."""
        with fleeting(self._engine) as conn:
            conn.execute(_CLEAR, {"key": key})

    def prune(self, before: datetime, batch: int) -> int:
        """Delete a batch of counts untouched since `before`; returns how many."""
        stale = select(_throttles.c.key).where(_throttles.c.last_attempt_at <= before).limit(batch)
        with self._engine.begin() as conn:
            deleted: int = conn.execute(
                delete(_throttles).where(_throttles.c.key.in_(stale))
            ).rowcount
        return deleted

    def purge(self, before: datetime, batch_size: int) -> int:
        """Delete every count untouched since `before`, a batch per transaction; how many."""
        stale = _throttles.c.last_attempt_at <= before
        return delete_in_batches(
            _throttles, _throttles.c.key, stale, batch_size, engine=self._engine
        )

    def _params(self, key: str, now: datetime) -> dict[str, Any]:
        """The values of one admission: the name's key, the clock, and now + each delay."""
        params = {
            "throttle_key": key,
            "now": now,
            "cutoff": now - self._day,
            "first_next": now + timedelta(seconds=self._schedule[0]),
            "after_max": now + timedelta(seconds=self._schedule[-1]),
        }
        for n, delay in enumerate(self._schedule, start=1):
            params[f"after_{n}"] = now + timedelta(seconds=delay)
        return params


def _at(name: str) -> BindParameter[datetime]:
    return bindparam(name, type_=UTCDateTime())


def _admission(dialect: str, steps: int, daily_cap: int) -> Any:
    """INSERT a first attempt, or UPDATE the count only WHERE the name may try now.

    A row comes back (RETURNING) only when the check was admitted and counted.
    """
    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = _throttles
    now, cutoff, first_next = _at("now"), _at("cutoff"), _at("first_next")
    stale = table.c.last_attempt_at <= cutoff  # a day without attempts: start afresh
    new_day = or_(stale, table.c.day_started_at <= cutoff)
    # now + the delay after attempts + 1, from the schedule (no date arithmetic in the database)
    next_attempt = case(
        *[(table.c.attempts + 1 == n, _at(f"after_{n}")) for n in range(1, steps + 1)],
        else_=_at("after_max"),
    )
    return (
        insert(table)
        .values(
            key=bindparam("throttle_key"),
            attempts=1,
            last_attempt_at=now,
            next_attempt_at=first_next,
            day_started_at=now,
            day_attempts=1,
        )
        .on_conflict_do_update(
            index_elements=[table.c.key],
            set_={
                "attempts": case((stale, 1), else_=table.c.attempts + 1),
                "last_attempt_at": now,
                "next_attempt_at": case((stale, first_next), else_=next_attempt),
                "day_started_at": case((new_day, now), else_=table.c.day_started_at),
                "day_attempts": case((new_day, 1), else_=table.c.day_attempts + 1),
            },
            where=or_(
                stale,
                and_(
                    table.c.next_attempt_at <= now,
                    or_(new_day, table.c.day_attempts < daily_cap),
                ),
            ),
        )
        .returning(table.c.attempts)
    )
