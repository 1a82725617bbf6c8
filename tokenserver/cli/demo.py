"""`tokenserver clients ensure-demo`: the demo client `make run` makes, and how to sign in as it."""

from __future__ import annotations

from urllib.parse import urlencode

import click
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from ..clients import ClientSpec, register_first
from ..config import current_settings
from ..digests import new_secret
from .clients import clients
from .command import command


@command(clients, "ensure-demo")
def clients_ensure_demo() -> None:
    """Create a demo client if there is no client at all, and print a sign-in URL for it.

    Used by `make run`: the URL opens our sign-in page in a browser, and the printed curl line
    exchanges the code it returns (the demo client's loopback redirect URI, RFC 8252 §7.3).
    """
    demo, secret = register_first(
        ClientSpec(
            DEMO_NAME,
            grants=("password", "refresh_token", "client_credentials", "authorization_code"),
            introspect=True,
            redirect_uris=(DEMO_REDIRECT,),
        )
    )
    if demo is None:
        click.echo("a client exists already; no demo client created")
        return
    if secret is not None:
        click.echo(f"demo client_id: {demo.client_id}\ndemo client_secret: {secret}")
    if DEMO_REDIRECT in demo.redirect_uri_list:
        click.echo(demo_sign_in(demo.client_id, secret))


DEMO_NAME = "demo"
DEMO_REDIRECT = "http://127.0.0.1/callback"
_DEMO_CALLBACK = "http://127.0.0.1:8400/callback"  # any port matches the loopback URI


def demo_sign_in(client_id: str, secret: str | None) -> str:
    """Instructions to sign in as the demo client in a browser and exchange the code."""
    issuer = current_settings().issuer
    verifier = new_secret(32)
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": _DEMO_CALLBACK,
            "scope": "openid profile junk:read junk:write",
            "state": new_secret(8),
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
        }
    )
    auth = f"{client_id}:{secret or 'DEMO_SECRET'}"
    return (
        "\nSign in through the browser: make a user first (.venv/bin/tokenserver users create\n"
        "NAME), then open this URL, sign in and allow the demo app\n"
        f"  {issuer}/oauth/authorize?{query}\n"
        "The browser then lands on 127.0.0.1:8400 (nothing listens there): copy `code` from\n"
        "its address bar within 60 seconds and exchange it:\n"
        f"  curl -s -u '{auth}' -d grant_type=authorization_code -d code=CODE \\\n"
        f"    -d redirect_uri={_DEMO_CALLBACK} -d code_verifier={verifier} \\\n"
        f"    {issuer}/oauth/token\n"
    )
