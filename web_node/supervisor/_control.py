"""The node's control socket (unix, mode 0600, in data_dir).

Protocol: the client sends one line (``status``), the node answers one JSON
document and closes. ``web-node status`` and ``web-node top`` are clients.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable
from typing import Any

import trio

from web_node.errors import SupervisorError
from web_node.log import node_logger

MAX_REQUEST = 256
_log = node_logger()


async def serve_control(path: str, status: Callable[[], dict[str, Any]], *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by a node that was killed; the node lock says we are the only one
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file is created 0600: status shows pids and paths
    try:
        await sock.bind(path)
    finally:
        os.umask(old_umask)
    sock.listen(16)
    try:
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await sock.accept()
                nursery.start_soon(_answer, conn, status)
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def _answer(conn: trio.socket.SocketType, status: Callable[[], dict[str, Any]]) -> None:
    stream = trio.SocketStream(conn)
    async with stream:
        with trio.move_on_after(5):
            await _answer_on(stream, status)


async def _answer_on(stream: trio.SocketStream, status: Callable[[], dict[str, Any]]) -> None:
    try:
        request = (await stream.receive_some(MAX_REQUEST)).decode(errors="replace").strip()
        if request == "status":
            body = json.dumps(status()).encode()
        else:
            body = json.dumps({"error": f"unknown request {request!r}; the node answers: status"}).encode()
        await stream.send_all(body)
    except Exception as e:  # a broken answer must never take the node down
        _log.error("control socket: could not answer: %s", e, exc_info=e)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(json.dumps({"error": f"the node failed to answer: {e}"}).encode())


def request_status(path: str, timeout: float = 5.0) -> dict[str, Any]:
    """Ask a running node; raises SupervisorError saying how to find it when it is not there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise SupervisorError(
                f"no web-node is running with control socket {path}; start one, or point at its data_dir "
                "with --config or --data-dir") from None
        except PermissionError:
            raise SupervisorError(f"no permission to open {path}: run status as the user that runs the node") from None
        s.sendall(b"status\n")
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    result: dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
    if "error" in result:
        raise SupervisorError(f"the node at {path} answered: {result['error']}")
    return result
