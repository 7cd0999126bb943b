"""Serving an http member: hypercorn's trio server with a connection cap, timeouts and TLS.

:func:`serve` is ``hypercorn.trio.serve`` (0.18) with one change: each
listener is wrapped so that at most ``max_connections`` connections are served
at once. The next connection is accepted only when one ends, so the rest wait
in the kernel's listen backlog (no task, no buffer of ours) instead of being
refused — like a group that restarts. The slots are shared by every address
the member listens on.

Timeouts (hypercorn's own mechanisms, configured from :class:`HttpSettings`):

- ``header_timeout``: hypercorn's idle timer runs from the connect (and from
  the end of each answer on a keep-alive connection) until a complete request
  head has arrived; a client that sends nothing or dribbles its head is cut.
- ``body_timeout``: enforced by the request gate (``_gate.py``) from the
  request head to the end of the body. hypercorn's ``read_timeout`` is not used:
  it would also cut event streams, whose clients rightly send nothing.

TLS: ``certfile`` and ``keyfile`` (PEM) make the listener speak HTTPS only.
ALPN offers only http/1.1: the bounds here are the ones tested on h11.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import hypercorn.config
import trio
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

from web_node.config import HttpSettings

#: What hypercorn may queue towards the app per request before it stops reading the socket
#: (each item is one read of up to 64 KiB). The app reads a body as it comes, so a short queue
#: costs nothing; it bounds what one connection holds while its answer is being decided.
APP_QUEUE_MESSAGES = 2


def server_config(settings: HttpSettings, *, bind: str, grace_s: float, errorlog: logging.Logger) -> hypercorn.config.Config:
    """The hypercorn configuration of one member's listener."""
    cfg = hypercorn.config.Config()
    cfg.bind = [bind]
    cfg.graceful_timeout = grace_s
    # The idle timer is also the header timeout; a graceful stop ends idle connections at once
    # (hypercorn's idle task also waits on the server's "terminated" event).
    cfg.keep_alive_timeout = settings.header_timeout_s
    cfg.max_app_queue_size = APP_QUEUE_MESSAGES
    cfg.accesslog = None
    cfg.errorlog = errorlog
    if settings.certfile and settings.keyfile:
        cfg.certfile, cfg.keyfile = settings.certfile, settings.keyfile
        cfg.alpn_protocols = ["http/1.1"]
        cfg.ssl_handshake_timeout = settings.header_timeout_s
    return cfg


class _TCPServer(TCPServer):
    """hypercorn's connection, ended as soon as the client has closed its side.

    hypercorn 0.18 keeps a connection's idle timer running after the client's
    EOF, so a client that connects and leaves would hold its connection slot
    for a whole ``header_timeout``.
    """

    async def _read_data(self) -> None:
        await super()._read_data()
        await self.idle_task.stop()


class CappedListener(trio.abc.Listener[trio.abc.Stream]):
    """Accepts only while one of ``slots`` is free; the connection's handler gives the slot back."""

    def __init__(self, inner: trio.abc.Listener[Any], slots: trio.Semaphore) -> None:
        self.inner = inner
        self.slots = slots

    async def accept(self) -> trio.abc.Stream:
        await self.slots.acquire()
        try:
            stream: trio.abc.Stream = await self.inner.accept()
        except BaseException:
            self.slots.release()
            raise
        return stream

    async def aclose(self) -> None:
        await self.inner.aclose()


async def serve(
    app: Any,
    cfg: hypercorn.config.Config,
    settings: HttpSettings,
    *,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``cfg.bind`` until ``shutdown_trigger`` returns; started() with the bound URLs.

    Mirrors ``hypercorn.trio.run.worker_serve`` (lifespan, graceful stop within
    ``cfg.graceful_timeout``), with the listeners capped.
    """
    wrapped = wrap_app(app, cfg.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, cfg, lifespan_state)
    context = WorkerContext(None)
    slots = trio.Semaphore(settings.max_connections)

    async def handle(stream: trio.abc.Stream) -> None:
        try:
            await _TCPServer(wrapped, cfg, context, ConnectionState(lifespan_state.copy()), stream)  # type: ignore[arg-type]
        finally:
            slots.release()

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            sockets = cfg.create_sockets()
            listeners: list[trio.abc.Listener[Any]] = []
            binds: list[str] = []
            ssl_context = cfg.create_ssl_context()
            for sock in sockets.secure_sockets:
                sock.listen(cfg.backlog)
                assert ssl_context is not None
                listeners.append(CappedListener(trio.SSLListener(
                    trio.SocketListener(trio.socket.from_stdlib_socket(sock)), ssl_context, https_compatible=True), slots))
                binds.append(f"https://{repr_socket_addr(sock.family, sock.getsockname())}")
            for sock in sockets.insecure_sockets:
                sock.listen(cfg.backlog)
                listeners.append(CappedListener(trio.SocketListener(trio.socket.from_stdlib_socket(sock)), slots))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            task_status.started(binds)
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(partial(trio.serve_listeners, handle, listeners, handler_nursery=server_nursery))
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, others = error.split((ShutdownError, KeyboardInterrupt))
                if others is not None:
                    raise others from None
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + cfg.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
