"""Protected resource metadata (RFC 9728): how a client that meets our 401 finds its way."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask.testing import FlaskClient

from tokenserver.models import DEVICE_CODE
from tokenserver.oauth import dpop

from .conftest import Actions, RegisteredClient
from .helpers import ISSUER, RESOURCE_METADATA, Flow, claims_of, pkce

PHOTOS = "https://photos.example/api"
_PARAMETER = re.compile(r'resource_metadata="([^"]*)"')


def _named_metadata(response: Any) -> list[str]:
    """The resource_metadata URL of each of a response's challenges (None where missing)."""
    challenges = response.headers.getlist("WWW-Authenticate")
    assert challenges, response.headers
    found = [_PARAMETER.search(challenge) for challenge in challenges]
    return [match.group(1) if match else None for match in found]


def _get(client: FlaskClient, url: str) -> Any:
    """GET an absolute URL of ours through the test client."""
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == ISSUER, url
    return client.get(parts.path)


def test_the_metadata_names_us_our_scopes_and_dpop(client: FlaskClient) -> None:
    response = client.get("/.well-known/oauth-protected-resource")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "public, max-age=300"
    metadata = response.json
    assert metadata["resource"] == ISSUER  # the default audience
    assert metadata["authorization_servers"] == [ISSUER]
    assert metadata["scopes_supported"] == ["junk:read", "junk:write"]
    assert metadata["bearer_methods_supported"] == ["header"]
    assert metadata["dpop_signing_alg_values_supported"] == list(dpop.ALGORITHMS)
    assert metadata["dpop_bound_access_tokens_required"] is False


def test_any_page_may_read_it(client: FlaskClient) -> None:
    response = client.get(
        "/.well-known/oauth-protected-resource", headers={"Origin": "https://agent.example"}
    )
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_the_authorization_server_metadata_lists_it(client: FlaskClient) -> None:
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        assert client.get(path).json["protected_resources"] == [ISSUER]


@pytest.mark.parametrize("path", ["/junk", "/users/me", "/oauth/userinfo"])
def test_every_bearer_challenge_names_the_metadata(
    client: FlaskClient, actions: Actions, path: str
) -> None:
    none = client.get(path)
    forged = client.get(path, headers=actions.bearer("not.a.token"))
    dpop_forged = client.get(path, headers={"Authorization": "DPoP not.a.token"})
    for response in (none, forged, dpop_forged):
        assert response.status_code == 401
        assert _named_metadata(response) == [RESOURCE_METADATA] * len(
            response.headers.getlist("WWW-Authenticate")
        )
    assert len(_named_metadata(none)) == 2  # Bearer and DPoP (RFC 9449 §7.1)
    assert "error=" not in none.headers["WWW-Authenticate"]  # RFC 6750 §3.1
    # Bearer first: MCP clients read resource_metadata only from a header that starts with it
    # (a client sees the two challenges joined into one header, in this order).
    assert none.headers.getlist("WWW-Authenticate")[0].startswith("Bearer ")


def test_the_forbidden_answers_name_it_too(actions: Actions) -> None:
    actions.user("alice")
    app = actions.oauth_client()
    reader = actions.token(app, scope="junk:read").json["access_token"]
    cannot_write = actions.client.post("/junk", json={"name": "x"}, headers=actions.bearer(reader))
    assert cannot_write.status_code == 403
    assert _named_metadata(cannot_write) == [RESOURCE_METADATA]
    machine = actions.client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=app.auth
    ).json["access_token"]
    no_user = actions.client.get("/users/me", headers=actions.bearer(machine))
    assert no_user.status_code == 403
    assert _named_metadata(no_user) == [RESOURCE_METADATA]


def test_the_registration_endpoint_is_not_the_resource(client: FlaskClient) -> None:
    response = client.post("/oauth/register", json={"redirect_uris": ["https://a.example/cb"]})
    assert response.status_code == 401
    assert _named_metadata(response) == [None]


def test_an_agent_follows_the_challenge_to_a_token(
    client: FlaskClient, flow: Flow, actions: Actions
) -> None:
    """What an MCP client does: 401, resource metadata, server metadata, then a PKCE sign-in
    naming the resource (RFC 8707) at both ends, and the call again."""
    refused = client.get("/junk")
    metadata = _get(client, _named_metadata(refused)[0]).json
    # RFC 9728 §3.3 (as MCP clients apply it): the resource is what the client called.
    assert f"{ISSUER}/junk".startswith(metadata["resource"])
    server = _get(
        client, metadata["authorization_servers"][0] + "/.well-known/oauth-authorization-server"
    )
    assert server.json["issuer"] == metadata["authorization_servers"][0]
    assert metadata["resource"] in server.json["protected_resources"]

    client_id, _ = flow.register(public=True)
    verifier, challenge = pkce()
    flow.login()
    resource = metadata["resource"]
    code = flow.code_for(client_id, challenge, resource=resource, scope="junk:read")
    tokens = flow.exchange(client_id, None, code, verifier, resource=resource)
    assert tokens.status_code == 200, tokens.json
    assert claims_of(tokens.json["access_token"])["aud"] == resource
    answered = client.get("/junk", headers=actions.bearer(tokens.json["access_token"]))
    assert answered.status_code == 200

    refreshed = client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens.json["refresh_token"],
            "client_id": client_id,
            "resource": resource,
        },
    )
    assert refreshed.status_code == 200, refreshed.json
    assert claims_of(refreshed.json["access_token"])["aud"] == resource


@pytest.mark.parametrize(
    "spelling", [f"{ISSUER}/", "HTTP://LOCALHOST:8000", "http://localhost:8000"]
)
def test_our_audience_as_a_url_parser_respells_it_is_our_audience(
    client: FlaskClient, flow: Flow, actions: Actions, spelling: str
) -> None:
    """RFC 9110 §4.2.3: `http://host` and `http://host/` are one resource. An MCP client whose
    URL parser reads our metadata's `resource` back with the slash (the Python SDK before 2.0)
    still gets a token our own routes accept, at every step of its sign-in."""
    client_id, _ = flow.register(public=True)
    verifier, challenge = pkce()
    flow.login()
    code = flow.code_for(client_id, challenge, resource=spelling, scope="junk:read")
    tokens = flow.exchange(client_id, None, code, verifier, resource=spelling)
    assert tokens.status_code == 200, tokens.json
    assert claims_of(tokens.json["access_token"])["aud"] == ISSUER
    answered = client.get("/junk", headers=actions.bearer(tokens.json["access_token"]))
    assert answered.status_code == 200, answered.json
    refresh = {"grant_type": "refresh_token", "client_id": client_id, "resource": spelling}
    refreshed = client.post(
        "/oauth/token", data={**refresh, "refresh_token": tokens.json["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.json
    assert claims_of(refreshed.json["access_token"])["aud"] == ISSUER


@pytest.mark.parametrize(
    "resource",
    [
        "http://localhost:8000/junk",
        "http://localhost:8001/",
        "https://localhost:8000/",
        "http://alice@localhost:8000/",
        "http://localhost:8000/?x=1",
        "http://localhost:8000/?",
    ],
)
def test_another_resource_on_our_host_is_not_our_audience(actions: Actions, resource: str) -> None:
    actions.user("alice")
    plain = actions.oauth_client("plain")
    refused = actions.token(plain, resource=resource)
    assert (refused.status_code, refused.json["error"]) == (400, "invalid_target")


@pytest.mark.parametrize(
    ("audience", "spelling"),
    [
        ("https://api.example/", "https://api.example"),
        ("https://api.example", "https://API.example:443/"),
    ],
)
def test_a_configured_audience_matches_its_other_spellings(
    make_app: Any, audience: str, spelling: str
) -> None:
    app = make_app(audience=audience)
    actions = Actions(app, app.test_client())
    actions.user("alice")
    tokens = actions.token(actions.oauth_client(), resource=spelling)
    assert tokens.status_code == 200, tokens.json
    assert claims_of(tokens.json["access_token"])["aud"] == audience


def test_naming_our_own_audience_is_no_wider_than_naming_none(actions: Actions) -> None:
    actions.user("alice")
    plain = actions.oauth_client("plain")
    named = actions.token(plain, resource=ISSUER)
    assert named.status_code == 200, named.json
    assert claims_of(named.json["access_token"])["aud"] == ISSUER
    # A login that named no resource may name ours when it refreshes...
    unnamed = actions.token(plain).json["refresh_token"]
    data = {"grant_type": "refresh_token", "refresh_token": unnamed, "resource": ISSUER}
    refreshed = actions.client.post("/oauth/token", data=data, auth=plain.auth)
    assert refreshed.status_code == 200, refreshed.json
    assert claims_of(refreshed.json["access_token"])["aud"] == ISSUER
    # ...but not another service's, and a client may not name a service it is not registered for.
    data["refresh_token"] = refreshed.json["refresh_token"]
    wider = actions.client.post("/oauth/token", data={**data, "resource": PHOTOS}, auth=plain.auth)
    assert (wider.status_code, wider.json["error"]) == (400, "invalid_target")


def test_a_login_for_another_service_cannot_refresh_into_ours(actions: Actions) -> None:
    actions.user("alice")
    photos: RegisteredClient = actions.oauth_client("photos", audiences=(PHOTOS,))
    login = actions.token(photos, resource=PHOTOS)
    assert claims_of(login.json["access_token"])["aud"] == PHOTOS
    data = {"grant_type": "refresh_token", "refresh_token": login.json["refresh_token"]}
    wider = actions.client.post("/oauth/token", data={**data, "resource": ISSUER}, auth=photos.auth)
    assert (wider.status_code, wider.json["error"]) == (400, "invalid_target")


def test_a_device_grant_may_name_our_audience(actions: Actions) -> None:
    actions.user("alice")
    device = actions.oauth_client("tv", public=True, grants=(DEVICE_CODE,))
    started = actions.client.post(
        "/oauth/device_authorization", data={"client_id": device.client_id, "resource": ISSUER}
    )
    assert started.status_code == 200, started.json
    elsewhere = actions.client.post(
        "/oauth/device_authorization", data={"client_id": device.client_id, "resource": PHOTOS}
    )
    assert (elsewhere.status_code, elsewhere.json["error"]) == (400, "invalid_target")


@pytest.mark.parametrize(
    ("audience", "path"),
    [
        ("http://localhost:8000/api", "/.well-known/oauth-protected-resource/api"),
        ("http://localhost:8000/api/v1/", "/.well-known/oauth-protected-resource/api/v1/"),
        ("https://api.example/", "/.well-known/oauth-protected-resource"),
    ],
)
def test_an_audience_with_a_path_publishes_at_its_own_path(
    make_app: Any, audience: str, path: str
) -> None:
    client = make_app(audience=audience).test_client()
    response = client.get(path)
    assert response.status_code == 200
    assert response.json["resource"] == audience
    host = "/".join(audience.split("/")[:3])
    assert _named_metadata(client.get("/junk"))[0] == host + path
    if path != "/.well-known/oauth-protected-resource":
        root = client.get("/.well-known/oauth-protected-resource")
        assert (root.status_code, root.json["error"]) == (404, "not_found")
    other = client.get("/.well-known/oauth-protected-resource/elsewhere")
    assert (other.status_code, other.json["error"]) == (404, "not_found")


def test_an_audience_that_is_no_url_publishes_nothing(make_app: Any) -> None:
    client = make_app(audience="urn:example:junk").test_client()
    response = client.get("/.well-known/oauth-protected-resource")
    assert (response.status_code, response.json["error"]) == (404, "not_found")
    assert _named_metadata(client.get("/junk")) == [None, None]
    assert "protected_resources" not in client.get("/.well-known/oauth-authorization-server").json


@pytest.mark.parametrize(
    ("audience", "url"),
    [
        ("https://例え.jp/api", "https://xn--r8jz45g.jp/.well-known/oauth-protected-resource/api"),
        ("http://localhost:8000/café", f"{RESOURCE_METADATA}/caf%C3%A9"),
        ("http://localhost:8000/a%20b", f"{RESOURCE_METADATA}/a%20b"),
        ("http://[::1]:8000/x", "http://[::1]:8000/.well-known/oauth-protected-resource/x"),
    ],
)
def test_the_challenge_names_the_metadata_in_ascii_where_it_is_served(
    make_app: Any, audience: str, url: str
) -> None:
    # A header is ASCII (gunicorn refuses anything else with a 500): an IDN host is named by its
    # A-label, a path percent-encoded; and the route answers at the path so encoded.
    client = make_app(audience=audience).test_client()
    challenges = client.get("/junk").headers.getlist("WWW-Authenticate")
    assert all(challenge.isascii() for challenge in challenges)
    assert _named_metadata(client.get("/junk")) == [url, url]
    served = client.get(urlsplit(url).path)
    assert served.status_code == 200, served.json
    assert served.json["resource"] == audience
