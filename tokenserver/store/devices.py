"""Device authorizations (RFC 8628): stored as digests, decided once, spent once.

Every state change is one conditional UPDATE: a user's decision only on a pending code, a
poll only on the count it read, the exchange only on an allowed, unspent, live code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Table, bindparam, exists, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from ..browser_models import DeviceAuthorization
from ..extensions import db, reader
from ..models import Client, User, UTCDateTime, utcnow
from . import delete_in_batches

_devices: Table = DeviceAuthorization.__table__
_clients: Table = Client.__table__
_users: Table = User.__table__
_now = bindparam("now", type_=UTCDateTime())

PENDING = "pending"
ALLOWED = "allowed"
DENIED = "denied"


@dataclass(frozen=True)
class NewDevice:
    """What a device authorization request binds its codes to."""

    client_id: str
    scope: str
    resources: str  # RFC 8707, space-separated; "" for the default audience
    interval: int


@dataclass(frozen=True)
class DeviceCredential:
    """A device code as its client polls it: Authlib's DeviceCredentialMixin, read-only."""

    device_code_hash: str
    client_id: str
    scope: str
    resources: str
    interval: int
    polls: int
    last_polled_at: datetime | None
    status: str
    user_id: int | None
    auth_time: datetime | None
    session_id: str | None  # the approver's browser session
    used_at: datetime | None
    expires_at: datetime

    def get_client_id(self) -> str:
        return self.client_id

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return self.expires_at <= utcnow()

    # OpenID Connect: what an id_token says of the approval (no nonce, acr or amr here).
    def get_nonce(self) -> None:
        return None

    def get_auth_time(self) -> int | None:
        return int(self.auth_time.timestamp()) if self.auth_time else None

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


@dataclass(frozen=True)
class PendingDevice:
    """A pending authorization as the /device page shows it: the app and what it asks for."""

    client_id: str
    client_name: str
    scope: str
    self_registered: bool  # registered over RFC 7591: its name is its own claim

    @property
    def scopes(self) -> list[str]:
        return self.scope.split()


def save(device_code_hash: str, user_code_hash: str, device: NewDevice, ttl: int) -> bool:
    """Store a new authorization, alive `ttl` seconds; False if the user code is taken."""
    now = utcnow()
    values = {
        "device_code_hash": device_code_hash,
        "user_code_hash": user_code_hash,
        "status": PENDING,
        "polls": 0,
        "created_at": now,
        "expires_at": now + timedelta(seconds=ttl),
        **device.__dict__,
    }
    try:
        with db.engine.begin() as conn:
            conn.execute(insert(_devices).values(values))
    except IntegrityError:
        return False  # a live user code has these letters already: the caller draws again
    return True


_FIND = select(*(_devices.c[name] for name in DeviceCredential.__dataclass_fields__)).where(
    _devices.c.device_code_hash == bindparam("hash"),
    _devices.c.client_id == bindparam("client"),
)


def find(device_code_hash: str, client_id: str) -> DeviceCredential | None:
    """The device code `client_id` holds with this digest (another client's reads as none)."""
    row = reader().execute(_FIND, {"hash": device_code_hash, "client": client_id}).first()
    return None if row is None else DeviceCredential(**row._mapping)


_POLL = update(_devices).where(
    _devices.c.device_code_hash == bindparam("hash"),
    _devices.c.polls == bindparam("seen"),
    _devices.c.status == PENDING,
)


def record_poll(credential: DeviceCredential, now: datetime, interval: int) -> bool:
    """Count a poll of a pending code and set its interval; False if another poll came first."""
    with db.engine.begin() as conn:
        counted = conn.execute(
            _POLL.values(polls=credential.polls + 1, last_polled_at=now, interval=interval),
            {"hash": credential.device_code_hash, "seen": credential.polls},
        ).rowcount
    return bool(counted)


_SPEND = (
    update(_devices)
    .where(
        _devices.c.device_code_hash == bindparam("hash"),
        _devices.c.client_id == bindparam("client"),
        _devices.c.status == ALLOWED,
        _devices.c.used_at.is_(None),
        _devices.c.expires_at > _now,
    )
    .values(used_at=_now)
    .returning(_devices.c.device_code_hash)
)


def spend(credential: DeviceCredential, now: datetime) -> bool:
    """Spend an allowed code for its client: True for its one use, False ever after."""
    with db.engine.begin() as conn:
        row = conn.execute(
            _SPEND,
            {"hash": credential.device_code_hash, "client": credential.client_id, "now": now},
        ).first()
    return row is not None


_STILL_ALLOWED = (
    select(_devices.c.status)
    .where(_devices.c.device_code_hash == bindparam("hash"), _devices.c.status == ALLOWED)
    .with_for_update(read=True)
)


def still_allowed(conn: Connection, device_code_hash: str) -> bool:
    """Whether a spent code's approval still stands, read in the write transaction that
    stores its tokens: a withdrawal racing it (an app signed out, a new password) waits for
    the caller on PostgreSQL (the row is share-locked) and then sees its tokens to revoke,
    or comes first and this says False. On SQLite the caller's transaction holds the one
    write lock from its start (tokens.issuing._issuing)."""
    return conn.execute(_STILL_ALLOWED, {"hash": device_code_hash}).first() is not None


_PENDING = (
    select(
        _devices.c.client_id,
        _clients.c.name,
        _devices.c.scope,
        Client.self_registered.label("self_registered"),
    )
    .join(_clients, _clients.c.client_id == _devices.c.client_id)
    .where(
        _devices.c.user_code_hash == bindparam("hash"),
        _devices.c.status == PENDING,
        _devices.c.expires_at > _now,
    )
)


def pending(user_code_hash: str) -> PendingDevice | None:
    """The live, undecided authorization with this user code's digest, if any."""
    row = reader().execute(_PENDING, {"hash": user_code_hash, "now": utcnow()}).first()
    if row is None:
        return None
    return PendingDevice(row.client_id, row.name, row.scope, bool(row.self_registered))


_ACTIVE_USER = exists().where(_users.c.id == bindparam("user"), _users.c.disabled.is_(False))
_DECIDE = update(_devices).where(
    _devices.c.user_code_hash == bindparam("hash"),
    _devices.c.status == PENDING,
    _devices.c.expires_at > _now,
    _ACTIVE_USER,  # a user disabled a moment ago cannot approve
)


_ANSWERED_IN = select(_devices.c.status).where(
    _devices.c.user_code_hash == bindparam("hash"),
    _devices.c.session_id == bindparam("session"),
    _devices.c.expires_at > _now,
)


def answered_in(user_code_hash: str, session_id: str) -> str | None:
    """The answer a browser session gave a live code (ALLOWED or DENIED), if it gave one."""
    params = {"hash": user_code_hash, "session": session_id, "now": utcnow()}
    status: str | None = reader().execute(_ANSWERED_IN, params).scalar()
    return status


def decide(
    user_code_hash: str, user_id: int, allowed: bool, auth_time: datetime, session_id: str
) -> bool:
    """Record the user's answer on a pending, live code; False if it was decided or expired."""
    now = utcnow()
    values = {
        "status": ALLOWED if allowed else DENIED,
        "user_id": user_id,
        "auth_time": auth_time,
        "session_id": session_id,
        "decided_at": now,
    }
    with db.engine.begin() as conn:
        changed = conn.execute(
            _DECIDE.values(**values), {"hash": user_code_hash, "user": user_id, "now": now}
        ).rowcount
    return bool(changed)


def withdraw_approvals(
    user_id: int,
    tx: Connection,
    *,
    keep_session: str | None = None,
    client_id: str | None = None,
) -> int:
    """Deny the user's approved device codes (the polls of those not yet exchanged get
    access_denied): whoever approved them may have been someone else holding the old password,
    or the user signed that app (`client_id`) out. Approvals made in `keep_session` (where the
    user just proved the password) stay.

    Codes already spent are denied too: one whose tokens are still being stored is then
    refused at its store (`still_allowed`), and the caller revokes the tokens of the rest."""
    condition = [_devices.c.user_id == user_id, _devices.c.status == ALLOWED]
    if client_id is not None:
        condition.append(_devices.c.client_id == client_id)
    if keep_session is not None:
        condition.append(
            or_(_devices.c.session_id.is_(None), _devices.c.session_id != keep_session)
        )
    unused = update(_devices).where(*condition)
    return int(tx.execute(unused.values(status=DENIED)).rowcount)


def purge(cutoff: datetime, batch_size: int) -> int:
    """Delete authorizations that expired before `cutoff`, a batch per transaction."""
    expired = _devices.c.expires_at < cutoff
    return delete_in_batches(_devices, _devices.c.device_code_hash, expired, batch_size)
