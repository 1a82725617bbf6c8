"""Browser sign-in as users meet it: headless Chromium against live gunicorn, real clients.

A relying party built on Authlib's Flask client (configured only from our discovery document)
signs a user in through our pages; a native-style public client uses requests-oauthlib with
PKCE on a loopback redirect.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import pytest
import requests
from authlib.integrations.flask_client import OAuth
from flask import Flask, jsonify, redirect, request, url_for
from markupsafe import escape
from requests_oauthlib import OAuth2Session
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import func, select
from werkzeug.serving import make_server

from bench.server import Port
from tokenserver.config import Settings
from tokenserver.extensions import db
from tokenserver.models import TokenFamily

from .conftest import PASSWORD, LiveServer
from .helpers import claims_of, pkce

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCOPE = "openid profile junk:read"

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
)


@pytest.fixture
def server(base_settings: Settings, app: Flask, tmp_path: Path) -> Iterator[LiveServer]:
    """Live gunicorn whose issuer is its own loopback URL, as a browser reaches it."""
    live = LiveServer(base_settings, 2, tmp_path)
    live.own_issuer = True
    try:
        yield live.start()
    finally:
        live.stop()


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile."""
    profile = tempfile.mkdtemp(prefix="tokenserver-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1000,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _register(server: LiveServer, *args: str) -> dict[str, Any]:
    """`tokenserver clients create ... --json` against the live server's database."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "tokenserver", "clients", "create", *args, "--json"],
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(done.stdout))


def _sign_up(server: LiveServer, username: str = "alice") -> None:
    response = requests.post(
        f"{server.url}/users", json={"username": username, "password": PASSWORD}, timeout=10
    )
    assert response.status_code == 201


def _wait_for(browser: WebDriver, prefix: str) -> None:
    WebDriverWait(browser, 20).until(expected_conditions.url_contains(prefix))


def _sign_in(browser: WebDriver, shots: Path | None = None, username: str = "alice") -> None:
    """Fill in and submit our sign-in form as a person would."""
    _wait_for(browser, "/login")
    if shots:
        browser.save_screenshot(str(shots / "login.png"))
    browser.find_element(By.NAME, "username").send_keys(username)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


@contextmanager
def _serving(app: Flask, port: int) -> Iterator[None]:
    """Serve a relying party on 127.0.0.1:`port` for the block."""
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        thread.join(timeout=10)


def _posting_page(action: str, fields: dict[str, str], button: str) -> str:
    """An app's page holding a form that POSTs `fields` to `action` when its button is clicked."""
    inputs = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in fields.items()
    )
    return (
        "<!doctype html><title>Photo App</title>"
        f'<form method="post" action="{escape(action)}">'
        f'{inputs}<button type="submit">{escape(button)}</button></form>'
    )


def _web_app(name: str, issuer: str, client: dict[str, Any]) -> tuple[Flask, OAuth]:
    """A Flask web app with Authlib's client for us, configured from our discovery document."""
    rp = Flask(name)
    rp.secret_key = f"{name}-test-secret"
    oauth = OAuth(rp)
    oauth.register(
        "tokenserver",
        client_id=client["client_id"],
        client_secret=client["client_secret"],
        server_metadata_url=f"{issuer}/.well-known/openid-configuration",
        client_kwargs={"scope": SCOPE, "code_challenge_method": "S256"},
    )
    return rp, oauth


def _relying_party(issuer: str, client: dict[str, Any], port: int) -> tuple[Flask, dict[str, Any]]:
    """A web app that signs its users in with us, knowing only our discovery document."""
    rp, oauth = _web_app("relying_party", issuer, client)
    seen: dict[str, Any] = {}

    @rp.get("/")
    def start() -> Any:
        redirect_uri = url_for("callback", _external=True)
        return oauth.tokenserver.authorize_redirect(redirect_uri)

    @rp.get("/callback")
    def callback() -> Any:
        token = oauth.tokenserver.authorize_access_token()  # verifies the id_token and nonce
        seen["token"] = token
        seen["userinfo"] = dict(oauth.tokenserver.userinfo(token=token))
        return jsonify(signed_in_as=token["userinfo"]["preferred_username"])

    return rp, seen


@pytest.fixture
def rp_port() -> Iterator[int]:
    """A loopback port kept for the test's web app (its redirect URI names it)."""
    with Port() as port:
        yield port.number


def test_a_web_app_signs_a_user_in_through_our_pages(
    server: LiveServer, browser: WebDriver, rp_port: int, tmp_path: Path
) -> None:
    _sign_up(server)
    callback = f"http://127.0.0.1:{rp_port}/callback"
    client = _register(server, "Photo App", "--redirect-uri", callback)
    rp, seen = _relying_party(server.url, client, rp_port)
    with _serving(rp, rp_port):
        browser.get(f"http://127.0.0.1:{rp_port}/")
        _sign_in(browser, tmp_path)
        _wait_for(browser, "/consent")
        assert "Photo App" in browser.page_source
        assert "See your username" in browser.page_source
        browser.save_screenshot(str(tmp_path / "consent.png"))
        browser.find_element(By.CSS_SELECTOR, "button[name=decision][value=allow]").click()
        _wait_for(browser, "/callback")
        WebDriverWait(browser, 20).until(lambda b: "signed_in_as" in b.page_source)
        assert '"signed_in_as":"alice"' in browser.page_source.replace(" ", "")
    token = seen["token"]
    claims = token["userinfo"]  # Authlib parsed and verified the id_token against our JWKS
    assert claims["iss"] == server.url and claims["aud"] == client["client_id"]
    assert claims["preferred_username"] == "alice" and claims["sid"] and claims["auth_time"]
    assert seen["userinfo"] == {"sub": claims["sub"], "preferred_username": "alice"}
    assert token["scope"] == SCOPE and token["refresh_token"]
    # Our own account page, in the same browser: the app is listed as signed in.
    browser.get(f"{server.url}/account")
    assert "Photo App" in browser.page_source and "this browser" in browser.page_source
    browser.save_screenshot(str(tmp_path / "account.png"))


def _pushing_party(issuer: str, client: dict[str, Any]) -> tuple[Flask, dict[str, Any]]:
    """A web app on Authlib's client that pushes its authorization request first (RFC 9126)."""
    rp, oauth = _web_app("pushing_party", issuer, client)
    seen: dict[str, Any] = {}

    @rp.get("/")
    def start() -> Any:
        app = oauth.tokenserver
        redirect_uri = url_for("callback", _external=True)
        made = app.create_authorization_url(redirect_uri)  # state, nonce, PKCE verifier
        app.save_authorize_data(redirect_uri=redirect_uri, **made)
        metadata = app.load_server_metadata()
        pushed = requests.post(
            metadata["pushed_authorization_request_endpoint"],
            data=dict(parse_qsl(urlsplit(made["url"]).query)),
            auth=(client["client_id"], client["client_secret"]),
            timeout=10,
        )
        assert pushed.status_code == 201, pushed.text
        query = {"client_id": client["client_id"], "request_uri": pushed.json()["request_uri"]}
        seen["authorize"] = f"{metadata['authorization_endpoint']}?{urlencode(query)}"
        return redirect(seen["authorize"])

    @rp.get("/callback")
    def callback() -> Any:
        token = oauth.tokenserver.authorize_access_token()  # state, nonce, id_token checked
        seen["token"] = token
        return jsonify(signed_in_as=token["userinfo"]["preferred_username"])

    return rp, seen


def test_a_web_app_pushes_its_request_and_the_browser_carries_only_a_reference(
    server: LiveServer, browser: WebDriver, rp_port: int
) -> None:
    _sign_up(server)
    callback = f"http://127.0.0.1:{rp_port}/callback"
    client = _register(server, "Photo App", "--redirect-uri", callback, "--first-party")
    rp, seen = _pushing_party(server.url, client)
    with _serving(rp, rp_port):
        browser.get(f"http://127.0.0.1:{rp_port}/")
        _wait_for(browser, "/login")
        # What the browser was given: no scope, state, nonce or PKCE challenge in sight.
        assert set(parse_qs(urlsplit(seen["authorize"]).query)) == {"client_id", "request_uri"}
        assert "code_challenge" not in browser.current_url and "nonce" not in browser.current_url
        _sign_in(browser)
        _wait_for(browser, "/callback")
        WebDriverWait(browser, 20).until(lambda b: "signed_in_as" in b.page_source)
    token = seen["token"]
    assert token["userinfo"]["preferred_username"] == "alice" and token["scope"] == SCOPE
    # The pushed request has been answered: its reference leads nowhere now.
    again = requests.get(seen["authorize"], allow_redirects=False, timeout=10)
    assert again.status_code == 400 and "Location" not in again.headers


def _posting_app(issuer: str, client: dict[str, Any], site: str) -> tuple[Flask, dict[str, Any]]:
    """A web app whose page holds its authorization request as a form that POSTs to us."""
    rp = Flask("posting_relying_party")
    verifiers: dict[str, str] = {}
    arrived: list[dict[str, str]] = []

    @rp.get("/")
    def start() -> Any:
        verifier, challenge = pkce()
        state = secrets.token_urlsafe(16)
        verifiers[state] = verifier
        fields = {
            "response_type": "code",
            "client_id": client["client_id"],
            "redirect_uri": f"{site}/callback",
            "scope": SCOPE,
            "state": state,
            "nonce": f"nonce-{state}",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        return _posting_page(f"{issuer}/oauth/authorize", fields, "Sign in")

    @rp.get("/callback")
    def callback() -> Any:
        arrived.append(request.args.to_dict())
        return "Back at the app."

    @rp.get("/logout")
    def logout() -> Any:
        fields = {
            "id_token_hint": seen["id_token"],
            "post_logout_redirect_uri": f"{site}/signed-out",
            "state": request.args.get("state", "bye"),
        }
        return _posting_page(f"{issuer}/oauth/logout", fields, "Sign out")

    @rp.get("/signed-out")
    def signed_out() -> Any:
        seen["signed_out"] = request.args.to_dict()
        return "Signed out of the app."

    seen: dict[str, Any] = {"verifiers": verifiers, "arrived": arrived}
    return rp, seen


def test_a_web_app_posts_its_authorization_and_logout_requests_from_forms(
    server: LiveServer, browser: WebDriver, rp_port: int, tmp_path: Path
) -> None:
    _sign_up(server)
    # localhost is another site than our 127.0.0.1: the POST is cross-site, as from a real app,
    # so the browser sends it without our SameSite=Lax session cookie.
    site = f"http://localhost:{rp_port}"
    client = _register(
        server,
        "Photo App",
        "--redirect-uri",
        f"{site}/callback",
        "--redirect-uri",
        f"{site}/signed-out",
    )
    rp, seen = _posting_app(server.url, client, site)
    with _serving(rp, rp_port):
        browser.get(f"{site}/")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        _sign_in(browser)
        _wait_for(browser, "/consent")
        browser.find_element(By.CSS_SELECTOR, "button[name=decision][value=allow]").click()
        WebDriverWait(browser, 20).until(lambda b: len(seen["arrived"]) == 1)
        # Signed in and allowed already: the next POST comes straight back with a code (a
        # sign-in form here would never reach the callback).
        browser.get(f"{site}/")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(browser, 20).until(lambda b: len(seen["arrived"]) == 2)
        for query in seen["arrived"]:
            seen["id_token"] = _exchange(server, client, site, seen["verifiers"], query)
        # The app signs the user out with a form POSTed from its site: it must really happen,
        # on the server too, not only by the browser forgetting its cookie.
        browser.get(f"{server.url}/account")
        cookie = browser.get_cookie("tokenserver_session")
        assert cookie is not None
        browser.get(f"{site}/logout")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(browser, 20).until(lambda b: "signed_out" in seen)
        assert seen["signed_out"] == {"state": "bye"}
    browser.get(f"{server.url}/account")
    _wait_for(browser, "/login")
    kept = requests.get(
        f"{server.url}/account",
        cookies={"tokenserver_session": cookie["value"]},
        allow_redirects=False,
        timeout=10,
    )
    assert kept.status_code == 303 and kept.headers["Location"].startswith("/login")
    # Bob signs in on this browser, and a page of the app on our own site (127.0.0.1, as our
    # pages are) POSTs its logout form naming alice's ID token: our cookie comes with it, so
    # bob is asked first, and his answer still takes him back to the app with its state.
    _sign_up(server, "bob")
    browser.get(f"{server.url}/account")
    _sign_in(browser, username="bob")
    WebDriverWait(browser, 20).until(lambda b: "/login" not in b.current_url)
    del seen["signed_out"]
    with _serving(rp, rp_port):
        browser.get(f"http://127.0.0.1:{rp_port}/logout?state=again")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(browser, 20).until(lambda b: "Sign out?" in b.page_source)
        assert "You are signed in as <strong>bob</strong>" in browser.page_source
        browser.save_screenshot(str(tmp_path / "logout.png"))
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(browser, 20).until(lambda b: "signed_out" in seen)
        assert seen["signed_out"] == {"state": "again"}
    browser.get(f"{server.url}/account")
    _wait_for(browser, "/login")


def _exchange(
    server: LiveServer,
    client: dict[str, Any],
    site: str,
    verifiers: dict[str, str],
    query: dict[str, str],
) -> str:
    """The app's exchange of the code its callback got; the id_token, checked."""
    assert query["iss"] == server.url and "error" not in query
    exchanged = requests.post(
        f"{server.url}/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": f"{site}/callback",
            "code_verifier": verifiers[query["state"]],
        },
        auth=(client["client_id"], client["client_secret"]),
        timeout=10,
    )
    assert exchanged.status_code == 200, exchanged.text
    id_token: str = exchanged.json()["id_token"]
    claims = claims_of(id_token)
    assert claims["nonce"] == f"nonce-{query['state']}" and claims["aud"] == client["client_id"]
    return id_token


class _Loopback(BaseHTTPRequestHandler):
    """A native app's one-shot loopback listener (RFC 8252 §7.3)."""

    received: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).received.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"You can close this window.")

    def log_message(self, *args: Any) -> None:
        pass


def test_a_native_app_signs_in_with_pkce_on_a_loopback_port(
    server: LiveServer, browser: WebDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # loopback http, RFC 8252 §8.3
    _sign_up(server)
    client = _register(
        server,
        "Desktop App",
        "--public",
        "--first-party",
        "--redirect-uri",
        "http://127.0.0.1/callback",
    )
    listener = HTTPServer(("127.0.0.1", 0), _Loopback)
    _Loopback.received = []
    port = listener.server_address[1]
    thread = threading.Thread(target=listener.handle_request, daemon=True)
    thread.start()
    app = OAuth2Session(
        client["client_id"],
        redirect_uri=f"http://127.0.0.1:{port}/callback",
        scope=SCOPE.split(),
        pkce="S256",
    )
    url, _state = app.authorization_url(f"{server.url}/oauth/authorize")
    browser.get(url)
    _sign_in(browser)
    _wait_for(browser, f"127.0.0.1:{port}/callback")
    thread.join(timeout=20)
    assert _Loopback.received, "the browser never reached the loopback listener"
    token = app.fetch_token(
        f"{server.url}/oauth/token",
        authorization_response=f"http://127.0.0.1:{port}{_Loopback.received[0]}",
        include_client_id=True,
    )
    assert token["token_type"] == "Bearer" and token["id_token"]
    info = app.get(f"{server.url}/oauth/userinfo", timeout=10)
    assert info.status_code == 200 and info.json()["preferred_username"] == "alice"
    # The same code again: refused, and the tokens it issued are revoked.
    again = requests.post(
        f"{server.url}/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": dict(
                p.split("=", 1) for p in _Loopback.received[0].split("?", 1)[1].split("&")
            )["code"],
            "redirect_uri": f"http://127.0.0.1:{port}/callback",
            "code_verifier": app._code_verifier,
            "client_id": client["client_id"],
        },
        timeout=10,
    )
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert app.get(f"{server.url}/oauth/userinfo", timeout=10).status_code == 401


SPA_PAGE = Path(__file__).with_name("spa_page.html")


def _single_page_app(config: dict[str, str]) -> Flask:
    """A static site serving one page whose script signs in and calls us (tests/spa_page.html)."""
    page = SPA_PAGE.read_text().replace("__CONFIG__", json.dumps(config).replace("</", "<\\/"))
    site = Flask("single_page_app")

    @site.get("/")
    @site.get("/callback")
    @site.get("/probe")
    def serve() -> Any:
        return page

    return site


def _shown(browser: WebDriver) -> dict[str, Any]:
    """What the page's script wrote once it finished."""
    WebDriverWait(browser, 20).until(
        lambda b: b.find_element(By.ID, "result").text not in ("", "working")
    )
    shown: dict[str, Any] = json.loads(browser.find_element(By.ID, "result").text)
    return shown


def test_a_single_page_app_signs_in_and_calls_our_api_from_its_own_origin(
    server: LiveServer, browser: WebDriver, rp_port: int
) -> None:
    _sign_up(server)
    site = f"http://127.0.0.1:{rp_port}"  # another origin than ours: another port
    client = _register(server, "Notes", "--public", "--redirect-uri", f"{site}/callback")
    scope = "openid profile junk:write"
    config = {"issuer": server.url, "client_id": client["client_id"], "scope": scope}
    with _serving(_single_page_app(config), rp_port):
        browser.get(f"{site}/")
        _sign_in(browser)
        _wait_for(browser, "/consent")
        browser.find_element(By.CSS_SELECTOR, "button[name=decision][value=allow]").click()
        _wait_for(browser, f"{site}/callback")
        shown = _shown(browser)
    assert "error" not in shown and "token" not in shown, shown
    assert shown["token_type"] == "Bearer" and shown["scope"] == scope
    assert shown["userinfo"]["preferred_username"] == "alice"
    assert shown["created"] == 201 and "/junk/" in shown["location"]
    assert shown["again"]["error"] == "invalid_grant"  # the page reads our errors too


def _logins(app: Flask) -> int:
    """How many logins (refresh-token families) the server has issued."""
    with app.app_context():
        return int(db.session.scalar(select(func.count()).select_from(TokenFamily)))


def test_a_page_on_an_origin_no_client_registered_cannot_read_our_answers(
    server: LiveServer, browser: WebDriver, rp_port: int, app: Flask
) -> None:
    _sign_up(server)
    _register(server, "Notes", "--public", "--redirect-uri", f"http://127.0.0.1:{rp_port}/cb")
    app_client = _register(server, "CLI", "--grant", "password")
    issued = requests.post(
        f"{server.url}/oauth/token",
        data={"grant_type": "password", "username": "alice", "password": PASSWORD},
        auth=(app_client["client_id"], app_client["client_secret"]),
        timeout=10,
    )
    sign_in = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    sign_in |= {"client_id": app_client["client_id"], "client_secret": app_client["client_secret"]}
    config = {"issuer": server.url, "access_token": issued.json()["access_token"]}
    with _serving(_single_page_app({**config, "sign_in": sign_in}), rp_port):
        # The registered origin first, so what is refused below is refused for its origin.
        browser.get(f"http://127.0.0.1:{rp_port}/probe")
        allowed = _shown(browser)
        logins = _logins(app)
        browser.get(f"http://localhost:{rp_port}/probe")
        refused = _shown(browser)
    assert allowed["token"]["status"] == 401
    assert allowed["token"]["body"]["error"] == "invalid_client"
    assert allowed["me"]["body"]["username"] == "alice"
    assert allowed["signin"]["status"] == 200 and logins == 2
    assert refused["issuer"] == server.url  # metadata is public
    assert "Failed to fetch" in refused["token"]["blocked"]
    assert "Failed to fetch" in refused["me"]["blocked"]
    # Its form post was sent (no preflight), and refused before the password was even checked.
    assert "Failed to fetch" in refused["signin"]["blocked"] and _logins(app) == logins


DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class _Poller:
    """A device polling the token endpoint as RFC 8628 §3.4-3.5 says, on a thread of its own."""

    def __init__(self, token_url: str, client_id: str, codes: dict[str, Any]) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.codes = codes
        self.errors: list[str] = []
        self.tokens: dict[str, Any] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        interval = self.codes["interval"]
        data = {
            "grant_type": DEVICE_GRANT,
            "device_code": self.codes["device_code"],
            "client_id": self.client_id,
        }
        while not self.stop.is_set():
            response = requests.post(self.token_url, data=data, timeout=10)
            if response.status_code == 200:
                self.tokens = response.json()
                return
            error = response.json()["error"]
            self.errors.append(error)
            if error == "slow_down":
                interval += 5
            elif error != "authorization_pending":
                return
            self.stop.wait(interval)  # the protocol's own pause between polls


def test_a_device_signs_in_while_its_user_allows_it_in_a_browser(
    server: LiveServer, browser: WebDriver, tmp_path: Path
) -> None:
    _sign_up(server)
    tv = _register(
        server,
        "Living Room TV",
        "--public",
        "--grant",
        DEVICE_GRANT,
        "--grant",
        "refresh_token",
        "--scope",
        SCOPE,
    )
    started = requests.post(
        f"{server.url}/oauth/device_authorization", data={"client_id": tv["client_id"]}, timeout=10
    )
    assert started.status_code == 200
    codes = started.json()
    poller = _Poller(f"{server.url}/oauth/token", tv["client_id"], codes)
    poller.thread.start()
    try:
        # The user opens verification_uri_complete (a QR code, say), signs in, confirms the code.
        browser.get(codes["verification_uri_complete"])
        _sign_in(browser)
        _wait_for(browser, "/device")
        field = browser.find_element(By.NAME, "user_code")
        assert field.get_attribute("value") == codes["user_code"]
        browser.save_screenshot(str(tmp_path / "device-code.png"))
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        allow = WebDriverWait(browser, 20).until(
            expected_conditions.element_to_be_clickable(
                (By.CSS_SELECTOR, "button[name=decision][value=allow]")
            )
        )
        assert "Living Room TV" in browser.page_source
        assert "Read your junk items" in browser.page_source
        browser.save_screenshot(str(tmp_path / "device-allow.png"))
        allow.click()
        WebDriverWait(browser, 20).until(lambda b: "Device connected" in b.page_source)
        browser.save_screenshot(str(tmp_path / "device-done.png"))
        poller.thread.join(timeout=codes["interval"] * 3 + 10)
    finally:
        poller.stop.set()
        poller.thread.join(timeout=15)
    assert poller.errors and set(poller.errors) == {"authorization_pending"}
    tokens = poller.tokens
    assert tokens["token_type"] == "Bearer" and tokens["refresh_token"] and tokens["id_token"]
    me = requests.get(
        f"{server.url}/users/me",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
        timeout=10,
    )
    assert me.status_code == 200 and me.json()["username"] == "alice"
    # The code was spent: the device cannot be handed a second set of tokens.
    again = requests.post(
        f"{server.url}/oauth/token",
        data={
            "grant_type": DEVICE_GRANT,
            "device_code": codes["device_code"],
            "client_id": tv["client_id"],
        },
        timeout=10,
    )
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_a_device_form_sent_again_after_back_shows_the_answer_given(
    server: LiveServer, browser: WebDriver, tmp_path: Path
) -> None:
    _sign_up(server)
    tv = _register(server, "Living Room TV", "--public", "--grant", DEVICE_GRANT)
    codes = requests.post(
        f"{server.url}/oauth/device_authorization", data={"client_id": tv["client_id"]}, timeout=10
    ).json()
    browser.get(codes["verification_uri_complete"])
    _sign_in(browser)
    _wait_for(browser, "/device")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 20).until(
        expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, "button[value=allow]"))
    ).click()
    WebDriverWait(browser, 20).until(lambda b: "Device connected" in b.title)
    # Back to the question, a POST's answer no cache kept: reloading sends the code's form again.
    browser.back()
    browser.refresh()
    WebDriverWait(browser, 20).until(lambda b: "Device connected" in b.title)
    browser.save_screenshot(str(tmp_path / "device-sent-again.png"))
    assert "not valid" not in browser.page_source


def _fits_the_screen(browser: WebDriver) -> bool:
    width = "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    scrolled, shown = browser.execute_script(width)
    return bool(scrolled <= shown)


def test_an_apps_longest_name_wraps_inside_a_phones_screen(
    server: LiveServer, browser: WebDriver, rp_port: int, tmp_path: Path
) -> None:
    _sign_up(server)
    callback = f"http://127.0.0.1:{rp_port}/callback"  # nothing listens: the code is in the URL
    client = _register(server, "W" * 200, "--redirect-uri", callback)  # 200: the longest name
    verifier, challenge = pkce()
    query = {
        "response_type": "code",
        "client_id": client["client_id"],
        "redirect_uri": callback,
        "scope": "openid",
        "state": "s",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    browser.set_window_size(400, 900)
    browser.get(f"{server.url}/oauth/authorize?{urlencode(query)}")
    _sign_in(browser)
    _wait_for(browser, "/consent")
    browser.save_screenshot(str(tmp_path / "long-name-consent.png"))
    assert _fits_the_screen(browser)
    browser.find_element(By.CSS_SELECTOR, "button[name=decision][value=allow]").click()
    _wait_for(browser, "code=")
    code = parse_qs(urlsplit(browser.current_url).query)["code"][0]
    exchange = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": callback,
        "code_verifier": verifier,
    }
    auth = (client["client_id"], client["client_secret"])
    issued = requests.post(f"{server.url}/oauth/token", data=exchange, auth=auth, timeout=10)
    assert issued.status_code == 200, issued.text
    browser.get(f"{server.url}/account")  # the app, now signed in, is listed by its name
    assert "W" * 20 in browser.page_source
    browser.save_screenshot(str(tmp_path / "long-name-account.png"))
    assert _fits_the_screen(browser)


def _rgb(css_colour: str, under: str = "rgb(255, 255, 255)") -> list[float]:
    """A computed `rgb(...)` / `rgba(...)` colour as seen over the opaque colour `under`."""
    *rgb, alpha = [*map(float, re.findall(r"[\d.]+", css_colour)), 1.0][:4]
    behind = _rgb(under) if alpha < 1 else rgb
    return [alpha * c + (1 - alpha) * u for c, u in zip(rgb, behind, strict=True)]


def _luminance(rgb: list[float]) -> float:
    """WCAG relative luminance."""
    linear = [
        v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in (c / 255 for c in rgb)
    ]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(colour: str, background: str) -> float:
    """WCAG contrast ratio of a (perhaps translucent) colour over an opaque background."""
    light, dark = sorted((_luminance(_rgb(colour, background)), _luminance(_rgb(background))))[::-1]
    return (light + 0.05) / (dark + 0.05)


_FOCUSED = """
const focused = document.activeElement, style = getComputedStyle(focused);
return [focused.id || focused.textContent.trim(), style.outlineStyle,
        parseFloat(style.outlineWidth), parseFloat(style.outlineOffset), style.outlineColor,
        style.borderTopColor, getComputedStyle(document.querySelector('.card')).backgroundColor];
"""


def test_fields_and_the_keyboard_focus_stand_out_from_the_page(
    server: LiveServer, browser: WebDriver
) -> None:
    # WCAG 1.4.11: a field's edge and the focus ring need 3:1 against what is around them.
    browser.get(f"{server.url}/login")
    card = browser.execute_script(_FOCUSED)[-1]
    field = browser.find_element(By.ID, "password").value_of_css_property("border-top-color")
    assert _contrast(field, card) >= 3  # not focused yet: its own edge
    for expected in ("password", "Sign in"):  # as a keyboard goes, from the username field
        browser.switch_to.active_element.send_keys(Keys.TAB)
        name, style, width, offset, ring, border, card = browser.execute_script(_FOCUSED)
        assert name == expected
        assert style == "solid" and width >= 2 and _contrast(ring, card) >= 3, (name, ring)
        assert offset > 0  # apart from the control: it shows on the blue button too
    assert _contrast(border, card) >= 3


def test_error_states_fit_a_320_pixel_screen(
    server: LiveServer, browser: WebDriver, tmp_path: Path
) -> None:
    # WCAG 1.4.10: 320 CSS pixels wide (a 1280-pixel window at 400% zoom), no sideways scrolling.
    _sign_up(server)
    browser.set_window_size(320, 800)
    browser.get(f"{server.url}/login")
    browser.find_element(By.NAME, "username").send_keys("alice")
    browser.find_element(By.NAME, "password").send_keys("wrong-password")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 20).until(lambda b: "do not match" in b.page_source)
    browser.save_screenshot(str(tmp_path / "login-wrong-320.png"))
    assert _fits_the_screen(browser)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait_for(browser, "/account")
    browser.find_element(By.ID, "current_password").send_keys(PASSWORD)
    browser.find_element(By.ID, "new_password").send_keys("a-Longer-passphrase-7")
    browser.find_element(By.ID, "confirm_password").send_keys("a-Longer-passphrase-8")
    browser.find_element(By.XPATH, "//button[normalize-space()='Change password']").click()
    WebDriverWait(browser, 20).until(lambda b: "do not match" in b.page_source)
    browser.save_screenshot(str(tmp_path / "account-mismatch-320.png"))
    assert _fits_the_screen(browser)
    # The refused field has the focus, so it (and the message above it) is scrolled into view.
    assert browser.switch_to.active_element.get_attribute("id") == "confirm_password"
    assert browser.find_element(By.ID, "password-error").is_displayed()
    browser.get(f"{server.url}/device")
    browser.find_element(By.NAME, "user_code").send_keys("BCDF-GHJK")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 20).until(lambda b: "not valid" in b.page_source)
    browser.save_screenshot(str(tmp_path / "device-wrong-320.png"))
    assert _fits_the_screen(browser)
