"""Listening sockets the node binds and hands to http members.

The node owns each socket for its whole life, so while a group restarts
new connections wait in the kernel's backlog instead of being refused (the
systemd socket-activation / circus way; hypercorn serves ``fd://N``).
"""

from __future__ import annotations

import socket

from web_node.errors import SupervisorError

BACKLOG = 1024


def bind_listen_socket(address: str, *, member: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        raise SupervisorError(
            f"member {member} cannot listen on {address}: {e.strerror or e}; "
            f"stop whatever holds that port or set [members.{member}] listen to a free HOST:PORT") from None
    sock.set_inheritable(False)  # handed over explicitly with pass_fds, never by accident
    return sock


def socket_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
