"""syslog-drainer: ships finished build logs to syslog (RFC 5424) when configured.

Each run ships the oldest finished builds not shipped yet (at most ``window``
of them): one message per line of step output (MSGID ``log``), then one
summary message (MSGID ``finish``), each carrying the build in structured
data (UTF-8, RFC 5424 section 6.3.3)::

    <14>1 2025-01-01T10:00:00.000000Z ci-host web-node 42 log [build@32473 id="42" pipeline="p" job="unit" step="0"] hello

What was shipped is marked on the build in the store, after its last
message went out, so a restart (of this process or of another node's drainer
on the same database) does not ship a build twice, and gc keeps every build
not shipped yet while a drainer is configured. A build whose sending failed
half-way is shipped again, whole, on the next run: delivery is at least once.

Connecting and each message have a deadline (``send_timeout``): a receiver
that stops reading fails the run, which is retried on the next one. A build
whose log cannot be turned into messages (a damaged record) is logged,
replaced by one message that says so, marked shipped and skipped: one bad
build never stops the others from shipping.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterable, Iterator

from web_node.errors import MemberError, NotFound, StoreError
from web_node.members._context import MemberContext
from web_node.members._member import Member, Option
from web_node.store import Build, BuildEvent
from web_node.syslog import (
    ADDRESS_HELP,
    FACILITIES,
    SyslogAddress,
    SyslogSender,
    format_message,
    open_sender,
    parse_address,
)
from web_node.units import DURATION_HELP, parse_duration

# Structured-data ID: a name of our own must carry "@" and an enterprise number;
# 32473 is the number RFC 5612 reserves for documentation and examples.
SD_ID = "build@32473"
# Longer output lines are cut into pieces of this many characters (one message each).
MAX_LINE_CHARS = 4000
SEND_TIMEOUT_S = 30.0

_SEVERITY_OF_STATUS = {"succeeded": "notice", "failed": "warning", "errored": "err", "aborted": "warning"}


def _parse_optional_address(value: object) -> SyslogAddress | None:
    if value in (None, ""):
        return None
    return parse_address(value)


def _parse_facility(value: object) -> str:
    if value not in FACILITIES:
        raise ValueError(f"{value!r} is not a syslog facility; valid: {', '.join(FACILITIES)}")
    return str(value)


def _parse_app_name(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 48 or not all(33 <= ord(c) <= 126 for c in value):
        raise ValueError(f"{value!r} must be 1 to 48 printable ASCII characters without spaces")
    return value


def _parse_send_timeout(value: object) -> float:
    seconds = parse_duration(value)  # type: ignore[arg-type]
    if seconds <= 0:
        raise ValueError(f"{value!r} must be longer than zero")
    return seconds


def _parse_window(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
        raise ValueError(f"{value!r} must be a whole number from 1 to 100000")
    return value


# ---------------------------------------------------------------- messages


async def build_messages(build: Build, pages: AsyncIterable[list[BuildEvent]], *, facility: str, hostname: str,
                         app_name: str) -> AsyncGenerator[bytes, None]:
    """The RFC 5424 messages for one finished build: its output line by line, then a summary.

    ``pages``: the build's events a page at a time (``AsyncStore.event_pages``), never all in memory."""
    sd_base = {"id": str(build.id), "pipeline": build.pipeline, "job": build.job}

    def message(text: str, when: float | None, msgid: str, severity: str, extra: dict[str, str]) -> bytes:
        return format_message(text, facility=facility, severity=severity, timestamp=when, hostname=hostname,
                              app_name=app_name, procid=str(build.id), msgid=msgid,
                              structured_data={SD_ID: {**sd_base, **extra}})

    # Output arrives in chunks that may end mid-line: join each step's chunks, cut at newlines.
    pending: dict[str, str] = {}
    async for events in pages:
        for event in events:
            if event.type == "log":
                step = str(event.payload.get("step", ""))
                text = pending.pop(step, "") + str(event.payload.get("output", ""))
                *lines, rest = text.split("\n")
                if rest:
                    pending[step] = rest
                for line in lines:
                    for piece in _pieces(line.rstrip("\r")):
                        yield message(piece, event.time, "log", "info", {"step": step})
            elif event.type in ("error", "truncated"):
                yield message(str(event.payload.get("message", "")), event.time, "error", "err", {})
    for step, rest in pending.items():
        for piece in _pieces(rest.rstrip("\r")):
            yield message(piece, build.end_time, "log", "info", {"step": step})
    took = f" in {build.end_time - build.start_time:.1f} s" if build.end_time and build.start_time else ""
    yield message(f"build {build.id} of {build.pipeline}/{build.job} {build.status}{took} on worker {build.worker or '-'}",
                  build.end_time, "finish", _SEVERITY_OF_STATUS.get(build.status, "notice"), {"status": build.status})


def _pieces(line: str) -> Iterator[str]:
    if not line:
        yield ""
        return
    for start in range(0, len(line), MAX_LINE_CHARS):
        yield line[start:start + MAX_LINE_CHARS]


# ---------------------------------------------------------------- the member

#: Events read per store query: a build's output is shipped a page at a time (an event holds at most
#: what one gateway request may carry, usually 64 KiB of text).
EVENT_PAGE = 16



class _SendFailed(Exception):
    """The receiver failed (unreachable, closed, too slow): the run stops; the cause is an OSError."""


async def tick(ctx: MemberContext) -> None:
    address: SyslogAddress | None = ctx.option("address")
    if address is None:
        if not ctx.state.get("told_unset"):
            ctx.log.info("nothing to do: no syslog receiver configured; set [members.syslog-drainer] address "
                         "to %s to ship finished build logs, or disable this member", ADDRESS_HELP)
            ctx.state["told_unset"] = True
        return
    todo = await ctx.store.list_unshipped_builds(ctx.option("window"))
    if not todo:
        return
    timeout_s: float = ctx.option("send_timeout")
    shipped: list[int] = []
    try:
        async with open_sender(address, connect_timeout_s=timeout_s, send_timeout_s=timeout_s) as sender:
            for build in todo:
                if await _ship(ctx, sender, build):
                    await ctx.store.mark_build_shipped(build.id, time.time())
                    shipped.append(build.id)
    except (OSError, _SendFailed) as e:
        cause = e.__cause__ if isinstance(e, _SendFailed) else e
        raise MemberError(
            f"shipping build logs to {address} failed after {len(shipped)} of {len(todo)} builds: {cause}; "
            "check that the syslog receiver runs, reads and accepts this transport; the rest is retried next run",
            member=ctx.member.name) from cause
    finally:
        if shipped:
            ctx.log.info("shipped the logs of %d build(s) to %s (ids %s)", len(shipped), address, _ids(shipped))


async def _ship(ctx: MemberContext, sender: SyslogSender, build: Build) -> bool:
    """Send one build's messages; False when the build is gone. A bad build is logged, said so in one
    message, and counts as shipped; a failing receiver raises _SendFailed; a failing store, StoreError."""
    hostname = socket.gethostname()
    facility: str = ctx.option("facility")
    app_name: str = ctx.option("app_name")
    try:
        async with contextlib.aclosing(build_messages(build, ctx.store.event_pages(build.id, page=EVENT_PAGE),
                                                      facility=facility, hostname=hostname,
                                                      app_name=app_name)) as messages:
            async for message in messages:
                try:
                    await sender.send(message)
                except OSError as e:
                    raise _SendFailed() from e
    except _SendFailed:
        raise
    except NotFound:
        return False  # deleted a moment ago (its pipeline was removed)
    except StoreError:
        raise  # the database failed, not this build: the run fails and is retried
    except Exception as e:  # a damaged record, an output the formatter cannot take: this build only
        what = f"{type(e).__name__}: {e}"
        ctx.log.error("the log of build %d of %s/%s cannot be shipped (%s); skipping it so that the other builds "
                      "ship; read it with the API (GET /api/v1/builds/%d/events) or repair its events",
                      build.id, build.pipeline, build.job, what, build.id)
        notice = format_message(
            f"the log of build {build.id} of {build.pipeline}/{build.job} ({build.status}) could not be shipped: "
            f"{what}; see the web-node log", facility=facility, severity="err", timestamp=build.end_time,
            hostname=hostname, app_name=app_name, procid=str(build.id), msgid="unshippable",
            structured_data={SD_ID: {"id": str(build.id), "pipeline": build.pipeline, "job": build.job,
                                     "status": build.status}})
        try:
            await sender.send(notice)
        except OSError as send_error:
            raise _SendFailed() from send_error
    return True


def _ids(ids: list[int]) -> str:
    return ", ".join(map(str, ids)) if len(ids) <= 10 else f"{ids[0]}..{ids[-1]}"


MEMBER = Member(
    name="syslog-drainer",
    role="backend",
    kind="periodic",
    description="ships finished build logs to syslog (RFC 5424) when configured",
    interval_s=30.0,
    options=(
        Option("address", _parse_optional_address, None,
               f"where to send build logs: {ADDRESS_HELP}; unset: ship nothing", "string"),
        Option("facility", _parse_facility, "user", f"syslog facility of the messages: {', '.join(FACILITIES)}", "string"),
        Option("app_name", _parse_app_name, "web-node", "APP-NAME of the messages (at most 48 printable ASCII characters)",
               "string"),
        Option("window", _parse_window, 1000, "at most how many builds each run ships, the oldest first", "integer"),
        Option("send_timeout", _parse_send_timeout, SEND_TIMEOUT_S,
               f"give up the run when the receiver takes longer than this to accept the connection or one message "
               f"(the rest is retried next run): {DURATION_HELP}", "duration"),
    ),
    tick=tick,
)
