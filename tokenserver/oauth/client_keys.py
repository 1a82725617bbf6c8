"""A client's public keys for private_key_jwt (RFC 7523): its inline JWKS, or its jwks_uri.

Inline documents are parsed once per text, so once per version of the client. Documents at a
jwks_uri are fetched by each worker at most once per cache period (the document's
`Cache-Control: max-age`, within bounds), with a short timeout and a size cap; an unknown
`kid` (the client rotated its keys) may fetch again, at most once per `refetch_interval` per
URL, so nobody can make us hammer the client's server by sending made-up kids; a fetch that
fails keeps the keys fetched before until they expire.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from joserfc.jwk import Key, KeySet
from werkzeug.http import parse_cache_control_header

if TYPE_CHECKING:
    import urllib3

from ..client_jwks import KeysUnavailable, public_key_set
from ..models import Client
from ..payloads import parse_json
from .resolver import Resolver

log = logging.getLogger(__name__)

# Assertions are signed with the client's private key: asymmetric algorithms only, never
# `none` and never HS* (an HMAC keyed with a public key anyone can read).
ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA", "Ed25519")
_KEY_TYPE = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC", "EdDSA": "OKP", "Ed25519": "OKP"}


@functools.lru_cache(maxsize=256)
def inline_keys(document: str) -> KeySet:
    """A client's registered JWKS text, parsed once per text (so once per client version)."""
    try:
        # Registered before weak keys were refused, a key may be one we must no longer trust.
        return public_key_set(parse_json(document), skip_unusable=True)
    except ValueError as exc:
        raise KeysUnavailable(f"registered jwks is not JSON ({exc})") from None


def pick_key(keys: KeySet, header: dict[str, Any]) -> Key:
    """The key a JWS header names: by `kid`, else the one key of the algorithm's type."""
    alg, kid = header.get("alg"), header.get("kid")
    key_type = _KEY_TYPE.get(alg) if isinstance(alg, str) else None
    if key_type is None:
        raise KeysUnavailable("the assertion's alg is not one we accept")
    if kid is not None and not isinstance(kid, str):
        raise KeysUnavailable("the assertion's kid is not a string")
    # Without a kid, several keys of one type would leave us guessing: the client must name one.
    # A key the client marked for encryption or another alg is none of them: it cannot verify.
    matches = [
        key
        for key in keys
        if key.key_type == key_type and (kid is None or key.kid == kid) and _verifies(key, alg)
    ]
    if len(matches) != 1:
        raise KeysUnavailable("no single key of the client matches the assertion's kid and alg")
    return matches[0]


def _verifies(key: Key, alg: object) -> bool:
    """Whether a JWK's own `use`, `key_ops` and `alg` (RFC 7517 §4.2-4.4) let it verify `alg`."""
    operations = key.get("key_ops")
    return (
        key.get("use") in (None, "sig")
        and key.get("alg") in (None, alg)
        and (operations is None or "verify" in operations)
    )


@dataclass
class _Fetched:
    keys: KeySet | None  # None: no fetch has brought keys that are still valid
    tried_at: float  # the last fetch, failed or not: the next waits for refetch_interval
    expires_at: float

    def has(self, kid: str | None) -> bool:
        return self.keys is not None and (kid is None or any(key.kid == kid for key in self.keys))


class RemoteKeys:
    """This worker's cache of the JWKS documents at clients' jwks_uri, bounded in time.

    Every fetch has a short timeout and a size cap, follows no redirect, and never raises
    anything but KeysUnavailable: a client's broken server is that client's invalid_client,
    never our 500, and never a stalled worker for longer than the timeout.
    """

    def __init__(
        self,
        *,
        timeout: float = 3.0,
        max_bytes: int = 64 * 1024,
        default_ttl: float = 300.0,
        min_ttl: float = 60.0,
        max_ttl: float = 3600.0,
        refetch_interval: float = 30.0,
        size: int = 256,
    ) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.default_ttl = default_ttl
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.refetch_interval = refetch_interval
        self.size = size
        self.resolver = Resolver()
        self.fetches = 0  # how many times this worker went to the network (for metrics/tests)
        self._entries: dict[str, _Fetched] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, uri: str, kid: str | None, *, public_only: bool = False) -> KeySet:
        """The keys at `uri`, from this worker's copy unless it is stale or lacks `kid`.

        `public_only`: fetch only if the host's every address is a public one (a client that
        registered itself must not point us at our own network, even through a DNS name).
        """
        entry = self._entries.get(uri)
        if entry is not None and entry.expires_at > time.time() and entry.has(kid):
            return entry.keys  # type: ignore[return-value]
        with self._lock(uri):  # one fetch per URL at a time; the others wait for its result
            entry = self._entries.get(uri)
            now = time.time()
            if entry is not None and entry.expires_at > now and entry.has(kid):
                return entry.keys  # type: ignore[return-value]
            if entry is not None and now - entry.tried_at < self.refetch_interval:
                # Asked moments ago (a made-up kid, or the server failing): not again so soon.
                if entry.keys is None or entry.expires_at <= now:
                    raise KeysUnavailable("the client's jwks_uri failed moments ago")
                return entry.keys
            return self._refresh(uri, now, public_only)

    def _refresh(self, uri: str, now: float, public_only: bool) -> KeySet:
        previous = self._entries.get(uri)
        if len(self._entries) >= self.size:
            self._entries.clear()  # jwks_uri clients are few; a full cache means churn
        try:
            keys, ttl = self._fetch(uri, public_only)
        except KeysUnavailable as exc:
            # Anyone can force a refetch with a made-up kid: its failure must not cost the
            # client the keys it still has. Only the try is recorded, to space out the next.
            if previous is not None and previous.keys is not None and previous.expires_at > now:
                self._entries[uri] = _Fetched(previous.keys, now, previous.expires_at)
            else:
                self._entries[uri] = _Fetched(None, now, now)
            log.warning("jwks_uri %s failed: %s", _redacted(uri), exc)
            raise
        self._entries[uri] = _Fetched(keys, now, now + ttl)
        return keys

    def _fetch(self, uri: str, public_only: bool) -> tuple[KeySet, float]:
        # urllib3 on the first fetch only: most deployments make none, and it costs MBs.
        import certifi
        import urllib3

        self.fetches += 1
        deadline = time.monotonic() + self.timeout
        parts = urlsplit(uri)
        https = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if https else 80)
        address = _address(self.resolver, host, port, public_only, self.timeout)
        timeout = urllib3.Timeout(connect=self.timeout, read=self.timeout)
        # Connect to the address just vetted, not to whatever the name resolves to next (DNS
        # rebinding); TLS still checks the certificate against the name.
        pool: urllib3.HTTPConnectionPool = (
            urllib3.HTTPSConnectionPool(
                address,
                port,
                timeout=timeout,
                retries=False,
                server_hostname=host,
                assert_hostname=host,
                cert_reqs="CERT_REQUIRED",
                ca_certs=certifi.where(),
            )
            if https
            else urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False)
        )
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {
            "Host": parts.netloc.rpartition("@")[2],
            "Accept": "application/jwk-set+json, application/json",
        }
        try:
            with pool:
                response = pool.urlopen(
                    "GET", target, headers=headers, redirect=False, preload_content=False
                )
                try:
                    if response.status != 200:
                        raise KeysUnavailable(f"answered {response.status}")
                    body = self._read_capped(response, deadline)
                    ttl = self._ttl(response.headers.get("Cache-Control"))
                finally:
                    response.release_conn()
        except urllib3.exceptions.HTTPError as exc:
            raise KeysUnavailable(f"{type(exc).__name__}") from None
        try:
            document = parse_json(body)  # the client's server may send anything
        except ValueError:
            raise KeysUnavailable("the document is not JSON") from None
        # A weak key on the client's server is left out, never trusted; its other keys still do.
        return public_key_set(document, skip_unusable=True), ttl

    def _read_capped(self, response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
        body = bytearray()
        for chunk in response.stream(8192):
            body += chunk
            if len(body) > self.max_bytes:
                raise KeysUnavailable(f"the document is larger than {self.max_bytes} bytes")
            # The timeout bounds each read; this bounds the whole of a trickled answer.
            if time.monotonic() > deadline:
                raise KeysUnavailable("the document took too long to arrive")
        return bytes(body)

    def _ttl(self, cache_control: str | None) -> float:
        max_age = parse_cache_control_header(cache_control).max_age if cache_control else None
        ttl = self.default_ttl if max_age is None else float(max_age)
        return min(max(ttl, self.min_ttl), self.max_ttl)

    def _lock(self, uri: str) -> threading.Lock:
        with self._guard:
            if len(self._locks) >= self.size and uri not in self._locks:
                self._locks.clear()
            return self._locks.setdefault(uri, threading.Lock())


class ClientKeys:
    """Where a client's public keys come from: its inline JWKS or its jwks_uri."""

    def __init__(self, remote: RemoteKeys | None = None) -> None:
        self.remote = remote or RemoteKeys()

    def key_for(self, client: Client, header: dict[str, Any]) -> Key:
        """The client's key that should have signed a JWS with this header."""
        if client.jwks is not None:
            return pick_key(inline_keys(client.jwks), header)
        if client.jwks_uri is None:
            raise KeysUnavailable("the client has no keys")
        kid = header.get("kid")
        keys = self.remote.get(
            client.jwks_uri,
            kid if isinstance(kid, str) else None,
            # Registered by the client itself (RFC 7591), not by an operator who knows the network.
            public_only=client.registration_token_hash is not None,
        )
        return pick_key(keys, header)


def _address(resolver: Resolver, host: str, port: int, public_only: bool, timeout: float) -> str:
    """The address to fetch from: the first `host` resolves to within `timeout` seconds; with
    `public_only`, only if every address it resolves to is public (not private, loopback,
    link-local, reserved)."""
    try:
        addresses = resolver.addresses(host, port, timeout)
    except TimeoutError:  # the wait's, or the resolver's own (an OSError too: caught first)
        raise KeysUnavailable("its host did not resolve in time") from None
    except (OSError, UnicodeError):
        raise KeysUnavailable("its host does not resolve") from None
    if not addresses:
        raise KeysUnavailable("its host does not resolve")
    if public_only and not all(ipaddress.ip_address(a).is_global for a in addresses):
        raise KeysUnavailable("its host is not on a public network")
    return addresses[0]


def _redacted(uri: str) -> str:
    """A URL fit for a log line: no query or user info, which might carry a credential."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
