"""Authorization codes: stored as digests, spent once by one conditional UPDATE."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Table, bindparam, insert, update

from ..browser_models import AuthorizationCode
from ..extensions import db
from ..models import UTCDateTime, utcnow

_codes: Table = AuthorizationCode.__table__
_now = bindparam("now", type_=UTCDateTime())


@dataclass(frozen=True)
class NewCode:
    """What an authorization request binds a code to."""

    client_id: str
    user_id: int
    redirect_uri: str | None
    scope: str
    code_challenge: str
    code_challenge_method: str
    nonce: str | None
    auth_time: datetime
    session_id: str
    resources: str  # RFC 8707, space-separated; "" for the default audience
    dpop_jkt: str | None  # RFC 9449 §10: the key whose proof must come with the exchange


@dataclass(frozen=True)
class SpentCode(NewCode):
    """A code just spent by this request: Authlib's AuthorizationCodeMixin, read-only."""

    code_hash: str

    def get_redirect_uri(self) -> str | None:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return int(self.auth_time.timestamp())

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


def save(code_hash: str, code: NewCode, ttl: int) -> None:
    """Store a new code's digest and bindings, alive for `ttl` seconds."""
    now = utcnow()
    values = {
        "code_hash": code_hash,
        "created_at": now,
        "expires_at": now + timedelta(seconds=ttl),
        **code.__dict__,
    }
    with db.engine.begin() as conn:
        conn.execute(insert(_codes).values(values))


_SPEND = (
    update(_codes)
    .where(
        _codes.c.code_hash == bindparam("hash"),
        _codes.c.client_id == bindparam("client"),
        _codes.c.used_at.is_(None),
        _codes.c.expires_at > _now,
    )
    .values(used_at=_now)
    .returning(*(_codes.c[name] for name in SpentCode.__dataclass_fields__))
)
_MARK_REUSED = (
    update(_codes)
    .where(_codes.c.code_hash == bindparam("hash"), _codes.c.used_at.is_not(None))
    .values(reused_at=_now)
    .returning(_codes.c.family_id)
)


@dataclass(frozen=True)
class Spend:
    """The outcome of presenting a code: the code if this was its one use, else a replay's
    family (what the code issued, to revoke) or nothing."""

    code: SpentCode | None
    replayed: bool = False
    family_id: str | None = None


def spend(code_hash: str, client_id: str) -> Spend:
    """Spend a code for `client_id` now; a second presentation is marked and reported.

    One conditional UPDATE decides, so two concurrent exchanges cannot both win.
    """
    now = utcnow()
    with db.engine.begin() as conn:
        row = conn.execute(_SPEND, {"hash": code_hash, "client": client_id, "now": now}).first()
        if row is not None:
            return Spend(SpentCode(**row._mapping))
        reused = conn.execute(_MARK_REUSED, {"hash": code_hash, "now": now}).first()
    if reused is None:
        return Spend(None)
    return Spend(None, replayed=True, family_id=reused.family_id)


_LINK = (
    update(_codes)
    .where(_codes.c.code_hash == bindparam("hash"))
    .values(family_id=bindparam("family"))
    .returning(_codes.c.reused_at)
)


def link_family(code_hash: str, family_id: str) -> bool:
    """Record which token family a code issued; True if the code was replayed meanwhile."""
    with db.engine.begin() as conn:
        row = conn.execute(_LINK, {"hash": code_hash, "family": family_id}).first()
    return row is not None and row.reused_at is not None
