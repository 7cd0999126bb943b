"""sd_notify, the real protocol: the test binds the unix datagram socket systemd
would (``NOTIFY_SOCKET``) and reads what a real ``web-node web`` sends there:
READY=1 only once every group is up, STATUS= with the group count,
RELOADING=1 then READY=1 around a SIGHUP reload, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from supervisor_nodes import BACKEND, Node, disabled, new_ports, node_toml, start

from web_node.supervisor._notify import Notifier

CONFIG: dict[str, Any] = {
    "members": disabled("ui", "gateway"),
    "groups": {"backend": {"members": list(BACKEND), "memory_max": "256M"}},
}


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    try:
        yield sock
    finally:
        sock.close()


def receive(sock: socket.socket, timeout: float) -> dict[str, str]:
    """The next datagram as {KEY: VALUE}."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        raise AssertionError(f"no sd_notify message within {timeout} s") from None
    return dict(line.split("=", 1) for line in data.decode().splitlines() if line)


def test_real_kernel_the_node_tells_systemd_ready_status_reloading_and_stopping(
        notify_socket: socket.socket, start_node: Any, cgroup_root: str, data_dir: Path, tmp_path: Path) -> None:
    address = notify_socket.getsockname()
    node: Node = start(tmp_path, "web", data_dir=data_dir, cgroup_root=cgroup_root, ports=new_ports(),
                       launch=lambda args: start_node(args, env={"NOTIFY_SOCKET": address}), **CONFIG)

    ready = receive(notify_socket, 90)
    # Sent only once every group is up: the node's own status agrees at that moment.
    groups = node.groups()
    assert ready == {"READY": "1", "STATUS": "2 of 2 groups up"}, (ready, node.log())
    assert {name: g["state"] for name, g in groups.items()} == {"api": "up", "backend": "up"}
    # No group child speaks for the node: the variable is not in their environment.
    for g in groups.values():
        assert b"NOTIFY_SOCKET=" not in Path(f"/proc/{g['pid']}/environ").read_bytes()

    bigger = {**CONFIG, "groups": {"backend": {"members": list(BACKEND), "memory_max": "300M"}}}
    before_reload = time.monotonic_ns() // 1000
    # Rewrites the config file, then SIGHUP.
    node.reload(node_toml(data_dir=data_dir, cgroup_root=cgroup_root, ports=node.ports, **bigger))
    reloading = receive(notify_socket, 30)
    assert reloading["RELOADING"] == "1" and reloading["STATUS"].startswith("reloading the configuration"), reloading
    assert int(reloading["MONOTONIC_USEC"]) >= before_reload
    assert receive(notify_socket, 30) == {"READY": "1", "STATUS": "2 of 2 groups up"}

    node.proc.proc.send_signal(signal.SIGTERM)
    assert receive(notify_socket, 30) == {"STOPPING": "1", "STATUS": "stopping 2 group(s)"}
    assert node.proc.proc.wait(60) == 0, node.log()


def test_notifier_sends_to_an_abstract_socket_and_survives_a_missing_one(tmp_path: Path) -> None:
    """``@name`` is the abstract namespace (as systemd's own socket can be); a socket that is
    gone is logged once and the node goes on."""
    import logging

    name = f"web-node-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert Notifier("@" + name, logging.getLogger("test")).send(ready=1, status="x")
        assert receive(sock, 5) == {"READY": "1", "STATUS": "x"}
    gone = Notifier(str(tmp_path / "nobody.sock"), logging.getLogger("test"))
    assert gone.send(stopping=1) is False
    assert Notifier(None, logging.getLogger("test")).send(ready=1) is False
