"""The benchmarked routes and driving them with wrk, one route at a time, on loopback."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from .seed import PASSWORD, Seeded

SCRIPT = Path(__file__).resolve().parent / "wrk_route.lua"
_FORM = "application/x-www-form-urlencoded"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Modes whose lines work once: no warm-up run may spend them (see wrk_route.lua).
SINGLE_USE = ("once", "dpop")


@dataclass(frozen=True)
class Route:
    """One row of the table: a request shape and the lines that vary per request."""

    key: str
    label: str
    method: str
    path: str
    mode: str = "static"  # see wrk_route.lua
    lines: list[str] = field(default_factory=list)
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Load:
    """How hard and how long wrk drives each route."""

    threads: int
    connections: int
    seconds: int
    warmup_seconds: int


def healthz(label: str = "GET /healthz") -> Route:
    """The cost floor every other route is compared with."""
    return Route("healthz", label, "GET", "/healthz")


def password_grant(seeded: Seeded) -> Route:
    """Correct passwords, rotating over many users (so no account is ever throttled)."""
    bodies = [
        urlencode({"grant_type": "password", "username": name, "password": PASSWORD})
        for name in seeded.usernames
    ]
    headers = {"Authorization": seeded.app.basic, "Content-Type": _FORM}
    return Route(
        "password",
        "POST /oauth/token (password)",
        "POST",
        "/oauth/token",
        "body",
        bodies,
        None,
        headers,
    )


def refresh_grant(seeded: Seeded, refresh_tokens: list[str]) -> Route:
    """Each request spends a different, unspent refresh token."""
    bodies = [
        urlencode({"grant_type": "refresh_token", "refresh_token": t}) for t in refresh_tokens
    ]
    return _single_use_grant("refresh", bodies, seeded.app.basic)


def private_key_jwt(assertions: list[str]) -> Route:
    """client_credentials with private_key_jwt: each request presents a fresh assertion."""
    bodies = [
        urlencode(
            {
                "grant_type": "client_credentials",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion,
            }
        )
        for assertion in assertions
    ]
    return _single_use_grant("private_key_jwt", bodies)  # a jti is single use


def introspection(seeded: Seeded) -> Route:
    """A resource server asking about users' live access tokens."""
    bodies = [
        urlencode({"token": t, "token_type_hint": "access_token"}) for t in seeded.access_tokens
    ]
    headers = {"Authorization": seeded.resource_server.basic, "Content-Type": _FORM}
    return Route(
        "introspect",
        "POST /oauth/introspect",
        "POST",
        "/oauth/introspect",
        "body",
        bodies,
        None,
        headers,
    )


def bearer_routes(seeded: Seeded, with_junk: bool) -> list[Route]:
    """The bearer-protected routes, each rotating over the users' access tokens."""
    tokens = seeded.access_tokens
    routes = [Route("users_me", "GET /users/me", "GET", "/users/me", "bearer", tokens)]
    if with_junk:
        item = json.dumps({"name": "bench item", "description": "written under load " * 4})
        routes += [
            Route("junk_list", "GET /junk", "GET", "/junk", "bearer", tokens),
            Route(
                "junk_create",
                "POST /junk",
                "POST",
                "/junk",
                "bearer",
                tokens,
                item,
                {"Content-Type": "application/json"},
            ),
        ]
    return routes


def junk_dpop(lines: list[str]) -> Route:
    """GET /junk with DPoP-bound tokens, each request with its own proof (see dpop.py)."""
    return Route("junk_dpop", "GET /junk (DPoP)", "GET", "/junk", "dpop", lines)


def _wrk_args(route: Route, base: str, load: Load, lines_file: Path, seconds: int) -> list[str]:
    headers = [f"{name}: {value}" for name, value in route.headers.items()]
    return [
        "wrk",
        f"-t{load.threads}",
        f"-c{load.connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(SCRIPT),
        base + route.path,
        "--",
        route.method,
        route.path,
        route.mode,
        str(lines_file) if route.lines else "-",
        str(load.threads),
        route.body if route.body is not None else "-",
        *headers,
    ]


def run_wrk(route: Route, base: str, load: Load, workdir: Path, seconds: int) -> dict[str, Any]:
    """Drive one route for `seconds` and return wrk's counts and latency percentiles."""
    assert base.startswith("http://127.0.0.1:"), "the bench only ever targets loopback"
    lines_file = workdir / f"{route.key}.lines"
    lines_file.write_text("\n".join(route.lines) + "\n")
    done = subprocess.run(
        _wrk_args(route, base, load, lines_file, seconds),
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 60,
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            raw: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            return raw
    raise RuntimeError(f"wrk gave no result for {route.label}: {done.stdout}{done.stderr}")


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    """The table's numbers from wrk's raw counts."""
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "rps": round(raw["requests"] / seconds, 1) if seconds else 0.0,
        "p50_ms": round(raw["latency_p50_us"] / 1000, 2),
        "p90_ms": round(raw["latency_p90_us"] / 1000, 2),
        "p99_ms": round(raw["latency_p99_us"] / 1000, 2),
        "max_ms": round(raw["latency_max_us"] / 1000, 2),
        "non2xx": raw["non2xx"],
        "socket_errors": raw["socket_errors"],
        "errors": raw["non2xx"] + raw["socket_errors"],
        "pool_exhausted": raw["exhausted"],
    }


def userinfo(seeded: Seeded) -> Route:
    """OpenID Connect userinfo, rotating over the users' `openid` access tokens."""
    return Route(
        "userinfo", "GET /oauth/userinfo", "GET", "/oauth/userinfo", "bearer", seeded.openid_tokens
    )


def code_exchange(seeded: Seeded, codes: list[str], verifier: str, redirect_uri: str) -> Route:
    """Each request exchanges a different fresh authorization code (PKCE, id_token issued)."""
    assert seeded.web is not None
    bodies = [
        urlencode(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
            }
        )
        for code in codes
    ]
    return _single_use_grant("code", bodies, seeded.web.basic)


def _single_use_grant(key: str, bodies: list[str], basic: str | None = None) -> Route:
    """A token request whose bodies each work once (wrk_route.lua's "once" mode)."""
    headers = {"Content-Type": _FORM} | ({"Authorization": basic} if basic else {})
    return Route(
        key, f"POST /oauth/token ({key})", "POST", "/oauth/token", "once", bodies, None, headers
    )
