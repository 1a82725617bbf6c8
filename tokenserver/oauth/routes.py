"""/oauth/* and /.well-known/*: the token, introspection and revocation endpoints, metadata."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from werkzeug.datastructures import MultiDict

from ..config import current_settings
from ..errors import InvalidRequest, NotFound
from ..keys import current_keyring
from ..payloads import given, require_utf8_body
from ..resource_uris import RESOURCE_METADATA_PATH, resource_metadata_path
from ..store import replay
from .metadata import resource_metadata, server_metadata
from .parameters import AUTHORIZATION_PARAMETERS
from .server import current_server

bp = Blueprint("oauth", __name__)
# Every parameter our OAuth endpoints read (RFC 6749, 7009, 7662, 7523, 8628, 8693, 8707).
_PARAMETERS = frozenset(
    {
        "grant_type",
        "username",
        "password",
        "scope",
        "refresh_token",
        "client_id",
        "client_secret",
        "client_assertion",
        "client_assertion_type",
        "token",
        "token_type_hint",
        "code",
        "redirect_uri",
        "code_verifier",
        "device_code",
        "resource",
        "audience",
        "subject_token",
        "subject_token_type",
        "actor_token",
        "actor_token_type",
        "requested_token_type",
    }
)

# RFC 8707 §2: `resource` may be given several times, one per resource server; RFC 8693 §2.1
# lets a token exchange name several `audience`s the same way.
_REPEATABLE = frozenset({"resource", "audience"})
# Parameters read here or, at /oauth/par, as part of the authorization request pushed.
_ONCE = (_PARAMETERS | AUTHORIZATION_PARAMETERS) - _REPEATABLE
# Parameters that are secrets: a client's own credentials, a user's password, and the tokens,
# codes and verifiers that stand for a grant.
_SECRETS = frozenset(
    {
        "client_secret",
        "client_assertion",
        "password",
        "refresh_token",
        "code",
        "code_verifier",
        "device_code",
        "subject_token",
        "actor_token",
        "token",
    }
)


def _refuse_secrets_in_url() -> None:
    # RFC 6749 §2.3.1: credentials "MUST NOT be included in the request URI". Read from the body
    # only, a secret in the URL would be ignored and the request served, so the client would
    # never learn that its secret goes to access logs, proxies and browser histories.
    leaked = next(
        (name for name, value in request.args.items(multi=True) if value and name in _SECRETS),
        None,
    )
    if leaked is not None:
        raise InvalidRequest(f"'{leaked}' must be sent in the request body, never in the URL")


def _require_form(*, optional: bool = False) -> MultiDict[str, str]:
    """Refuse secrets in the URL, and a body that is not a UTF-8 form naming each parameter once;
    the parameters sent with a value.

    With `optional`, a request without a body passes (a Basic-authenticated client may send
    none to /oauth/device_authorization).
    """
    _refuse_secrets_in_url()
    if optional and not (request.mimetype or request.content_length):
        return MultiDict()
    # RFC 6749 §3.2, RFC 7009 §2.1, RFC 7662 §2.1: parameters come form-encoded.
    if request.mimetype != "application/x-www-form-urlencoded":
        raise InvalidRequest("the body must be application/x-www-form-urlencoded")
    require_utf8_body()
    # RFC 6749 §3.2: "Request and response parameters MUST NOT be included more than once",
    # but unrecognized ones MUST be ignored, so only a repeat of one we read is refused; one
    # sent without a value is as if left out, so it repeats nothing.
    form = given(request.form)
    repeated = next(
        (name for name, values in form.lists() if len(values) > 1 and name in _ONCE), None
    )
    if repeated is not None:
        raise InvalidRequest(f"'{repeated}' must not be given more than once")
    return form


@bp.post("/oauth/token")
def token() -> Response:
    """Issue tokens for every grant the server registers (models.GRANT_TYPES)."""
    if not _require_form().get("grant_type"):
        raise InvalidRequest("'grant_type' is required")
    server = current_server()
    try:
        with replay.deferred():  # single-use JWT ids spent with the tokens, in one commit
            response: Response = server.create_token_response()
    except replay.Replayed as exc:
        return server.replayed_response(exc.kind)
    return response


@bp.post("/oauth/device_authorization")
def device_authorization() -> Response:
    """RFC 8628 §3.1: a device code, and a user code for the user to type at /device."""
    _require_form(optional=True)
    response: Response = current_server().create_endpoint_response("device_authorization")
    return response


@bp.post("/oauth/par")
def pushed_authorization() -> Response:
    """RFC 9126: store an authorization request; its request_uri is what the browser carries."""
    _require_form()
    response: Response = current_server().create_endpoint_response("pushed_authorization")
    return response


@bp.post("/oauth/introspect")
@bp.post("/introspect")
def introspect() -> Response:
    """RFC 7662 token introspection for authenticated clients."""
    _require_form()
    response: Response = current_server().create_endpoint_response("introspection")
    return response


@bp.post("/oauth/revoke")
def revoke() -> Response:
    """RFC 7009 token revocation."""
    _require_form()
    response: Response = current_server().create_endpoint_response("revocation")
    return response


@bp.post("/oauth/register")
def register() -> Response:
    """RFC 7591 dynamic client registration, with an initial access token."""
    response: Response = current_server().create_endpoint_response("client_registration")
    return response


@bp.route("/oauth/register/<client_id>", methods=["GET", "PUT", "DELETE"])
def configure(client_id: str) -> Response:
    """RFC 7592: read, replace or delete a registration, with its registration access token."""
    response: Response = current_server().create_endpoint_response("client_configuration")
    return response


@bp.get("/.well-known/oauth-authorization-server")
def metadata() -> Response:
    """RFC 8414 authorization server metadata."""
    response = jsonify(server_metadata(current_settings().issuer))
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.get(RESOURCE_METADATA_PATH)
@bp.get(f"{RESOURCE_METADATA_PATH}/<path:resource_path>")
def protected_resource(resource_path: str = "") -> Response:
    """RFC 9728 metadata of the resource our bearer routes serve, at the path its URL gives."""
    settings = current_settings()
    if resource_metadata_path(settings.audience) != request.path:
        raise NotFound("No protected resource publishes its metadata here.")
    response = jsonify(resource_metadata(settings))
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.get("/.well-known/jwks.json")
def jwks() -> Response:
    """RFC 7517 public keys: the next one, the current one, and retired ones whose tokens live."""
    response = jsonify(current_keyring().jwks())
    # A new key is published at least this long plus our key cache before it signs (keys.py),
    # so a verifier that honours this max-age never meets a kid its cached set lacks.
    response.headers["Cache-Control"] = f"public, max-age={current_settings().jwks_max_age}"
    return response
