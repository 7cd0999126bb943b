"""Syslog messages as RFC 5424 lays them out, sent over UDP (RFC 5426) or TCP (RFC 6587).

A message is one line of bytes::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD-ID PARAM="VALUE" ...] MSG

:func:`format_message` builds it (header fields cut to their RFC lengths and to
printable US-ASCII, ``-`` for an absent one; structured-data values UTF-8, as
RFC 5424 section 6.3.3 allows, with the double quote, backslash and ``]`` escaped);
:func:`open_sender` opens a :class:`SyslogSender` to an address such as
``udp://127.0.0.1:514`` or ``tcp://logs.example:601``. Over TCP each message
is framed by octet counting (``LEN SP MSG``, RFC 6587 section 3.4.1), so a
message may hold any byte, newlines included. Connecting and every send have
a deadline: a receiver that stops reading cannot hold the sender forever.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import trio

NILVALUE = "-"
VERSION = 1
BOM = b"\xef\xbb\xbf"

# Header field lengths (RFC 5424 section 6).
MAX_HOSTNAME = 255
MAX_APP_NAME = 48
MAX_PROCID = 128
MAX_MSGID = 32
MAX_SD_NAME = 32

# The largest datagram an IPv4 UDP socket can send (65535 - 8 UDP - 20 IP header bytes).
MAX_UDP_MESSAGE = 65507

DEFAULT_PORTS = {"udp": 514, "tcp": 601}
DEFAULT_SEND_TIMEOUT_S = 30.0

FACILITIES: dict[str, int] = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "audit": 13, "alert": 14, "clock": 15,
    **{f"local{i}": 16 + i for i in range(8)},
}
SEVERITIES: dict[str, int] = {
    "emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7,
}

ADDRESS_HELP = "an address such as udp://127.0.0.1:514 or tcp://logs.example.com:601"

Transport = Literal["udp", "tcp"]


# ---------------------------------------------------------------- formatting


def _header_field(value: str | None, limit: int) -> str:
    """PRINTUSASCII (33..126) only, at most ``limit`` characters, NILVALUE when empty."""
    if not value:
        return NILVALUE
    cleaned = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return cleaned or NILVALUE


def _sd_name(name: str) -> str:
    """An SD-ID or PARAM-NAME: PRINTUSASCII except '=', ']', '"' and space, 1 to 32 characters."""
    if not 1 <= len(name) <= MAX_SD_NAME or any(not 33 <= ord(c) <= 126 or c in '=]"' for c in name):
        raise ValueError(f"{name!r} is not a valid structured-data name: 1 to 32 printable ASCII characters "
                         "without '=', ']', '\"' or spaces")
    return name


def _sd_value(value: str) -> str:
    # RFC 5424 section 6.3.3: '"', '\' and ']' must be escaped with a backslash; any other
    # UTF-8 character stands as it is.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _utf8(text: str) -> bytes:
    # Text that came through JSON may hold lone surrogates ("\ud800"), which are not UTF-8:
    # each becomes U+FFFD rather than failing the whole message.
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace").encode("utf-8")


def format_timestamp(unix_s: float) -> str:
    """RFC 3339 in UTC with microseconds, as RFC 5424 allows (at most 6 fractional digits)."""
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_structured_data(elements: Mapping[str, Mapping[str, str]]) -> str:
    """``[id@32473 key="value"][...]``, or NILVALUE when there are no elements."""
    if not elements:
        return NILVALUE
    parts = []
    for sd_id, params in elements.items():
        body = "".join(f' {_sd_name(k)}="{_sd_value(str(v))}"' for k, v in params.items())
        parts.append(f"[{_sd_name(sd_id)}{body}]")
    return "".join(parts)


def priority(facility: str, severity: str) -> int:
    """PRI = facility * 8 + severity; names as in syslog.conf (``local0``, ``info``)."""
    try:
        return FACILITIES[facility] * 8 + SEVERITIES[severity]
    except KeyError as e:
        raise ValueError(f"unknown syslog facility or severity {e.args[0]!r}; facilities: {', '.join(FACILITIES)}; "
                         f"severities: {', '.join(SEVERITIES)}") from None


def format_message(
    msg: str,
    *,
    facility: str = "user",
    severity: str = "info",
    timestamp: float | None,
    hostname: str | None,
    app_name: str | None,
    procid: str | None = None,
    msgid: str | None = None,
    structured_data: Mapping[str, Mapping[str, str]] | None = None,
) -> bytes:
    """One RFC 5424 message. ``timestamp`` None writes NILVALUE (time unknown).

    A pure-ASCII ``msg`` is sent as it is (MSG-ANY); any other text is UTF-8
    preceded by the BOM, as RFC 5424 section 6.4 requires for MSG-UTF8.
    Structured-data values are UTF-8 (PARAM-VALUE, section 6.3.3; no BOM there).
    """
    header = " ".join((
        f"<{priority(facility, severity)}>{VERSION}",
        format_timestamp(timestamp) if timestamp is not None else NILVALUE,
        _header_field(hostname, MAX_HOSTNAME),
        _header_field(app_name, MAX_APP_NAME),
        _header_field(procid, MAX_PROCID),
        _header_field(msgid, MAX_MSGID),
    ))
    head = header.encode("ascii") + b" " + _utf8(format_structured_data(structured_data or {}))
    if not msg:
        return head
    body = _utf8(msg)
    if not msg.isascii():
        body = BOM + body
    return head + b" " + body


# ---------------------------------------------------------------- addresses


@dataclass(frozen=True)
class SyslogAddress:
    transport: Transport
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}://{host}:{self.port}"


def parse_address(text: object) -> SyslogAddress:
    """``udp://HOST[:PORT]`` or ``tcp://HOST[:PORT]`` (ports default to 514 and 601)."""
    if not isinstance(text, str):
        raise ValueError(f"expected {ADDRESS_HELP}, got {text!r}")
    scheme, sep, rest = text.strip().partition("://")
    if not sep or scheme not in DEFAULT_PORTS:
        raise ValueError(f"{text!r} is not {ADDRESS_HELP} (the scheme must be udp:// or tcp://)")
    rest = rest.rstrip("/")
    if rest.startswith("["):  # [::1]:514
        host, _, port_text = rest[1:].partition("]")
        port_text = port_text.removeprefix(":")
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host, port_text = rest, ""
    if not host:
        raise ValueError(f"{text!r} names no host; expected {ADDRESS_HELP}")
    if port_text and (not port_text.isdigit() or not 0 < int(port_text) < 65536):
        raise ValueError(f"{text!r}: port {port_text!r} is not a number from 1 to 65535")
    port = int(port_text) if port_text else DEFAULT_PORTS[scheme]
    return SyslogAddress(scheme, host, port)  # type: ignore[arg-type]


# ---------------------------------------------------------------- sending


class SyslogSender:
    """An open connection (TCP) or connected socket (UDP) to one syslog receiver."""

    def __init__(self, address: SyslogAddress, *, udp: trio.socket.SocketType | None = None,
                 tcp: trio.SocketStream | None = None, send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S) -> None:
        self.address = address
        self.send_timeout_s = send_timeout_s
        self._udp = udp
        self._tcp = tcp
        self.sent = 0

    async def send(self, message: bytes) -> None:
        """Send one message; raises OSError when the receiver is not there (e.g. ECONNREFUSED) or did not
        take the message within ``send_timeout_s``. After an OSError the sender is unusable: close it."""
        try:
            with trio.fail_after(self.send_timeout_s):
                if self._udp is not None:
                    # A datagram cannot be larger; RFC 5426 allows the sender to truncate.
                    await self._udp.send(message[:MAX_UDP_MESSAGE])
                else:
                    assert self._tcp is not None
                    await self._tcp.send_all(b"%d " % len(message) + message)
        except trio.TooSlowError:
            # Over TCP the receiver stopped reading and the socket buffers are full: a frame may be
            # half sent, so the connection cannot be used any more.
            raise OSError(f"syslog receiver {self.address} did not take a message within {self.send_timeout_s:g} s "
                          "(it stopped reading)") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise OSError(f"syslog receiver {self.address} closed the connection: {e.__cause__ or e}") from e
        self.sent += 1

    async def send_many(self, messages: Iterable[bytes]) -> None:
        for message in messages:
            await self.send(message)

    async def aclose(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            await self._tcp.aclose()


@asynccontextmanager
async def open_sender(address: SyslogAddress, *, connect_timeout_s: float = 10.0,
                      send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S) -> AsyncIterator[SyslogSender]:
    """Connect to ``address``; raises OSError naming it when that fails or takes longer than ``connect_timeout_s``."""
    try:
        with trio.fail_after(connect_timeout_s):
            if address.transport == "tcp":
                stream = await trio.open_tcp_stream(address.host, address.port)
                sender = SyslogSender(address, tcp=stream, send_timeout_s=send_timeout_s)
            else:
                infos = await trio.socket.getaddrinfo(address.host, address.port, type=socket.SOCK_DGRAM)
                family, type_, proto, _, sockaddr = infos[0]
                sock = trio.socket.socket(family, type_, proto)
                try:
                    await sock.connect(sockaddr)
                except BaseException:
                    sock.close()
                    raise
                sender = SyslogSender(address, udp=sock, send_timeout_s=send_timeout_s)
    except trio.TooSlowError:
        raise OSError(f"syslog receiver {address} did not accept a connection within {connect_timeout_s:g} s") from None
    except OSError as e:
        raise OSError(f"cannot reach syslog receiver {address}: {e.strerror or e}") from e
    try:
        yield sender
    finally:
        with trio.CancelScope(shield=True):
            await sender.aclose()
