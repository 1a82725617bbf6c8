"""Authorization codes: stored as digests, spent once by one conditional UPDATE."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Table, bindparam, insert, select, update

from ..browser_models import AuthorizationCode
from ..extensions import db, reader
from ..models import UTCDateTime, utcnow
from . import delete_in_batches

_codes: Table = AuthorizationCode.__table__
_now = bindparam("now", type_=UTCDateTime())


@dataclass(frozen=True)
class NewCode:
    """What an authorization request binds a code to."""

    client_id: str
    user_id: int
    redirect_uri: str | None  # as the request named it: the exchange must then repeat it
    sent_to: str | None  # where the code went; None only on a code stored before it was kept
    scope: str
    code_challenge: str
    code_challenge_method: str
    nonce: str | None
    auth_time: datetime
    session_id: str
    resources: str  # RFC 8707, space-separated; "" for the default audience
    dpop_jkt: str | None  # RFC 9449 §10: the key whose proof must come with the exchange


@dataclass(frozen=True)
class PresentedCode(NewCode):
    """A live code presented at the token endpoint: Authlib's AuthorizationCodeMixin, read-only.

    Not spent yet: it is spent by `spend`, in the transaction that stores what it issues.
    """

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


_FIND = select(
    *(_codes.c[name] for name in PresentedCode.__dataclass_fields__),
    _codes.c.used_at,
    _codes.c.expires_at,
).where(_codes.c.code_hash == bindparam("hash"))
_MARK_REUSED = (
    update(_codes)
    .where(_codes.c.code_hash == bindparam("hash"), _codes.c.used_at.is_not(None))
    .values(reused_at=_now)
    .returning(_codes.c.family_id)
)
_SPEND = (
    update(_codes)
    .where(
        _codes.c.code_hash == bindparam("hash"),
        _codes.c.used_at.is_(None),
        _codes.c.expires_at > _now,
    )
    .values(used_at=_now, family_id=bindparam("family"))
    .returning(_codes.c.session_id)
)


@dataclass(frozen=True)
class Presentation:
    """The outcome of presenting a code: the code if it is live, else a replay's family (what
    the code issued, to revoke) or nothing."""

    code: PresentedCode | None
    replayed: bool = False
    family_id: str | None = None


def present(code_hash: str, client_id: str) -> Presentation:
    """Look a code up for `client_id`; a presentation of a spent one (by any client: it has
    leaked) is marked and reported.

    A live code is only read here: it is spent with what it issues (`spend`), so a grant
    costs one write transaction, and a request that fails its checks (PKCE, redirect URI)
    leaves it to the client that holds the verifier.
    """
    now = utcnow()
    row = reader().execute(_FIND, {"hash": code_hash}).first()
    if row is None:
        return Presentation(None)
    if row.used_at is None:
        if row.client_id != client_id or row.expires_at <= now:
            return Presentation(None)
        fields = {name: row._mapping[name] for name in PresentedCode.__dataclass_fields__}
        return Presentation(PresentedCode(**fields))
    return replayed(code_hash)


def replayed(code_hash: str) -> Presentation:
    """Mark a spent code presented again; its outcome names the family it issued."""
    with db.engine.begin() as conn:
        reused = conn.execute(_MARK_REUSED, {"hash": code_hash, "now": utcnow()}).first()
    return Presentation(None, replayed=True, family_id=reused.family_id if reused else None)


def spend(conn: Connection, code_hash: str, family_id: str) -> str | None:
    """Spend a live code in the caller's transaction, naming the family it issues; the
    browser session the code was given in, or None if another request spent it first (or it
    expired meanwhile).

    One conditional UPDATE decides, so two concurrent exchanges cannot both win.
    """
    params = {"hash": code_hash, "family": family_id, "now": utcnow()}
    spent = conn.execute(_SPEND, params).first()
    return None if spent is None else str(spent.session_id)


def expire_unused(user_id: int, client_id: str, tx: Connection) -> int:
    """Expire the user's codes for `client_id` not yet exchanged (the user signed the app
    out: a code given before must not bring its tokens back); how many."""
    unused = update(_codes).where(
        _codes.c.user_id == user_id,
        _codes.c.client_id == client_id,
        _codes.c.used_at.is_(None),
        _codes.c.expires_at > _now,
    )
    now = utcnow()
    return int(tx.execute(unused.values(expires_at=now), {"now": now}).rowcount)


def purge(cutoff: datetime, batch_size: int) -> int:
    """Delete codes that expired before `cutoff`, used or not; how many.

    A code presented after that is unknown (invalid_grant) rather than a replay: what it
    issued is no longer revoked for it, so the cutoff should be well past the 60 s a code lives.
    """
    expired = _codes.c.expires_at < cutoff
    return delete_in_batches(_codes, _codes.c.code_hash, expired, batch_size)
