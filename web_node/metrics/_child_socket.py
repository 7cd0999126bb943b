"""A child's metrics socket: its page, served to the node over a unix socket from a thread of its own.

The socket is mode 0600 in the node's 0700 run directory. The protocol is
HTTP/1.1 with keep-alive: the node keeps one connection to each child open
from scrape to scrape and sends ``GET /metrics`` with the scraper's
``Accept`` header on it; the child answers with a Content-Length. An
operator can look at one child's page with::

    curl --unix-socket DATA_DIR/run/GROUP.metrics.sock http://child/metrics

One thread answers every connection (:func:`serve_unix`), so the child's
trio loop is never woken by a scrape: a pass of trio's run loop cost a
scraped child ~280 µs of CPU with 50 children on two cores (their caches
are cold), five times what the thread costs. A kept connection spares both
sides the accept/connect/close of every scrape (see bench/bench_metrics.py).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Callable

import trio

from web_node.metrics._server import MAX_HEAD_BYTES, REASONS, BadRequest, Request, Response, body_length, parse_head

#: A connection that has sent part of a request and nothing more for this long is dropped.
CHILD_REQUEST_TIMEOUT_S = 2.0
#: Open connections one child keeps; the node needs one. Past this, the longest idle one is closed.
MAX_CONNECTIONS = 8

log = logging.getLogger("web_node.metrics")

#: What a child's socket calls for each request, in the socket's own thread.
SyncHandler = Callable[[Request], Response]


async def open_unix(path: str) -> socket.socket:
    """Listen on a unix socket at ``path`` (a stale socket file there is replaced), mode 0600, non-blocking."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)  # a unix socket binds at once: no need for a thread
        os.chmod(path, 0o600)
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    await trio.lowlevel.checkpoint()
    return sock


async def serve_unix(listener: socket.socket, handler: SyncHandler, *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer connections on a listening unix socket, from a thread of their own, until cancelled.

    ``handler`` runs outside the trio thread: it must only read state the
    trio thread writes (see ProcessMetrics.write).
    """
    stop_r, stop_w = os.pipe2(os.O_CLOEXEC)
    thread = threading.Thread(target=_SocketThread(listener, handler, stop_r).run,
                              name="web-node-metrics-socket", daemon=True)
    try:
        thread.start()
        task_status.started()
        await trio.sleep_forever()
    finally:
        os.write(stop_w, b"x")  # the thread polls this pipe with every wait, and returns
        with trio.CancelScope(shield=True):
            if thread.is_alive():
                await trio.to_thread.run_sync(thread.join)
        os.close(stop_r)
        os.close(stop_w)


class _Connection:
    __slots__ = ("buf", "partial_since", "sock", "used")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.partial_since: float | None = None  # when the unfinished request in buf began
        self.used = time.monotonic()


class _SocketThread:
    """The poll loop: the listening socket, every open connection and the stop pipe."""

    def __init__(self, listener: socket.socket, handler: SyncHandler, stop_fd: int) -> None:
        self.listener = listener
        self.handler = handler
        self.stop_fd = stop_fd
        self.poller = select.poll()
        self.conns: dict[int, _Connection] = {}
        self.partial = 0  # connections holding part of a request: only then are deadlines looked at
        # The node sends the same request head at every scrape: parse each distinct head once.
        self.heads: dict[bytes, tuple[Request, bool]] = {}

    def run(self) -> None:
        self.poller.register(self.listener, select.POLLIN)
        self.poller.register(self.stop_fd, select.POLLIN)
        listener_fd = self.listener.fileno()
        try:
            while True:
                for fd, _ in self.poller.poll(self._timeout_ms() if self.partial else -1):
                    if fd == self.stop_fd:
                        return
                    if fd == listener_fd:
                        self._accept()
                    elif (conn := self.conns.get(fd)) is not None:
                        try:
                            self._readable(conn)
                        except Exception as e:  # the thread must live on for the next scrape
                            log.error("metrics socket: answering a connection failed: %s: %s; it is closed",
                                      type(e).__name__, e, exc_info=e)
                            if conn.sock.fileno() in self.conns:
                                self._close(conn)
                if self.partial:
                    self._drop_stalled()
        finally:
            for conn in list(self.conns.values()):
                conn.sock.close()
            self.conns.clear()

    def _timeout_ms(self) -> int:
        partial = [c.partial_since for c in self.conns.values() if c.partial_since is not None]
        if not partial:
            return -1
        return max(0, int((min(partial) + CHILD_REQUEST_TIMEOUT_S - time.monotonic()) * 1000) + 1)

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return  # the peer gave up before we got to it
        except OSError as e:  # ECONNABORTED, EMFILE: the next connection may do better
            log.warning("metrics socket: cannot accept a connection: %s", e)
            time.sleep(0.05)  # do not spin on a lasting error; the stop pipe is seen at the next poll
            return
        sock.setblocking(False)
        if len(self.conns) >= MAX_CONNECTIONS:
            self._close(min(self.conns.values(), key=lambda c: c.used))
        self.conns[sock.fileno()] = _Connection(sock)
        self.poller.register(sock, select.POLLIN)

    def _close(self, conn: _Connection) -> None:
        if conn.partial_since is not None:
            self.partial -= 1
        self.conns.pop(conn.sock.fileno(), None)
        self.poller.unregister(conn.sock)
        conn.sock.close()

    def _drop_stalled(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self.conns.values() if c.partial_since is not None]:
            if now - conn.partial_since > CHILD_REQUEST_TIMEOUT_S:  # type: ignore[operator]
                self._close(conn)

    def _readable(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(65536)
            if not data:
                self._close(conn)
                return
            conn.used = time.monotonic()
            buf = conn.buf + data if conn.buf else data
            while (end := buf.find(b"\r\n\r\n")) >= 0:
                head, buf = buf[:end], buf[end + 4:]
                if not self._answer(conn, head):
                    self._close(conn)
                    return
        except BlockingIOError:
            return
        except OSError as e:  # the peer went away (the node restarted, curl was interrupted)
            if e.errno not in (errno.ECONNRESET, errno.EPIPE):
                log.warning("metrics socket: connection error: %s", e)
            self._close(conn)
            return
        if len(buf) > MAX_HEAD_BYTES:
            self._close(conn)
            return
        answered = len(buf) < len(conn.buf) + len(data)
        conn.buf = buf
        if buf and conn.partial_since is None:
            conn.partial_since = conn.used
            self.partial += 1
        elif buf and answered:
            conn.partial_since = conn.used  # what is left is the start of the next request: timed from now
        elif not buf and conn.partial_since is not None:
            conn.partial_since = None
            self.partial -= 1

    def _answer(self, conn: _Connection, head: bytes) -> bool:
        """Answer one request; False when the connection is to be closed afterwards."""
        parsed = self.heads.get(head)
        if parsed is None:
            try:
                parsed = parse_head(head)
            except BadRequest as e:
                self._send(conn, "GET", Response(e.status, f"{e}\n".encode()), keep_alive=False)
                return False
            if len(self.heads) < 16:
                self.heads[head] = parsed
        request, keep_alive = parsed
        try:
            response = self.handler(request)
        except Exception as e:  # the next scrape must work again
            log.error("metrics socket: building the page failed: %s: %s", type(e).__name__, e, exc_info=e)
            response = Response(500, f"internal error building the metrics page: {type(e).__name__}: {e}\n".encode())
        return self._send(conn, request.method, response, keep_alive=keep_alive) and keep_alive

    def _send(self, conn: _Connection, method: str, response: Response, *, keep_alive: bool) -> bool:
        """Send the whole answer; False when the peer did not take it within the request timeout."""
        pieces = [response.body] if isinstance(response.body, bytes) else response.body
        close = "" if keep_alive else "Connection: close\r\n"
        head = (f"HTTP/1.1 {response.status} {REASONS.get(response.status, '')}\r\nContent-Type: {response.content_type}\r\n"
                f"Content-Length: {body_length(pieces)}\r\n{close}\r\n").encode("latin-1")
        out = [head] if method == "HEAD" else [head, *pieces]
        total = sum(map(len, out))
        # One sendmsg gathers the pieces: a page fits the socket buffer, so this is the one call, nearly always.
        try:
            sent = conn.sock.sendmsg(out) if len(out) <= _MAX_IOV else conn.sock.send(b"".join(out))
        except BlockingIOError:
            sent = 0
        if sent == total:
            return True
        view = memoryview(b"".join(out))[sent:]
        deadline = time.monotonic() + CHILD_REQUEST_TIMEOUT_S
        waiter = select.poll()
        waiter.register(conn.sock, select.POLLOUT)
        waiter.register(self.stop_fd, select.POLLIN)
        while view:
            ready = waiter.poll(max(0, int((deadline - time.monotonic()) * 1000)))
            if not ready or any(fd == self.stop_fd for fd, _ in ready):
                return False
            try:
                view = view[conn.sock.send(view):]
            except BlockingIOError:
                continue
        return True


#: sendmsg takes at most IOV_MAX (1024 on Linux) pieces; more are joined first.
_MAX_IOV = 512
