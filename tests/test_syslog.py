"""RFC 5424 messages, and sending them to real UDP and TCP listeners on 127.0.0.1."""

from __future__ import annotations

import re
import socket

import pytest
import trio

from web_node.syslog import (
    BOM,
    SyslogAddress,
    format_message,
    format_structured_data,
    format_timestamp,
    open_sender,
    parse_address,
    priority,
)

# RFC 5424 section 6, the header: PRI VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD
HEADER = re.compile(
    rb"<(?P<pri>\d{1,3})>(?P<version>[1-9]\d{0,2}) "
    rb"(?P<timestamp>-|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)) "
    rb"(?P<hostname>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
    rb"(?P<sd>-|(?:\[[^\]]*(?:\\\][^\]]*)*\])+)(?: (?P<msg>.*))?\Z",
    re.DOTALL,
)


def parse(message: bytes) -> dict[str, bytes]:
    match = HEADER.match(message)
    assert match, f"not an RFC 5424 message: {message!r}"
    return {k: v for k, v in match.groupdict().items() if v is not None}


def test_every_header_field_in_its_place() -> None:
    msg = format_message(
        "hello world", facility="local0", severity="notice", timestamp=1700000000.25, hostname="ci-host",
        app_name="web-node", procid="42", msgid="log", structured_data={"build@32473": {"id": "42", "job": "unit"}})
    fields = parse(msg)
    assert fields["pri"] == b"133"  # local0 (16) * 8 + notice (5)
    assert fields["version"] == b"1"
    assert fields["timestamp"] == b"2023-11-14T22:13:20.250000Z"
    assert fields["hostname"] == b"ci-host"
    assert fields["app"] == b"web-node"
    assert fields["procid"] == b"42"
    assert fields["msgid"] == b"log"
    assert fields["sd"] == b'[build@32473 id="42" job="unit"]'
    assert fields["msg"] == b"hello world"  # ASCII: MSG-ANY, no BOM


def test_absent_fields_are_nilvalue_and_empty_msg_is_left_out() -> None:
    msg = format_message("", timestamp=None, hostname=None, app_name="", procid=None, msgid=None)
    assert msg == b"<14>1 - - - - - -"  # user.info


def test_header_fields_are_printable_ascii_and_cut_to_rfc_lengths() -> None:
    msg = format_message("x", timestamp=0, hostname="host name\twith spaces", app_name="a" * 60,
                         procid="p" * 200, msgid="m" * 40)
    fields = parse(msg)
    assert fields["hostname"] == b"host_name_with_spaces"
    assert len(fields["app"]) == 48
    assert len(fields["procid"]) == 128
    assert len(fields["msgid"]) == 32
    assert fields["timestamp"] == b"1970-01-01T00:00:00.000000Z"


def test_utf8_message_starts_with_bom() -> None:
    msg = format_message("grüße ✓", timestamp=0, hostname="h", app_name="a")
    body = parse(msg)["msg"]
    assert body.startswith(BOM)
    assert body[len(BOM):].decode("utf-8") == "grüße ✓"


def test_structured_data_values_are_escaped() -> None:
    sd = format_structured_data({"x@32473": {"v": 'a "quoted" \\ back]slash'}})
    assert sd == '[x@32473 v="a \\"quoted\\" \\\\ back\\]slash"]'
    msg = format_message("m", timestamp=0, hostname="h", app_name="a", structured_data={"x@32473": {"v": "]"}})
    assert parse(msg)["sd"] == b'[x@32473 v="\\]"]'


def test_structured_data_names_are_checked() -> None:
    with pytest.raises(ValueError, match="structured-data name"):
        format_structured_data({"bad id": {"k": "v"}})
    with pytest.raises(ValueError, match="structured-data name"):
        format_structured_data({"ok@1": {"k=": "v"}})


def test_priority_and_timestamp() -> None:
    assert priority("kern", "emerg") == 0
    assert priority("local7", "debug") == 191
    with pytest.raises(ValueError, match="facilities"):
        priority("nope", "info")
    assert format_timestamp(1.5) == "1970-01-01T00:00:01.500000Z"


def test_parse_address() -> None:
    assert parse_address("udp://127.0.0.1:5140") == SyslogAddress("udp", "127.0.0.1", 5140)
    assert parse_address("tcp://logs.example") == SyslogAddress("tcp", "logs.example", 601)
    assert parse_address("udp://[::1]:514") == SyslogAddress("udp", "::1", 514)
    assert str(parse_address("udp://[::1]")) == "udp://[::1]:514"
    for bad in ("127.0.0.1:514", "http://x:1", "udp://:514", "tcp://h:0", "tcp://h:port", 514):
        with pytest.raises(ValueError):
            parse_address(bad)


async def test_sends_datagrams_to_a_real_udp_listener() -> None:
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        await listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        messages = [format_message(f"line {i}", timestamp=0, hostname="h", app_name="a") for i in range(3)]
        async with open_sender(parse_address(f"udp://127.0.0.1:{port}")) as sender:
            await sender.send_many(messages)
            assert sender.sent == 3
        received = []
        with trio.fail_after(5):
            for _ in range(3):
                received.append(await listener.recv(65535))
    assert received == messages
    assert parse(received[2])["msg"] == b"line 2"


async def test_sends_octet_counted_frames_to_a_real_tcp_listener() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    messages = [
        format_message("first", timestamp=0, hostname="h", app_name="a"),
        format_message("multi\nline with ✓", timestamp=0, hostname="h", app_name="a"),
    ]
    received = bytearray()

    async def serve_one() -> None:
        stream = await listeners[0].accept()
        async with stream:
            while chunk := await stream.receive_some(65536):
                received.extend(chunk)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one)
            async with open_sender(parse_address(f"tcp://127.0.0.1:{port}")) as sender:
                await sender.send_many(messages)
    await listeners[0].aclose()
    # RFC 6587 octet counting: MSG-LEN SP SYSLOG-MSG, repeated.
    frames = []
    rest = bytes(received)
    while rest:
        length, _, rest = rest.partition(b" ")
        frames.append(rest[: int(length)])
        rest = rest[int(length):]
    assert frames == messages


async def test_unreachable_tcp_receiver_is_an_os_error_naming_it() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(OSError, match=f"tcp://127.0.0.1:{port}"):
            async with open_sender(parse_address(f"tcp://127.0.0.1:{port}")):
                pass


async def test_structured_data_values_are_utf8_on_the_wire() -> None:
    value = 'grüße "quoted" \\ back]slash ✓'
    msg = format_message("m", timestamp=0, hostname="h", app_name="a", structured_data={"x@32473": {"v": value}})
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        await listener.bind(("127.0.0.1", 0))
        async with open_sender(parse_address(f"udp://127.0.0.1:{listener.getsockname()[1]}")) as sender:
            await sender.send(msg)
        with trio.fail_after(5):
            received = await listener.recv(65535)
    sd = parse(received)["sd"]
    # RFC 5424 section 6.3.3: PARAM-VALUE is UTF-8; '"', '\' and ']' escaped; no BOM inside SD.
    assert sd.decode("utf-8") == '[x@32473 v="grüße \\"quoted\\" \\\\ back\\]slash ✓"]'
    assert BOM not in sd
    # Text that is not UTF-8 (a lone surrogate from JSON) is replaced, never an exception.
    odd = format_message("\ud800", timestamp=0, hostname="h", app_name="a", structured_data={"x@1": {"v": "\udfff"}})
    assert parse(odd)["sd"].decode("utf-8") == '[x@1 v="\ufffd\ufffd\ufffd"]'


async def test_a_send_to_a_receiver_that_stops_reading_times_out() -> None:
    listener = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    accepted: list[trio.socket.SocketType] = []
    message = format_message("x" * 1000, timestamp=0, hostname="h", app_name="a")

    async def accept_and_never_read() -> None:
        conn, _ = await listener.accept()
        accepted.append(conn)
        await trio.sleep_forever()

    try:
        with trio.fail_after(30):  # a guard; the sender's own deadline is what must fire
            async with trio.open_nursery() as nursery:
                nursery.start_soon(accept_and_never_read)
                async with open_sender(parse_address(f"tcp://127.0.0.1:{port}"), send_timeout_s=0.5) as sender:
                    with pytest.raises(OSError, match=f"tcp://127.0.0.1:{port} did not take a message within 0.5 s"):
                        while True:  # until the kernel buffers on both ends are full
                            await sender.send(message)
                    assert sender.sent > 0
                nursery.cancel_scope.cancel()
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
