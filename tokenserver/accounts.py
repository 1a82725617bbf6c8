"""User accounts: registration rules, lookup, password login and the disabled switch."""

from __future__ import annotations

import hashlib
import hmac
import re
import string
from collections.abc import Sequence
from dataclasses import replace

from . import audit
from .errors import APIError, Conflict, InvalidRequest, NotFound
from .guard import Throttled, current_guard
from .models import Subject
from .passwords import current_passwords, password_problem
from .store import devices, sessions, transaction, users
from .store.tokens import revoking

_USERNAME = re.compile(r"[A-Za-z0-9._-]{3,64}")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def username_key(username: str) -> str:
    """The case-folded form that makes usernames unique regardless of letter case.

    Only ASCII letters fold, as usernames are ASCII: str.lower() would also fold look-alikes
    such as the Kelvin sign (U+212A) into "k", so a non-ASCII name could reach an account.
    """
    return username.translate(_ASCII_LOWER)


def is_username(text: str) -> bool:
    """Whether `text` follows the username rules (so it could name an account)."""
    return _USERNAME.fullmatch(text) is not None


def validate_username(username: object) -> str:
    """The username if it follows the rules, else a 400 saying which."""
    if username is None:
        raise InvalidRequest("'username' is required")
    if not isinstance(username, str):
        raise InvalidRequest("'username' must be a string")
    if not is_username(username):
        raise InvalidRequest(
            "'username' must be 3-64 characters of letters, digits, '.', '_' or '-'"
        )
    return username


def register(username: object, password: object) -> Subject:
    """Create an account, refusing bad usernames, weak passwords and taken names."""
    name = validate_username(username)
    password = _password_field("password", password)
    _check_new_password(password, name)
    if find(name) is not None:
        raise _taken()  # before hashing: a taken name costs no argon2id
    try:
        user = users.add(name, username_key(name), current_passwords().hash(password))
    except users.UsernameTaken:
        raise _taken() from None  # lost a race with a concurrent sign-up
    audit.event("user.created", user_id=user.id, username=user.username)
    return user


def check_name_free(username: object) -> str:
    """The username if it follows the rules and no account has it in any letter case, so the
    CLI can refuse it before asking for a password."""
    name = validate_username(username)
    if find(name) is not None:
        raise _taken()
    return name


def _check_new_password(password: str, username: str, field: str = "password") -> None:
    """A 400 naming `field` if the new password may not be used (NIST SP 800-63B §5.1.1.2)."""
    if _as_utf8(password) != password:
        raise InvalidRequest(f"'{field}' must be valid Unicode text")
    problem = password_problem(password, username)
    if problem:
        raise InvalidRequest(f"'{field}' {problem}")


def _taken() -> APIError:
    return Conflict("that username is taken", error="username_taken")


def find(username: str) -> Subject | None:
    """The user with this name in any letter case, or None."""
    return users.by_name(username_key(username))


def get(username: str) -> Subject:
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


def login_superseded(user: Subject) -> None:
    """Audit a login whose password checked out (its login.success is logged) but that stored
    nothing: a new password or the account's disabling committed in between."""
    _login_failed(user.username, "account_changed", user)


def _check_password(username: str, password: str) -> Subject | None:
    """The active user if the password is theirs. Always costs one full hash check."""
    passwords = current_passwords()
    # A name that breaks the username rules names no account: no need to ask the database.
    found = users.login(username_key(username)) if _USERNAME.fullmatch(username) else None
    if found is None:
        passwords.verify_dummy(_as_utf8(password))  # a miss costs what a wrong password does
        _login_failed(username, "unknown_user")
        return None
    user = found.user
    verdict = passwords.verify(found.password_hash, _as_utf8(password))
    if not verdict.ok or user.disabled:
        _login_failed(username, "disabled" if verdict.ok else "wrong_password", user)
        return None
    checked = found.password_hash
    # The parameters changed, or a legacy Werkzeug hash: store the current kind, unless a new
    # password came meanwhile (then this login, checked against the old one, stores nothing).
    if verdict.new_hash and users.set_password_hash(user.id, verdict.new_hash, over=checked):
        checked = verdict.new_hash
    return replace(user, checked_hash=checked)


def _as_utf8(text: str) -> str:
    """The text with any lone surrogate (a Python string may hold one; UTF-8 may not) replaced.

    No stored password holds one, so a password with one is simply wrong, not an error.
    """
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _login_failed(username: str, reason: str, user: Subject | None = None) -> None:
    # A name that matches no account may be a password typed one field too early: the audit
    # log holds only a keyed digest of it, enough to see the same name tried again.
    audit.event(
        "login.failure",
        reason=reason,
        username=user.username if user else None,
        username_digest=None if user else _name_digest(username),
        user_id=user.id if user else None,
    )


def _name_digest(username: str) -> str:
    """An HMAC of the name under the current signing key's private part: not reversible by
    guessing without that key; the same across workers and nodes until the next rotation."""
    from .keys import current_keyring

    secret = str(current_keyring().signing_key().as_dict(private=True)["d"])
    name = username_key(username).encode("utf-8", "surrogatepass")
    return hmac.new(secret.encode(), name, hashlib.sha256).hexdigest()[:32]


def change_password(
    user: Subject,
    current: object,
    new: object,
    keep_family: str | None = None,
    keep_session: str | None = None,
) -> int:
    """Replace a user's password and end every other login; how many token logins ended.

    Every other sign-in ends: the refresh-token families but `keep_family`, and the browser
    sessions on our pages but `keep_session` (the API and /account share this one path).

    The current password is checked as a login is: admitted by the password guard first, so
    a stolen access token cannot be used to guess it faster than the token endpoint allows.
    """
    current_password = _password_field("current_password", current)
    new_password = _password_field("new_password", new)
    name = username_key(user.username)
    try:
        current_guard().admit(name)
    except Throttled:
        _login_failed(user.username, "throttled", user)
        raise
    checked = _check_password(user.username, current_password)
    if checked is None or checked.id != user.id:
        raise InvalidRequest("The current password is wrong.", error="invalid_grant")
    current_guard().clear(name)
    _check_new_password(new_password, user.username, "new_password")
    new_hash = current_passwords().hash(new_password)
    ended = _replace_password(user, new_hash, keep_family, keep_session, over=checked.checked_hash)
    if ended is None:  # another change (an operator's reset) came first: it stands
        raise InvalidRequest("The current password is wrong.", error="invalid_grant")
    audit.event("user.password_changed", user_id=user.id, username=user.username, ended=ended)
    return ended


def _replace_password(
    user: Subject,
    new_hash: str,
    keep_family: str | None = None,
    keep_session: str | None = None,
    *,
    over: str | None = None,
) -> int | None:
    """Store a new password hash (with `over`, only over that one: else None, nothing done)
    and end what the old password may have started, together: browser sessions (first: see
    sessions.end), token logins, and approved device codes not yet exchanged (but those of
    `keep_session`). How many token logins ended."""
    with transaction() as tx:
        if not users.set_password_hash(user.id, new_hash, tx, over=over):
            return None
        sessions.end(user.id, keep=keep_session, tx=tx)
        ended = revoking.revoke_logins(user.id, keep_family=keep_family, tx=tx)
        devices.withdraw_approvals(user.id, tx, keep_session=keep_session)
    return ended


def reset_password(username: str, new: object) -> tuple[Subject, int]:
    """An operator's new password for a user who lost theirs; the user and how many token
    logins ended.

    Every login ends, browser sessions included: whoever knew the old password is out. The
    password guard forgets the name's failed attempts, so the user can sign in at once.
    """
    user = get(username)
    new_password = _password_field("password", new)
    _check_new_password(new_password, user.username)
    new_hash = current_passwords().hash(new_password)
    # First: with the guard's store down, nothing changes (rather than a reset left unaudited).
    current_guard().clear(username_key(user.username))
    ended = _replace_password(user, new_hash)
    assert ended is not None  # an operator's reset is not conditional
    audit.event("user.password_reset", user_id=user.id, username=user.username, ended=ended)
    return user, ended


def _password_field(field: str, value: object) -> str:
    if value is None:
        raise InvalidRequest(f"'{field}' is required")
    if not isinstance(value, str):
        raise InvalidRequest(f"'{field}' must be a string")
    return value


def set_disabled(username: str, disabled: bool) -> Subject:
    """Disable or enable an account; a disabled user's tokens stop working at once, for good."""
    user = get(username)
    # One transaction: a failure part-way must not leave a session that enabling brings back.
    with transaction() as tx:
        user = users.set_disabled(user.id, disabled, tx)
        if disabled:
            sessions.end(user.id, tx=tx)  # out of our pages too (first: see sessions.end)
            revoking.revoke_logins(user.id, tx=tx)  # so enabling again brings none of them back
    audit.event(
        "user.disabled" if disabled else "user.enabled", user_id=user.id, username=user.username
    )
    return user


def list_all() -> Sequence[Subject]:
    """Every user, oldest first."""
    return users.every()
