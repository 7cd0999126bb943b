"""sd_notify: tell systemd (``Type=notify``) where the node is in its life.

The protocol (sd_notify(3)): when ``NOTIFY_SOCKET`` is set, send newline
separated ``KEY=VALUE`` lines as one datagram to that unix socket; a path
starting with ``@`` names the abstract namespace. The node sends
``READY=1`` once every group is up (or gave up), ``STATUS=`` with the group
count, ``RELOADING=1`` (with ``MONOTONIC_USEC``) and then ``READY=1``
around a SIGHUP reload, and ``STOPPING=1`` when a stop begins.

Invariants: the variable is taken out of the environment when the notifier
is made, so no group child (which inherits the environment) can speak for
the node (systemd's default ``NotifyAccess=main`` would drop its messages
anyway); a failing send is logged once and never stops the node: systemd
then times the start out, which says more than a crash would.
"""

from __future__ import annotations

import logging
import os
import socket
import time

ENV = "NOTIFY_SOCKET"


class Notifier:
    """Sends sd_notify datagrams to ``address``, or nothing when it is None."""

    def __init__(self, address: str | None, log: logging.LoggerAdapter[logging.Logger] | logging.Logger) -> None:
        self.address = address
        self.log = log
        self._warned = False

    @classmethod
    def from_environment(cls, log: logging.LoggerAdapter[logging.Logger] | logging.Logger) -> Notifier:
        return cls(os.environ.pop(ENV, None) or None, log)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """One datagram ``KEY=VALUE\\n...`` (keys upper-cased); True when it went out."""
        if self.address is None:
            return False
        payload = "".join(f"{key.upper()}={value}\n" for key, value in fields.items()).encode()
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(payload, target)
        except OSError as e:
            if not self._warned:
                self._warned = True
                self.log.warning("cannot notify systemd through NOTIFY_SOCKET=%s: %s; systemd will not see this "
                                 "node's readiness (check the unit's Type= and NotifyAccess=)", self.address, e)
            return False
        return True

    def ready(self, status: str) -> None:
        self.send(ready=1, status=status)

    def reloading(self, status: str) -> None:
        # MONOTONIC_USEC lets systemd (253+, Type=notify-reload) match the reload to its request.
        self.send(reloading=1, status=status, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self, status: str) -> None:
        self.send(stopping=1, status=status)

    def status(self, status: str) -> None:
        self.send(status=status)


__all__ = ["ENV", "Notifier"]
