"""gunicorn's threaded worker, with every request head gathered in its poller, not in a thread.

gunicorn's gthread worker hands each new connection to a pool thread, which waits up to 5 s for
a first byte and then reads the request head from a blocking socket with no deadline at all:
a few idle connections (a browser's pre-opened ones) delay everyone by seconds, and a few
slowloris clients (a header line now and then) hold every thread for as long as they like,
while the worker still looks healthy to its master. Here a connection gets a thread only once
its whole head has arrived; until then it waits in the worker's poller, costing one file
descriptor, and is closed if the head is not complete `keepalive` seconds after it connected
or after its previous response. The head is then parsed by gunicorn's own parser, exactly as
gthread would: this class only decides when a connection is worth a thread.

It also shares new connections with its sibling workers. They all poll one listening socket,
and whoever wakes first takes what is queued: a client opening eight kept-alive connections at
once (a load balancer's pool, a benchmark) often had all eight taken by one worker, which then
served them on one core while the other idled, at a third of the throughput. A worker that
already holds a connection per thread now stops accepting for a few milliseconds, so a sibling
takes the next ones; it does so once per new level of load, and at most ten times a second at
a level it has yielded at before, so a steady stream of short connections is not slowed.
Connections already kept alive stay where they are, so a worker that holds more than one per
thread (its sibling was restarting when they came) closes one after its answer now and then,
with `Connection: close`, and yields while the client connects again.

An answer that leaves more of the request body unread than gunicorn drains afterwards (a 413
for a body over the limit) says `Connection: close` too: gunicorn closes such a connection
after the answer, and one announced as kept alive would fail the client's next request on it.

A connection closed after its answer is closed as gunicorn does (its end first, then what the
client still sends is read, for up to 2 s, so that a reset does not cut the answer short: RFC
9112 §9.6), but that reading waits in the poller: gunicorn did it in the worker's main thread,
where each client that kept its side open stalled every other connection of the worker.

A request gunicorn refuses before the app sees it (malformed HTTP, a head over its limits) is
answered in the one JSON shape of every error, not with gunicorn's HTML page.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import time
from collections import deque
from functools import partial
from http import HTTPStatus
from typing import Any

from gunicorn import http, util
from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.workers import gthread

from .errors import error_code

# A head longer than this is refused by closing the connection (nginx's default total for
# request headers is 4 x 8 KiB too). Ours are well under 2 KiB.
MAX_HEAD_BYTES = 32 * 1024
_READ_SIZE = 8192
_END_OF_HEAD = b"\r\n\r\n"
# How long a loaded worker leaves the listener to its siblings, and how often at most it does
# so again at a level of load it has already yielded at.
YIELD_SECONDS = 0.005
YIELD_AT_MOST_EVERY = 0.1
# What gunicorn reads and discards of a body the app left unread, before the next request on
# the connection (gunicorn.http.parser._DRAIN_MAX_BYTES); with this much left, it closes.
DRAINED_AT_MOST = 64 * 1024
# How long, and how much, a closed connection is read for what the client still sends
# (gunicorn.util.close_graceful's defaults).
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 1024


class BufferedHeadWorker(gthread.ThreadWorker):  # type: ignore[misc]
    """gthread, but a pool thread is given only a request whose head is already here."""

    pending_conns: deque[Any]  # gthread's: connections waiting in the poller (ours: for a head)
    wsgi: Any  # gunicorn's: the app it calls

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Read once: gunicorn's Config looks each setting up anew, and these run per request.
        self._alone = self.cfg.workers < 2
        self._threads: int = self.cfg.threads
        self._yield_until = 0.0  # monotonic time until which new connections are left alone
        self._yielded_level = 0  # the load level (connections per thread) of the last yield...
        self._last_yield_level = 0  # ...lowered as connections close; this one is not
        self._last_yield = -YIELD_AT_MOST_EVERY
        self._last_shed = -YIELD_AT_MOST_EVERY  # when an answer last closed its connection
        self._lingering: deque[Any] = deque()  # closed connections still read, by deadline
        self._quitting = False

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Refuse what this worker cannot gather heads for: TLS and HTTP/2 are not plain bytes."""
        super().check_config(cfg, log)
        if cfg.is_ssl or cfg.http_protocols != ["h1"] or cfg.proxy_protocol != "off":
            raise RuntimeError("BufferedHeadWorker serves plain HTTP/1.1 only: end TLS in front")

    def handle_quit(self, sig: int, frame: Any) -> None:
        """gthread's quick exit, run once however many signals ask for it.

        Ctrl-C reaches the master and its workers at once, and the master then sends each
        worker SIGQUIT: run again from inside the first run's ThreadPoolExecutor.shutdown,
        gthread's handler waited forever on the lock that call holds, until the master killed
        the worker `graceful_timeout` (30 s) later.
        """
        if self._quitting:
            return  # the first run goes on, and exits
        self._quitting = True
        super().handle_quit(sig, frame)

    def load_wsgi(self) -> None:
        """gunicorn's, with the app wrapped so that what gunicorn will close says so."""
        super().load_wsgi()
        self.wsgi = partial(_closing_if_body_left, self.wsgi)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's (it logs the refusal and picks the status), but answered in JSON."""
        from .metrics import count_server_answer  # here: prometheus_client after the master

        page = _ErrorPage()
        super().handle_error(req, page, addr, exc)
        status = page.status()
        with contextlib.suppress(OSError):
            util.write_nonblock(client, _json_error(status))
        count_server_answer(getattr(req, "method", None), status)

    def accept(self, listener: Any) -> None:
        """Take a new connection and wait, in the poller, for its first request head."""
        try:
            sock, address = listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return  # another worker took it, or the client gave up
        self.nr_conns += 1
        conn = _Conn(self, self.cfg, sock, address, listener.getsockname())  # non-blocking
        conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        self._await_head(conn)
        self._leave_to_siblings()

    def _leave_to_siblings(self) -> None:
        """Stop accepting for YIELD_SECONDS when this worker reaches a new level of load."""
        if self._alone:
            return
        level = self._served() // self._threads
        self._yielded_level = min(self._yielded_level, level)
        if level <= self._yielded_level:
            return
        now = time.monotonic()
        if level <= self._last_yield_level and now - self._last_yield < YIELD_AT_MOST_EVERY:
            return
        self._yielded_level = self._last_yield_level = level
        self._last_yield = now
        self._yield()

    def _served(self) -> int:
        """Connections held but for those closed and only read until they end (linger)."""
        return int(self.nr_conns) - len(self._lingering)

    def _yield(self) -> None:
        self._yield_until = time.monotonic() + YIELD_SECONDS
        self.set_accept_enabled(False)

    def handle_request(self, req: Any, conn: Any) -> bool:
        """gthread's (in a pool thread); on a worker holding more connections than threads,
        at most one answer per YIELD_AT_MOST_EVERY closes its connection, and the worker yields
        while the client connects again, so that a sibling with idle threads takes it."""
        if self._shed_one():
            req.must_close = True
        return bool(super().handle_request(req, conn))

    def _shed_one(self) -> bool:
        if self._alone or self._served() <= self._threads:
            return False
        now = time.monotonic()
        if now - self._last_shed < YIELD_AT_MOST_EVERY:
            return False  # two threads may both pass here at once: "at most" is about right
        self._last_shed = now
        self.method_queue.defer(self._yield)  # on the main thread, before the answer is sent
        return True

    def set_accept_enabled(self, enabled: bool) -> None:
        """gthread's, except that accepting stays off while this worker yields to siblings."""
        if enabled and time.monotonic() < self._yield_until:
            return
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """gthread's, waking when a yield ends so that accepting resumes on time."""
        if not self._accepting and self._yield_until:
            left = self._yield_until - time.monotonic()
            if left <= 0:
                self._yield_until = 0.0
            timeout = min(timeout, max(left, 0.0))
        super().wait_for_and_dispatch_events(timeout)

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        """A kept-alive connection has sent something: gather its next head the same way."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        # Its deadline (conn.timeout) stays: `keepalive` seconds from the previous response.
        self._await_head(conn, conn.timeout)

    def enqueue_req(self, conn: Any) -> None:
        """Give a thread a connection whose head is whole; a pipelined part-head waits first.

        gthread hands a kept-alive connection straight back to a thread when bytes of the next
        request were read with the last one; if they are not a whole head, that thread would
        block on the rest. They go back to the poller instead, with the usual deadline.
        """
        buffered = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        if buffered and not _whole(bytearray(buffered)):
            conn.sock.setblocking(False)
            self._await_head(conn, time.monotonic() + self.cfg.keepalive, buffered)
            return
        if buffered:
            conn.parser.unreader.unread(buffered)
        super().enqueue_req(conn)

    def _await_head(self, conn: Any, deadline: float | None = None, head: bytes = b"") -> None:
        conn.head = bytearray(head)
        conn.timeout = deadline if deadline is not None else time.monotonic() + self.cfg.keepalive
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read_head, conn))

    def _read_head(self, conn: Any, client: Any) -> None:
        """Called by the poller: take what has arrived; hand the head over once it is whole."""
        data = _receive(conn.sock)
        if data is None:
            return
        head: bytearray = conn.head
        start = max(0, len(head) - len(_END_OF_HEAD) + 1)
        head += data
        if not data or len(head) > MAX_HEAD_BYTES:
            self._drop(conn)  # gone, or far more than any head of ours
            return
        if not _whole(head, start):
            return
        self.poller.unregister(client)
        self.pending_conns.remove(conn)
        conn.parser.unreader.unread(bytes(head))
        conn.head = None
        conn.data_ready = True  # gthread's handle() must not wait for more data
        self.enqueue_req(conn)

    def _drop(self, conn: Any) -> None:
        self.poller.unregister(conn.sock)
        self.pending_conns.remove(conn)
        self.nr_conns -= 1
        conn.close()

    def linger(self, conn: Any) -> None:
        """Close a connection after its answer: send our end, then read from the poller what
        the client still sends, until it closes, LINGER_BYTES or LINGER_SECONDS."""
        sock = conn.sock
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:
            util.close(sock)  # already gone
            return
        conn.timeout = time.monotonic() + LINGER_SECONDS
        conn.drained = 0
        self.nr_conns += 1  # counted again (gthread let it go): a stopping worker waits for it
        self._lingering.append(conn)
        self.poller.register(sock, selectors.EVENT_READ, partial(self._drain, conn))

    def _drain(self, conn: Any, client: Any) -> None:
        data = _receive(conn.sock)
        if data is None:
            return
        conn.drained += len(data)
        if not data or conn.drained >= LINGER_BYTES:
            self._lingering.remove(conn)
            self._end_linger(conn)

    def _end_linger(self, conn: Any) -> None:
        with contextlib.suppress(OSError, KeyError, ValueError):
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        util.close(conn.sock)

    def murder_pending(self) -> None:
        """Close every connection whose head has not arrived by its deadline (run each second).

        gthread's own version stops at the first live entry, as its deadlines are all made
        alike; ours come from a connect or a previous response, so each entry is looked at.
        Closed connections whose LINGER_SECONDS are over are closed for good too.
        """
        now = time.monotonic()
        while self._lingering and self._lingering[0].timeout <= now:
            self._end_linger(self._lingering.popleft())
        late = [conn for conn in self.pending_conns if conn.timeout <= now]
        if not late:
            return
        self.pending_conns = deque(conn for conn in self.pending_conns if conn.timeout > now)
        for conn in late:
            with contextlib.suppress(OSError, KeyError, ValueError):  # already unregistered
                self.poller.unregister(conn.sock)
            self.nr_conns -= 1
            conn.close()


class _Conn(gthread.TConn):  # type: ignore[misc]
    """gthread's connection, whose closing after an answer is left to its worker's poller."""

    def __init__(self, worker: BufferedHeadWorker, *args: Any) -> None:
        super().__init__(*args)
        self._worker = worker

    def close(self, graceful: bool = False) -> None:
        """gthread's graceful close blocks for up to LINGER_SECONDS: the worker lingers."""
        if graceful:
            self._worker.linger(self)
        else:
            super().close()


def _closing_if_body_left(app: Any, environ: dict[str, Any], start_response: Any) -> Any:
    """Run the app; if it answers with more of the body unread than gunicorn drains, the
    answer says `Connection: close`: gunicorn's Response (behind start_response) writes its
    head only once the app's answer is iterated, after this."""
    body = environ["wsgi.input"]  # gunicorn's own, before any middleware replaces it
    answer = app(environ, start_response)
    if _left_unread(body) >= DRAINED_AT_MOST:
        start_response.__self__.force_close()
    return answer


def _left_unread(body: Any) -> int:
    """Bytes of a request body not yet read; DRAINED_AT_MOST when a chunked body has not
    ended, as what is left of it is unknown."""
    reader = getattr(body, "reader", None)
    buffered: int = body.buf.tell() if hasattr(body, "buf") else 0
    if isinstance(reader, LengthReader):
        return reader.length + buffered
    if isinstance(reader, ChunkedReader):
        return buffered + reader.buf.tell() if reader.parser is None else DRAINED_AT_MOST
    return buffered


# What each refusal of gunicorn's means; the request line and headers are never echoed.
_REFUSALS = {
    400: "The request is not well-formed HTTP/1.1.",
    414: "The request line is too long.",
    417: "The server cannot meet the request's Expect header.",
    431: "The request's header fields are too long or too many.",
    501: "The request's transfer coding is not supported.",
}


class _ErrorPage:
    """Takes the place of the client's socket while gunicorn writes its HTML error page, to
    learn the status it chose."""

    def __init__(self) -> None:
        self.written = bytearray()

    def gettimeout(self) -> float:
        return 0.0  # "non-blocking": util.write_nonblock leaves it as it is

    def sendall(self, data: bytes) -> None:
        self.written += data

    def status(self) -> int:
        """The status of the page written ("HTTP/1.1 400 Bad Request..."); 500 if none."""
        parts = self.written.split(b" ", 2)
        return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else 500


def _json_error(status: int) -> bytes:
    """A whole HTTP/1.1 answer, closing the connection, with the one JSON error body."""
    phrase = HTTPStatus(status).phrase
    description = _REFUSALS.get(status, f"{phrase}.")
    body = json.dumps({"error": error_code(status), "error_description": description})
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "Cache-Control: no-store\r\n\r\n"
    )
    return (head + body).encode("ascii")


def _receive(sock: Any) -> bytes | None:
    """What a non-blocking socket has for us: None if nothing yet, b"" if it is gone."""
    try:
        data: bytes = sock.recv(_READ_SIZE)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""
    return data


def _whole(head: bytearray, start: int = 0) -> bool:
    """Whether a head has ended, or has a bare LF (gunicorn refuses it at once: RFC 9112 §2.2)."""
    return head.find(_END_OF_HEAD, start) >= 0 or head.count(b"\n") != head.count(b"\r\n")
