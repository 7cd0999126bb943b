"""A tiny HTTP/1.1 server for the node's metrics page (and the request parsing the children's sockets share).

The node process does not import the web stack (quart, hypercorn cost 0.8 s
and 44 MB), so its /metrics page is served by this: GET and HEAD only,
keep-alive, no request bodies, a bounded request head, a timeout on idle
connections. A handler that raises answers 500 and the server goes on.
The children's unix sockets are in _child_socket, the node's side of them
in _child_fetch.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import trio

MAX_HEAD_BYTES = 16 * 1024
#: An open connection that sends no complete request head within this long is closed.
IDLE_TIMEOUT_S = 30.0

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
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
    body: bytes | list[bytes]  # pieces: sent as they are, without joining them first (see _child_socket)
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
                request, keep_alive = parse_head(head)
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


def parse_head(head: bytes) -> tuple[Request, bool]:
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
    reason = REASONS.get(response.status, "")
    head = [f"HTTP/1.1 {response.status} {reason}", f"Content-Type: {response.content_type}",
            f"Content-Length: {body_length(response.body)}"]
    if response.status == 405:
        head.append("Allow: GET, HEAD")
    head.extend(f"{k}: {v}" for k, v in response.headers)
    if close:
        head.append("Connection: close")
    data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
    body = response.body if isinstance(response.body, bytes) else b"".join(response.body)
    await stream.send_all(data if method == "HEAD" else data + body)


def body_length(body: bytes | list[bytes]) -> int:
    return len(body) if isinstance(body, bytes) else sum(map(len, body))
