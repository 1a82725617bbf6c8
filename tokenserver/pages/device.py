"""/device: the user signs in, types (or confirms) a device's user code, and allows or denies.

Wrong codes are answered 400, so the per-IP and per-session limits on them (limits.py) count
every guess; a GET never looks a code up, so it cannot be used to guess without counting.
"""

from __future__ import annotations

from urllib.parse import urlencode

from flask import redirect, request
from werkzeug.wrappers import Response

from ..oauth import devices
from . import bp, web

_NOT_VALID = "That code is not valid, or it has expired or been used. Check your device."


def _to_login(user_code: str) -> Response:
    """Sign in first, then back here with the code the user came with (if any)."""
    back = "/device" + (f"?{urlencode({'user_code': user_code})}" if user_code else "")
    status = 303 if request.method == "POST" else 302
    return redirect("/login?" + urlencode({"next": back}), status)


def _typed_code(raw: str) -> str:
    """The code to show back in the form: tidied when it is well-formed, else as typed."""
    code = devices.normalize_user_code(raw)
    return devices.display_user_code(code) if code else raw[:64]


@bp.get("/device")
def device_form() -> Response:
    """Ask for the code; one from verification_uri_complete is filled in, to be confirmed."""
    user_code = request.args.get("user_code", "")
    signed_in = web.signed_in()
    if signed_in is None:
        return _to_login(user_code[:64])
    return web.page("device.html", user=signed_in.user, user_code=_typed_code(user_code))


@bp.post("/device")
def device() -> Response:
    """A typed code shows what the device asks for; a decision answers it."""
    web.check_form()
    user_code = request.form.get("user_code", "")
    signed_in = web.signed_in()
    if signed_in is None:
        return _to_login(_typed_code(user_code))
    decision = request.form.get("decision")
    if decision is None:
        pending = devices.pending(user_code)
        if pending is None:
            # The code this browser answered, typed again (its form sent again after Back):
            # the answer it gave, not a wrong code.
            answer = devices.answer_of(user_code, signed_in)
            return _wrong_code(user_code) if answer is None else _answered(answer)
        return web.page(
            "device.html", user=signed_in.user, device=pending, user_code=_typed_code(user_code)
        )
    if decision not in ("allow", "deny"):
        raise web.refuse(400, "No decision", "Choose Allow or Deny.")
    allowed = decision == "allow"
    if not devices.decide(user_code, signed_in, allowed):
        return _wrong_code(user_code)
    return _answered(allowed)


def _answered(allowed: bool) -> Response:
    """What the user's answer did."""
    done = "Device connected" if allowed else "Request denied"
    message = (
        "Your device is now signed in; it will carry on by itself."
        if allowed
        else "The device was told no and gets no access to your account."
    )
    return web.page("device.html", done=done, message=message)


def _wrong_code(user_code: str) -> Response:
    signed_in = web.signed_in()
    assert signed_in is not None
    return web.page(
        "device.html", 400, user=signed_in.user, user_code=_typed_code(user_code), error=_NOT_VALID
    )
