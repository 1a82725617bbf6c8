"""Our pages as assistive technology meets them: errors tied to fields, names, titles."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest

from .conftest import PASSWORD, Actions
from .helpers import Flow, csrf_of, pkce

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_VOID = {"input", "meta", "link", "br", "hr", "img"}


class _Element:
    """One element of a page: its tag, attributes, text, and the tags of the elements around it."""

    def __init__(self, tag: str, attrs: dict[str, str], within: list[str]) -> None:
        self.tag, self.attrs, self.text, self.within = tag, attrs, "", within


class _Page(HTMLParser):
    """A served page parsed into its elements, in document order."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[_Element] = []
        self._open: list[_Element] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = _Element(
            tag, {name: value or "" for name, value in attrs}, [e.tag for e in self._open]
        )
        self.elements.append(element)
        if tag not in _VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop().tag != tag:
            pass

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data

    def all(self, tag: str) -> list[_Element]:
        return [e for e in self.elements if e.tag == tag]

    def field(self, name: str) -> _Element:
        return next(e for e in self.all("input") if e.attrs.get("name") == name)

    def by_id(self, id_: str) -> _Element:
        (found,) = [e for e in self.elements if e.attrs.get("id") == id_]
        return found

    @property
    def title(self) -> str:
        return " ".join(self.all("title")[0].text.split())


def _described_by(page: _Page, name: str) -> str:
    """The words a screen reader reads after a field's label: its aria-describedby targets."""
    ids = page.field(name).attrs.get("aria-describedby", "").split()
    return " ".join(" ".join(page.by_id(i).text.split()) for i in ids)


def _is_announced_error(page: _Page, name: str, words: str) -> bool:
    """The field is marked invalid and described by an announced error saying `words`."""
    field = page.field(name)
    ids = field.attrs.get("aria-describedby", "").split()
    alerts = [page.by_id(i) for i in ids if page.by_id(i).attrs.get("role") == "alert"]
    return (
        field.attrs.get("aria-invalid") == "true"
        and bool(alerts)
        and words in _described_by(page, name)
    )


# --- every page --------------------------------------------------------------------------------

# A <header> or <footer> inside one of these is no banner or contentinfo region (HTML-AAM).
_SECTIONING = {"main", "section", "article", "aside", "nav"}


def test_the_mark_and_the_footer_line_are_landmarks_beside_main(flow: Flow) -> None:
    pages = [flow.client.get("/login").text]
    flow.login()
    pages.append(flow.client.get("/account").text)
    for page in map(_Page, pages):
        (header,), (footer,), (main,) = page.all("header"), page.all("footer"), page.all("main")
        assert "tokenserver" in header.text and not _SECTIONING & set(header.within)
        assert "never see your password" in footer.text and not _SECTIONING & set(footer.within)
        assert "never see your password" not in main.text


# --- sign-in -----------------------------------------------------------------------------------


def test_a_wrong_password_is_read_out_on_the_fields_it_is_about(flow: Flow) -> None:
    # The page comes back with focus in the password field (autofocus), where a screen reader
    # reads the field, not the alert above it: the field itself must carry the message.
    wrong = flow.login(password="wrong-password")
    assert wrong.status_code == 400
    page = _Page(wrong.text)
    for name in ("username", "password"):
        assert _is_announced_error(page, name, "That username and password do not match.")
    assert page.title == "Error: Sign in · tokenserver"


def test_a_throttled_sign_in_is_announced_but_marks_no_field_wrong(flow: Flow) -> None:
    for _ in range(5):
        flow.login(password="wrong-password")
    throttled = flow.login()
    assert throttled.status_code == 429
    page = _Page(throttled.text)
    (alert,) = [e for e in page.elements if e.attrs.get("role") == "alert"]
    assert "Too many attempts" in alert.text
    # The first wait is a second, said as one: "1 second", never "1 seconds".
    assert throttled.headers["Retry-After"] == "1"
    assert alert.text.strip().endswith("Try again in 1 second.")
    for name in ("username", "password"):
        assert "aria-invalid" not in page.field(name).attrs  # the password may well be right
        assert "Too many attempts" in _described_by(page, name)
    assert page.title == "Error: Sign in · tokenserver"


def test_the_sign_in_form_marks_nothing_wrong_before_a_try(flow: Flow) -> None:
    page = _Page(flow.client.get("/login").text)
    for name in ("username", "password"):
        assert "aria-invalid" not in page.field(name).attrs
        assert "aria-describedby" not in page.field(name).attrs
    assert page.title == "Sign in · tokenserver"


# --- /device -----------------------------------------------------------------------------------


def _device_codes(flow: Flow, actions: Actions) -> dict[str, Any]:
    tv = actions.oauth_client("Living Room TV", public=True, grants=(DEVICE_GRANT,))
    started = flow.client.post("/oauth/device_authorization", data={"client_id": tv.client_id})
    assert started.status_code == 200
    flow.login()
    return dict(started.json)


def _enter(flow: Flow, user_code: str, **decision: str) -> Any:
    token = csrf_of(flow.client.get("/device").text)
    return flow.client.post(
        "/device", data={"csrf_token": token, "user_code": user_code, **decision}
    )


def test_a_wrong_device_code_is_read_out_on_the_code_field(flow: Flow, actions: Actions) -> None:
    _device_codes(flow, actions)
    wrong = _enter(flow, "BCDF-GHJK")
    assert wrong.status_code == 400
    page = _Page(wrong.text)
    assert _is_announced_error(page, "user_code", "That code is not valid")
    assert page.field("user_code").attrs["autocomplete"] == "one-time-code"
    assert page.title == "Error: Connect a device · tokenserver"
    fresh = _Page(flow.client.get("/device").text)
    assert "aria-invalid" not in fresh.field("user_code").attrs
    assert fresh.title == "Connect a device · tokenserver"


@pytest.mark.parametrize(
    ("decision", "title"), [("allow", "Device connected"), ("deny", "Request denied")]
)
def test_each_step_of_connecting_a_device_has_its_own_title(
    flow: Flow, actions: Actions, decision: str, title: str
) -> None:
    codes = _device_codes(flow, actions)
    question = _enter(flow, codes["user_code"])
    assert _Page(question.text).title == "Allow Living Room TV? · tokenserver"
    answered = flow.client.post(
        "/device",
        data={
            "csrf_token": csrf_of(question.text),
            "user_code": codes["user_code"],
            "decision": decision,
        },
    )
    page = _Page(answered.text)
    assert page.title == f"{title} · tokenserver"
    assert " ".join(page.all("h1")[0].text.split()) == title


# --- /account ----------------------------------------------------------------------------------


def _change_password(flow: Flow, current: str, new: str, again: str) -> Any:
    token = csrf_of(flow.client.get("/account").text)
    form = {
        "csrf_token": token,
        "current_password": current,
        "new_password": new,
        "confirm_password": again,
    }
    return flow.client.post("/account/password", data=form)


@pytest.mark.parametrize(
    ("current", "new", "again", "field", "words"),
    [
        (
            "wrong-password",
            "a-Longer-passphrase-7",
            "a-Longer-passphrase-7",
            "current_password",
            "The current password is wrong.",
        ),
        (
            PASSWORD,
            "short",
            "short",
            "new_password",
            "The new password must be at least 8 characters",
        ),
        (
            PASSWORD,
            "Password1!",
            "Password1!",
            "new_password",
            "The new password is common or known from data breaches; choose another.",
        ),
        (
            PASSWORD,
            "Tokenserver1!",
            "Tokenserver1!",
            "new_password",
            "The new password is made from your username or the name of this service; "
            "choose another.",
        ),
        (
            PASSWORD,
            "a-Longer-passphrase-7",
            "a-Longer-passphrase-8",
            "confirm_password",
            "The new passwords do not match.",
        ),
    ],
    ids=["wrong-current", "too-short", "weak", "own-words", "mismatch"],
)
def test_a_refused_password_change_is_said_in_words_on_its_field(
    flow: Flow, current: str, new: str, again: str, field: str, words: str
) -> None:
    flow.login()
    refused = _change_password(flow, current, new, again)
    assert refused.status_code == 400
    page = _Page(refused.text)
    assert _is_announced_error(page, field, words)
    # The label's words, not the form field's name nor the API's reason code ("weak_password").
    assert "'" not in _described_by(page, field) and "_" not in _described_by(page, field)
    others = {"current_password", "new_password", "confirm_password"} - {field}
    assert all("aria-invalid" not in page.field(other).attrs for other in others)
    assert page.title == "Error: Your account · tokenserver"


def _button_names(page: _Page) -> list[str]:
    return [" ".join(b.text.split()) for b in page.all("button")]


def test_each_sign_out_button_on_the_account_page_names_what_it_signs_out(flow: Flow) -> None:
    client_id, secret = flow.register(first_party=True, name="Photo App")
    flow.login()
    verifier, challenge = pkce()
    flow.exchange(client_id, secret, flow.code_for(client_id, challenge), verifier)
    names = _button_names(_Page(flow.client.get("/account").text))
    # A screen reader's list of buttons, out of context: each must say which one it is.
    assert len(names) == len(set(names))
    assert "Sign out Photo App" in names
    assert any(n.startswith("Sign out ") and "this browser" in n for n in names)
    assert "Sign out everywhere" in names


def test_a_throttled_password_change_stays_on_the_account_page_and_says_why(flow: Flow) -> None:
    flow.login()
    for _ in range(5):
        assert (
            _change_password(flow, "wrong-password", "a-Longer-7", "a-Longer-7").status_code == 400
        )
    throttled = _change_password(flow, PASSWORD, "a-Longer-passphrase-7", "a-Longer-passphrase-7")
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) >= 1
    page = _Page(throttled.text)
    assert _is_announced_error(page, "current_password", "Too many failed sign-ins")
    assert page.title == "Error: Your account · tokenserver"
