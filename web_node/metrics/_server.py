"""A tiny HTTP/1.1 server for the metrics pages, and the client the node fetches children with.

The node process does not import the web stack (quart, hypercorn cost 0.8 s
and 44 MB), so its /metrics page is served by this: GET and HEAD only,
keep-alive, no request bodies, a bounded request head, a timeout on idle
connections. A handler that raises answers 500 and the server goes on.

Children serve their own page on a unix socket (mode 0600, in the node's
0700 run directory), one connection at a time, from a thread of their own
(:func:`serve_unix`). The
protocol there is plain HTTP/1.0: the node sends ``GET /metrics HTTP/1.0``
with the scraper's ``Accept`` header, the child answers with a
Content-Length and closes. The node asks every child at once from one
worker thread (:class:`ParallelFetch`). An operator can look at one child's
page with::

    curl --unix-socket DATA_DIR/run/GROUP.metrics.sock http://child/metrics
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import selectors
import socket
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import trio

MAX_HEAD_BYTES = 16 * 1024
#: A child drops a connection that has not sent its request within this long.
CHILD_REQUEST_TIMEOUT_S = 2.0
#: An open connection that sends no complete request head within this long is closed.
IDLE_TIMEOUT_S = 30.0

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 505: "HTTP Version Not Supported"}

log = logging.getLogger("web_node.metrics")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str]  # lower-cased names


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)


Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9391`` for IPv6) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics_listen {listen!r} is not HOST:PORT (for example 127.0.0.1:9391)")
    return host.strip("[]") or "0.0.0.0", int(port)


async def open_tcp(listen: str) -> list[trio.SocketListener]:
    host, port = parse_listen(listen)
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as e:
        raise OSError(e.errno, f"cannot listen on {listen} for the metrics page: {e.strerror or e}; "
                               f"set [node] metrics_listen to a free HOST:PORT, or to \"\" to switch the page off") from None


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


async def serve(listeners: list[trio.SocketListener], handler: Handler, *,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``handler`` on ``listeners`` until cancelled; started() with the bound addresses."""
    await trio.serve_listeners(partial(_connection, handler), listeners,
                               task_status=_AddressReporter(task_status))


class _AddressReporter:
    """Turns serve_listeners' started(listeners) into started(["127.0.0.1:9391", ...])."""

    def __init__(self, inner: trio.TaskStatus[list[str]]) -> None:
        self._inner = inner

    def started(self, listeners: list[trio.SocketListener] | None = None) -> None:
        self._inner.started([_address(lst) for lst in listeners or []])


def _address(listener: trio.SocketListener) -> str:
    name = listener.socket.getsockname()
    if isinstance(name, tuple):
        host = name[0]
        return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"
    return str(name)


async def _connection(handler: Handler, stream: trio.SocketStream) -> None:
    buf = bytearray()
    try:
        while True:
            head = None
            with trio.move_on_after(IDLE_TIMEOUT_S):
                try:
                    head = await _read_head(stream, buf)
                except BadRequest as e:
                    await _send(stream, "GET", Response(e.status, f"{e}\n".encode()), close=True)
                    return
            if head is None:
                return
            try:
                request, keep_alive = _parse_head(head)
            except BadRequest as e:
                await _send(stream, "GET", Response(e.status, f"{e}\n".encode()), close=True)
                return
            try:
                response = await handler(request)
            except Exception as e:  # the page must keep working for the next scrape
                log.error("metrics page: %s %s failed: %s: %s", request.method, request.path, type(e).__name__, e, exc_info=e)
                text = f"internal error building the metrics page: {type(e).__name__}: {e}; see the log\n"
                response = Response(500, text.encode())
            await _send(stream, request.method, response, close=not keep_alive)
            if not keep_alive:
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return  # the scraper went away
    except OSError as e:
        if e.errno not in (errno.ECONNRESET, errno.EPIPE):
            log.warning("metrics page: connection error: %s", e)
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _read_head(stream: trio.SocketStream, buf: bytearray) -> bytes | None:
    """The next request head (without the blank line), or None at a clean EOF."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end > MAX_HEAD_BYTES or (end < 0 and len(buf) > MAX_HEAD_BYTES):
            raise BadRequest(431, f"request head longer than {MAX_HEAD_BYTES} bytes")
        if end >= 0:
            head = bytes(buf[:end])
            del buf[:end + 4]
            return head
        data = await stream.receive_some(65536)
        if not data:
            return None
        buf += data


def _parse_head(head: bytes) -> tuple[Request, bool]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise BadRequest(400, f"malformed request line {lines[0][:100]!r}")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest(505, f"{version} is not served here; use HTTP/1.1")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(400, f"malformed header line {line[:100]!r}")
        headers[name.strip().lower()] = value.strip()
    if method not in ("GET", "HEAD"):
        raise BadRequest(405, f"{method} is not allowed here: the metrics page answers GET and HEAD")
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        raise BadRequest(400, "the metrics page takes no request body")
    connection = headers.get("connection", "").lower()
    keep_alive = (version == "HTTP/1.1" and "close" not in connection) or (version == "HTTP/1.0" and "keep-alive" in connection)
    return Request(method, target.split("?", 1)[0], headers), keep_alive


async def _send(stream: trio.SocketStream, method: str, response: Response, *, close: bool) -> None:
    reason = _REASONS.get(response.status, "")
    head = [f"HTTP/1.1 {response.status} {reason}", f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}"]
    if response.status == 405:
        head.append("Allow: GET, HEAD")
    head.extend(f"{k}: {v}" for k, v in response.headers)
    if close:
        head.append("Connection: close")
    data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
    await stream.send_all(data if method == "HEAD" else data + response.body)


# ---------------------------------------------------------------- a child's unix socket


#: What a child's socket calls for each request, in the socket's own thread.
SyncHandler = Callable[[Request], Response]


async def serve_unix(listener: socket.socket, handler: SyncHandler, *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer connections on a listening unix socket, from a thread of their own, until cancelled.

    Only the node (and an operator with curl) connects, once per scrape, so
    one thread answers connections in turn: it wakes when the listening
    socket is readable, accepts, reads the request (the node sends it right
    after connecting), calls ``handler`` and sends the answer. The child's
    trio loop is not woken at all: a pass of trio's run loop cost a scraped
    child ~280 µs of CPU (with 50 children on two cores their caches are
    cold), five times what the thread costs (measured in
    bench/bench_metrics.py's setting). ``handler`` therefore runs outside
    the trio thread: it must only read state the trio thread writes (see
    ProcessMetrics.write). A peer that does not send its request or take
    the answer within ``CHILD_REQUEST_TIMEOUT_S`` is dropped.
    """
    stop_r, stop_w = os.pipe2(os.O_CLOEXEC)
    thread = threading.Thread(target=_serve_unix_thread, args=(listener, handler, stop_r),
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


def _serve_unix_thread(listener: socket.socket, handler: SyncHandler, stop_fd: int) -> None:
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    poller.register(stop_fd, select.POLLIN)
    while True:
        if any(fd == stop_fd for fd, _ in poller.poll()):
            return
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            continue  # the peer gave up before we got to it
        except OSError as e:  # ECONNABORTED, EMFILE: the next connection may do better
            log.warning("metrics socket: cannot accept a connection: %s", e)
            if select.select([stop_fd], [], [], 0.05)[0]:  # do not spin on a lasting error
                return
            continue
        with conn:
            conn.setblocking(False)
            try:
                _answer_one(conn, handler, stop_fd, time.monotonic() + CHILD_REQUEST_TIMEOUT_S)
            except OSError as e:
                if e.errno not in (errno.ECONNRESET, errno.EPIPE):
                    log.warning("metrics socket: connection error: %s", e)
            except Exception as e:  # the thread must live on for the next scrape
                log.error("metrics socket: answering failed: %s: %s", type(e).__name__, e, exc_info=e)


def _wait(fd: int | socket.socket, stop_fd: int, events: int, deadline: float) -> bool:
    """Wait until ``fd`` has ``events``, the stop pipe is readable, or ``deadline``; True when it may go on."""
    poller = select.poll()
    poller.register(fd, events)
    poller.register(stop_fd, select.POLLIN)
    remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
    ready = poller.poll(remaining_ms)
    return bool(ready) and all(f != stop_fd for f, _ in ready)


def _answer_one(conn: socket.socket, handler: SyncHandler, stop_fd: int, deadline: float) -> None:
    buf = bytearray()
    while (end := buf.find(b"\r\n\r\n")) < 0:
        if len(buf) > MAX_HEAD_BYTES:
            return
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            if not _wait(conn, stop_fd, select.POLLIN, deadline):
                return
            continue
        if not data:
            return
        buf += data
    try:
        request, _ = _parse_head(bytes(buf[:end]))
    except BadRequest as e:
        response = Response(e.status, f"{e}\n".encode())
        method = "GET"
    else:
        method = request.method
        try:
            response = handler(request)
        except Exception as e:  # the next scrape must work again
            log.error("metrics socket: building the page failed: %s: %s", type(e).__name__, e, exc_info=e)
            response = Response(500, f"internal error building the metrics page: {type(e).__name__}: {e}\n".encode())
    head = (f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}\r\nContent-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\nConnection: close\r\n\r\n").encode("latin-1")
    out = memoryview(head if method == "HEAD" else head + response.body)
    while out:
        try:
            sent = conn.send(out)
        except BlockingIOError:
            if not _wait(conn, stop_fd, select.POLLOUT, deadline):
                return
            continue
        out = out[sent:]


# ---------------------------------------------------------------- client side (the node)


class FetchError(Exception):
    """A child's page could not be had; ``reason`` is timeout, connect or protocol."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def request_bytes(accept: str) -> bytes:
    accept_line = accept.replace("\r", " ").replace("\n", " ")
    return f"GET /metrics HTTP/1.0\r\nHost: child\r\nAccept: {accept_line}\r\n\r\n".encode("latin-1", "replace")


class ParallelFetch:
    """GET /metrics from many unix sockets at once, with blocking calls for one worker thread.

    The constructor connects and sends every request (a unix socket takes a
    small request at once), so the children render while the caller does
    other work; :meth:`finish` then collects the answers until a deadline.
    A plain selector loop costs tens of µs per child where trio's streams
    cost hundreds, which matters with 50 groups on two cores.
    """

    def __init__(self, targets: Mapping[str, str], accept: str) -> None:
        self.paths = dict(targets)
        self.pages: dict[str, tuple[str, bytes]] = {}  # key -> (content type, body)
        self.errors: dict[str, FetchError] = {}
        self._selector = selectors.DefaultSelector()
        request = request_bytes(accept)
        for key, path in self.paths.items():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            try:
                sock.connect(path)
                if sock.send(request) != len(request):
                    raise BlockingIOError(errno.EAGAIN, "socket buffer full")
            except OSError as e:
                sock.close()
                # EAGAIN on connect: the child's listen backlog is full, it does not accept.
                self.errors[key] = FetchError("connect", f"cannot connect to {path}: {e.strerror or e}")
                continue
            self._selector.register(sock, selectors.EVENT_READ, (key, []))

    def finish(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        selector = self._selector
        try:
            while selector.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                for sel_key, _ in selector.select(remaining):
                    sock = sel_key.fileobj
                    assert isinstance(sock, socket.socket)
                    key, chunks = sel_key.data
                    # Read until the socket is empty: a child sends its page and closes at once, so the
                    # end of the answer is usually there already, without another wake-up of this thread.
                    try:
                        while data := sock.recv(65536):
                            chunks.append(data)
                    except BlockingIOError:
                        continue
                    except OSError as e:
                        self.errors[key] = FetchError("connect", f"connection to {self.paths[key]} broke: {e}")
                    selector.unregister(sock)
                    sock.close()
                    if key not in self.errors:
                        try:
                            self.pages[key] = _parse_response(self.paths[key], b"".join(chunks))
                        except FetchError as e:
                            self.errors[key] = e
            for sel_key in list(selector.get_map().values()):
                key = sel_key.data[0]
                self.errors[key] = FetchError("timeout", f"no complete answer from {self.paths[key]} within {timeout_s:g} s")
        finally:
            for sel_key in list(selector.get_map().values()):
                sel_key.fileobj.close()  # type: ignore[union-attr]
            selector.close()


async def fetch_unix(path: str, accept: str, timeout_s: float) -> tuple[str, bytes]:
    """GET /metrics from one child's unix socket: (content type, body); raises FetchError."""
    def fetch() -> ParallelFetch:
        f = ParallelFetch({"child": path}, accept)
        f.finish(timeout_s)
        return f

    done = await trio.to_thread.run_sync(fetch, abandon_on_cancel=True)
    if "child" in done.errors:
        raise done.errors["child"]
    return done.pages["child"]


def _parse_response(path: str, data: bytes) -> tuple[str, bytes]:
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
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) != len(body):
        raise FetchError("protocol", f"{path} sent {len(body)} of {length} bytes")
    return headers.get("content-type", ""), body
