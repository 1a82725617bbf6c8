"""Host name lookups that a caller waits for no longer than its timeout.

getaddrinfo has no timeout of its own: a nameserver that never answers holds it for the
resolver's every try, 10 s and more. So each lookup runs in a thread of its own, never
queued behind another name's, and a lookup left behind by its caller ends by itself. One
name has one lookup at a time: callers of a name being looked up share its lookup and its
deadline, and once that deadline has passed (the name hangs) they fail at once, until the
lookup ends. A name that never answers costs its own clients their timeout, nobody else.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

# Lookups running at once in this worker, hanging ones included: reached only by a flood of
# distinct names that never answer, and then a new name fails at once rather than start a
# thread without bound.
MAX_RUNNING = 64


@dataclass
class _Lookup:
    deadline: float  # time.monotonic() past which its callers stop waiting
    result: Future[list[str]] = field(default_factory=Future)


class Resolver:
    """Resolves host names with a deadline; see the module's docstring."""

    def __init__(self, max_running: int = MAX_RUNNING) -> None:
        self.max_running = max_running
        self._running: dict[tuple[str, int], _Lookup] = {}
        self._guard = threading.Lock()

    def addresses(self, host: str, port: int, timeout: float) -> list[str]:
        """The addresses `host` resolves to; TimeoutError if not within `timeout` seconds,
        OSError or UnicodeError if it does not resolve."""
        now = time.monotonic()
        lookup = self._lookup(host, port, now + timeout)
        # A name already being looked up is waited for only until that lookup's deadline.
        wait = min(lookup.deadline - now, timeout)
        return lookup.result.result(timeout=max(0.0, wait))

    def _lookup(self, host: str, port: int, deadline: float) -> _Lookup:
        key = (host, port)
        with self._guard:
            lookup = self._running.get(key)
            if lookup is not None:
                return lookup
            if len(self._running) >= self.max_running:
                raise TimeoutError("too many host names are being resolved at once")
            lookup = self._running[key] = _Lookup(deadline)
        thread = threading.Thread(
            target=self._resolve, args=(key, lookup), name="jwks-resolver", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: this lookup never runs
            with self._guard:
                del self._running[key]
            raise
        return lookup

    def _resolve(self, key: tuple[str, int], lookup: _Lookup) -> None:
        try:
            found = socket.getaddrinfo(key[0], key[1], type=socket.SOCK_STREAM)
            lookup.result.set_result([str(info[4][0]) for info in found])
        except BaseException as exc:  # handed to the callers, who raise it as their own
            lookup.result.set_exception(exc)
        finally:
            with self._guard:
                del self._running[key]
