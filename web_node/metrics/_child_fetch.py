"""The node's side of the children's metrics sockets: every child's page at once, on kept connections.

:class:`ChildConnections` keeps one open connection per child socket from
scrape to scrape; :class:`ParallelFetch` sends ``GET /metrics`` to every
child at once (each child renders meanwhile, on the other cores) and then
collects the answers until a deadline, with plain blocking calls for one
worker thread: a selector loop costs tens of µs per child where trio's
streams cost hundreds, which matters with 50 groups on two cores.

A kept connection may have died since the last scrape (the child restarted
or stopped): the request is then sent again once on a new connection. A
child that does not answer in time is left out of the scrape and its
connection closed (a late answer must not be read as the next one's).
"""

from __future__ import annotations

import errno
import select
import socket
import threading
import time
from collections.abc import Iterable, Mapping

import trio

#: errnos of a kept connection whose child is gone: connect anew and ask again.
_STALE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ECONNREFUSED})


class FetchError(Exception):
    """A child's page could not be had; ``reason`` is timeout, connect or protocol."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def request_bytes(accept: str, headers: Mapping[str, str] | None = None) -> bytes:
    def clean(text: str) -> str:
        return text.replace("\r", " ").replace("\n", " ")

    extra = "".join(f"{clean(k)}: {clean(v)}\r\n" for k, v in (headers or {}).items())
    return f"GET /metrics HTTP/1.1\r\nHost: child\r\nAccept: {clean(accept)}\r\n{extra}\r\n".encode("latin-1", "replace")


class ChildConnections:
    """Open connections to the children's sockets, one kept per socket path between scrapes.

    Thread-safe: each scrape takes the connections it uses and gives them
    back when their answer is complete, so two scrapes at once simply open
    a second connection.
    """

    def __init__(self) -> None:
        self._idle: dict[str, socket.socket] = {}
        self._lock = threading.Lock()
        self._closed = False

    def take(self, path: str) -> socket.socket | None:
        with self._lock:
            return self._idle.pop(path, None)

    def give_back(self, path: str, sock: socket.socket) -> None:
        with self._lock:
            if self._closed:  # a scrape that ended after the page was shut down
                old: socket.socket | None = sock
            else:
                old = self._idle.pop(path, None)
                self._idle[path] = sock
        if old is not None:
            old.close()

    def keep_only(self, paths: Iterable[str]) -> None:
        """Close the connections of sockets no longer scraped (a group removed by a reload)."""
        wanted = set(paths)
        with self._lock:
            gone = [p for p in self._idle if p not in wanted]
            socks = [self._idle.pop(p) for p in gone]
        for sock in socks:
            sock.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            socks, self._idle = list(self._idle.values()), {}
        for sock in socks:
            sock.close()

    def __len__(self) -> int:
        return len(self._idle)


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


_ONE_READ = select.EPOLLIN | select.EPOLLONESHOT


class _Pending:
    """One child's answer being read."""

    __slots__ = ("chunks", "key", "length", "path", "received", "retried", "reused", "sock")

    def __init__(self, key: str, path: str, sock: socket.socket, *, reused: bool, retried: bool = False) -> None:
        self.key = key
        self.path = path
        self.sock = sock
        self.reused = reused
        self.retried = retried
        self.chunks: list[bytes] = []
        self.received = 0
        self.length: int | None = None  # head + body, once the head is in


class ParallelFetch:
    """GET /metrics from many children at once: requests sent now, answers collected by :meth:`finish`."""

    def __init__(self, targets: Mapping[str, str], accept: str, connections: ChildConnections | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        self.paths = dict(targets)
        self.pages: dict[str, tuple[str, bytes]] = {}  # key -> (content type, body)
        self.errors: dict[str, FetchError] = {}
        self._connections = connections
        self._request = request_bytes(accept, headers)
        # epoll itself, one-shot: an answer had whole with one recv needs no unregistering (closing
        # the epoll drops what is left); a partial one is re-armed. selectors' bookkeeping per socket
        # cost more than the system calls with 50 children.
        self._epoll = select.epoll()
        self._pending: dict[int, _Pending] = {}
        for key, path in self.paths.items():
            kept = connections.take(path) if connections is not None else None
            self._ask(key, path, kept)

    def _ask(self, key: str, path: str, kept: socket.socket | None, *, retried: bool = False) -> None:
        sock = kept
        try:
            if sock is not None:
                try:
                    self._send(sock)
                except OSError as e:
                    sock.close()
                    if e.errno not in _STALE:
                        raise
                    sock = None  # the child went away since the last scrape: connect anew
            if sock is None:
                sock = _connect(path)
                self._send(sock)
        except OSError as e:
            if sock is not None:
                sock.close()
            # EAGAIN on connect: the child's listen backlog is full, it does not accept.
            self.errors[key] = FetchError("connect", f"cannot connect to {path}: {e.strerror or e}")
            return
        self._pending[sock.fileno()] = _Pending(key, path, sock, reused=sock is kept, retried=retried)
        self._epoll.register(sock.fileno(), _ONE_READ)

    def _send(self, sock: socket.socket) -> None:
        if sock.send(self._request) != len(self._request):  # a unix socket takes a small request at once
            raise BlockingIOError(errno.EAGAIN, "socket buffer full")

    def finish(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = self._pending
        try:
            while pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                for fd, _ in self._epoll.poll(remaining):
                    p = pending.get(fd)
                    if p is not None:
                        self._readable(p)
            for p in pending.values():
                self.errors[p.key] = FetchError("timeout", f"no complete answer from {p.path} within {timeout_s:g} s")
        finally:
            for p in pending.values():
                p.sock.close()
            pending.clear()
            self._epoll.close()

    def _readable(self, p: _Pending) -> None:
        # Read until the answer is complete or the socket is empty: the whole answer is usually there already,
        # and is then had with one recv (no second one to meet EAGAIN).
        eof = False
        try:
            while True:
                data = p.sock.recv(65536)  # not more: a larger buffer is allocated whole before being cut to size
                if not data:
                    eof = True
                    break
                p.chunks.append(data)
                p.received += len(data)
                if p.length is None:
                    p.length = _answer_length(p)
                if p.length is not None and p.received >= p.length:
                    break
        except BlockingIOError:
            pass
        except OSError as e:
            if not (e.errno in _STALE and p.reused and not p.received and not p.retried):
                self._fail(p, FetchError("connect", f"connection to {p.path} broke: {e}"))
                return
            eof = True
        if p.length is None and p.chunks:
            p.length = _answer_length(p)
        if p.length is not None and p.received >= p.length:
            self._done(p, keep=not eof)
        elif not eof:
            self._epoll.modify(p.sock.fileno(), _ONE_READ)  # more to come: wait for it
        else:
            if p.received and p.length is None:
                self._done(p, keep=False)  # an answer without Content-Length ends at EOF
                return
            if p.reused and not p.received and not p.retried:
                # The kept connection was closed by the child (restarted, or it had too many): ask anew, once.
                self._forget(p)
                p.sock.close()
                self._ask(p.key, p.path, None, retried=True)
                return
            self._fail(p, FetchError("protocol", f"{p.path} closed the connection after {p.received} bytes"
                                                 + ("" if p.length is None else f" of {p.length}")))

    def _forget(self, p: _Pending) -> None:
        del self._pending[p.sock.fileno()]
        self._epoll.unregister(p.sock.fileno())  # before its number can be reused by a new connection

    def _fail(self, p: _Pending, error: FetchError) -> None:
        self._forget(p)
        p.sock.close()
        self.errors[p.key] = error

    def _done(self, p: _Pending, *, keep: bool) -> None:
        del self._pending[p.sock.fileno()]  # one-shot: no more events for it from this epoll
        data = b"".join(p.chunks)
        try:
            content_type, body, close = _parse_answer(p.path, data, p.length)
        except FetchError as e:
            p.sock.close()
            self.errors[p.key] = e
            return
        self.pages[p.key] = (content_type, body)
        if keep and not close and self._connections is not None and len(data) == p.length:
            self._connections.give_back(p.path, p.sock)
        else:
            p.sock.close()


def _answer_length(p: _Pending) -> int | None:
    """Head plus Content-Length, once the head is in; None while it is not (or has no length: read to EOF)."""
    data = p.chunks[0] if len(p.chunks) == 1 else b"".join(p.chunks)
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    at = data.find(b"\r\nContent-Length:", 0, end)
    if at < 0:
        at = data.lower().find(b"\r\ncontent-length:", 0, end)
    if at < 0:
        return None
    stop = data.find(b"\r\n", at + 2)
    try:
        return end + 4 + int(data[at + 17:stop])
    except ValueError:
        return None


_OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: "


def _parse_answer(path: str, data: bytes, length: int | None) -> tuple[str, bytes, bool]:
    """(content type, body, the child closes the connection) of a whole answer; raises FetchError."""
    end = data.find(b"\r\n\r\n")
    if data.startswith(_OK_HEAD) and length == len(data) and end > 0:
        # What every child of this version sends (see _child_socket): no need to parse the rest of the head.
        type_end = data.find(b"\r\n", len(_OK_HEAD))
        close = data.find(b"\r\nConnection: close\r\n", type_end, end + 2) >= 0
        return data[len(_OK_HEAD):type_end].decode("latin-1"), data[end + 4:], close
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise FetchError("protocol", f"{path} answered {len(data)} bytes without an HTTP head")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or status[1] != "200":
        raise FetchError("protocol", f"{path} answered {lines[0][:100]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) != len(body):
        if length is not None and len(data) > length:
            raise FetchError("protocol", f"{path} sent more than its Content-Length of {declared} bytes")
        raise FetchError("protocol", f"{path} sent {len(body)} of {declared} bytes")
    return headers.get("content-type", ""), body, headers.get("connection", "").lower() == "close"


async def fetch_unix(path: str, accept: str, timeout_s: float) -> tuple[str, bytes]:
    """GET /metrics from one child's socket on a new connection: (content type, body); raises FetchError."""
    def fetch() -> ParallelFetch:
        f = ParallelFetch({"child": path}, accept)
        f.finish(timeout_s)
        return f

    done = await trio.to_thread.run_sync(fetch, abandon_on_cancel=True)
    if "child" in done.errors:
        raise done.errors["child"]
    return done.pages["child"]
