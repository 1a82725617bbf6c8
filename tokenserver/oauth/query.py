"""Authlib's request for the browser-facing endpoints, which read the query string too."""

from __future__ import annotations

from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Payload, FlaskOAuth2Request
from authlib.oauth2 import OAuth2Request
from flask import request as flask_request
from werkzeug.datastructures import MultiDict

from ..payloads import given


class QueryRequest(FlaskOAuth2Request):
    """Query (GET) or query and form (POST) parameters; TLS judged by the issuer's URL.

    /oauth/authorize and /oauth/logout take their parameters in the query (RFC 6749 §4.1.1);
    the token endpoint's request reads the body only. TLS usually ends at a proxy, so the
    https check looks at the issuer, as the token endpoint's does. Given `parameters`, the
    request reads those alone (an authorization request's query, or its POST body). Either
    way, a parameter sent without a value is as if left out (RFC 6749 §3.1).
    """

    def __init__(self, issuer: str, parameters: MultiDict[str, str] | None = None) -> None:
        OAuth2Request.__init__(
            self, flask_request.method, issuer + flask_request.path, headers=flask_request.headers
        )
        self._request = flask_request
        sent = flask_request.values if parameters is None else parameters
        self.payload = _Parameters(given(sent))  # those sent without a value left out


class _Parameters(FlaskOAuth2Payload):
    """Parameters from one place only, never a query and a body merged."""

    def __init__(self, parameters: MultiDict[str, str]) -> None:
        self._parameters = parameters

    @property
    def data(self) -> MultiDict[str, str]:
        return self._parameters
