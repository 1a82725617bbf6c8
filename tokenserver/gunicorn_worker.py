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
"""

from __future__ import annotations

import contextlib
import selectors
import time
from collections import deque
from functools import partial
from typing import Any

from gunicorn import http
from gunicorn.workers import gthread

# A head longer than this is refused by closing the connection (nginx's default total for
# request headers is 4 x 8 KiB too). Ours are well under 2 KiB.
MAX_HEAD_BYTES = 32 * 1024
_READ_SIZE = 8192
_END_OF_HEAD = b"\r\n\r\n"


class BufferedHeadWorker(gthread.ThreadWorker):  # type: ignore[misc]
    """gthread, but a pool thread is given only a request whose head is already here."""

    pending_conns: deque[Any]  # gthread's: connections waiting in the poller (ours: for a head)

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Refuse what this worker cannot gather heads for: TLS and HTTP/2 are not plain bytes."""
        super().check_config(cfg, log)
        if cfg.is_ssl or cfg.http_protocols != ["h1"] or cfg.proxy_protocol != "off":
            raise RuntimeError("BufferedHeadWorker serves plain HTTP/1.1 only: end TLS in front")

    def accept(self, listener: Any) -> None:
        """Take a new connection and wait, in the poller, for its first request head."""
        try:
            sock, address = listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return  # another worker took it, or the client gave up
        self.nr_conns += 1
        conn = gthread.TConn(self.cfg, sock, address, listener.getsockname())  # non-blocking
        conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        self._await_head(conn)

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
        try:
            data = conn.sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
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

    def murder_pending(self) -> None:
        """Close every connection whose head has not arrived by its deadline (run each second).

        gthread's own version stops at the first live entry, as its deadlines are all made
        alike; ours come from a connect or a previous response, so each entry is looked at.
        """
        now = time.monotonic()
        late = [conn for conn in self.pending_conns if conn.timeout <= now]
        if not late:
            return
        self.pending_conns = deque(conn for conn in self.pending_conns if conn.timeout > now)
        for conn in late:
            with contextlib.suppress(OSError, KeyError, ValueError):  # already unregistered
                self.poller.unregister(conn.sock)
            self.nr_conns -= 1
            conn.close()


def _whole(head: bytearray, start: int = 0) -> bool:
    """Whether a head has ended, or has a bare LF (gunicorn refuses it at once: RFC 9112 §2.2)."""
    return head.find(_END_OF_HEAD, start) >= 0 or head.count(b"\n") != head.count(b"\r\n")
