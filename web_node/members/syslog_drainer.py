"""syslog-drainer: ships finished build logs to syslog (RFC 5424) when configured.

Each run looks at the newest builds (``window`` of them), and ships every
finished one it has not shipped before: one message per line of step output
(MSGID ``log``), then one summary message (MSGID ``finish``), each carrying the
build in structured data::

    <14>1 2025-01-01T10:00:00.000000Z ci-host web-node 42 log [build@32473 id="42" pipeline="p" job="unit" step="0"] hello

What was shipped is remembered in ``data_dir/syslog-drainer.json`` (written
atomically after each build), so a restart does not ship a build twice. A
build whose sending failed half-way is shipped again, whole, on the next run:
delivery is at least once.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from web_node.errors import MemberError, StoreError
from web_node.members._context import MemberContext
from web_node.members._member import Member, Option
from web_node.store import FINISHED_STATUSES, Build, BuildEvent
from web_node.syslog import ADDRESS_HELP, FACILITIES, SyslogAddress, format_message, open_sender, parse_address

STATE_FILE = "syslog-drainer.json"
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


def _parse_window(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
        raise ValueError(f"{value!r} must be a whole number from 1 to 100000")
    return value


# ---------------------------------------------------------------- what was shipped


@dataclass
class DrainState:
    """Build ids already shipped, kept in a small JSON file in ``data_dir``."""

    path: str
    shipped: set[int] = field(default_factory=set)

    @classmethod
    def load(cls, path: str) -> DrainState:
        try:
            with open(path) as f:
                doc = json.load(f)
            shipped = {int(i) for i in doc.get("shipped", [])}
        except FileNotFoundError:
            shipped = set()
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise MemberError(
                f"cannot read what syslog-drainer already shipped from {path}: {e}; fix or delete the file "
                "(deleting it ships the newest finished builds again)", member="syslog-drainer") from e
        return cls(path, shipped)

    def save(self) -> None:
        """Write the file atomically: a crash leaves either the old or the new content."""
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".syslog-drainer.", dir=directory)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"shipped": sorted(self.shipped)}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def forget_below(self, lowest_id: int) -> None:
        """Builds older than the window are never looked at again: drop them, so the file stays small."""
        self.shipped = {i for i in self.shipped if i >= lowest_id}


# ---------------------------------------------------------------- messages


def build_messages(build: Build, events: list[BuildEvent], *, facility: str, hostname: str, app_name: str) -> Iterator[bytes]:
    """The RFC 5424 messages for one finished build: its output line by line, then a summary."""
    sd_base = {"id": str(build.id), "pipeline": build.pipeline, "job": build.job}

    def message(text: str, when: float | None, msgid: str, severity: str, extra: dict[str, str]) -> bytes:
        return format_message(text, facility=facility, severity=severity, timestamp=when, hostname=hostname,
                              app_name=app_name, procid=str(build.id), msgid=msgid,
                              structured_data={SD_ID: {**sd_base, **extra}})

    # Output arrives in chunks that may end mid-line: join each step's chunks, cut at newlines.
    pending: dict[str, str] = {}
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
        elif event.type == "error":
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


async def tick(ctx: MemberContext) -> None:
    address: SyslogAddress | None = ctx.option("address")
    if address is None:
        if not ctx.state.get("told_unset"):
            ctx.log.info("nothing to do: no syslog receiver configured; set [members.syslog-drainer] address "
                         "to %s to ship finished build logs, or disable this member", ADDRESS_HELP)
            ctx.state["told_unset"] = True
        return
    state: DrainState | None = ctx.state.get("drain_state")
    if state is None:
        state = DrainState.load(os.path.join(ctx.config.node.data_dir, STATE_FILE))
        ctx.state["drain_state"] = state
    builds = await ctx.store.list_builds(limit=ctx.option("window"))
    if builds:
        state.forget_below(min(b.id for b in builds))
    todo = sorted((b for b in builds if b.status in FINISHED_STATUSES and b.id not in state.shipped), key=lambda b: b.id)
    if not todo:
        return
    hostname = socket.gethostname()
    shipped: list[int] = []
    try:
        async with open_sender(address) as sender:
            for build in todo:
                try:
                    events = await ctx.store.list_events(build.id)
                except StoreError as e:  # e.g. deleted by gc a moment ago
                    ctx.log.warning("cannot read the events of build %d, skipping it this run: %s", build.id, e)
                    continue
                messages = build_messages(build, events, facility=ctx.option("facility"), hostname=hostname,
                                          app_name=ctx.option("app_name"))
                await sender.send_many(messages)
                state.shipped.add(build.id)
                state.save()
                shipped.append(build.id)
    except OSError as e:
        raise MemberError(
            f"shipping build logs to {address} failed after {len(shipped)} of {len(todo)} builds: {e}; "
            "check that the syslog receiver runs and accepts this transport; the rest is retried next run",
            member=ctx.member.name) from e
    finally:
        if shipped:
            ctx.log.info("shipped the logs of %d build(s) to %s (ids %s)", len(shipped), address, _ids(shipped))


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
               f"where to send build logs: {ADDRESS_HELP}; unset: ship nothing"),
        Option("facility", _parse_facility, "user", f"syslog facility of the messages: {', '.join(FACILITIES)}"),
        Option("app_name", _parse_app_name, "web-node", "APP-NAME of the messages (at most 48 printable ASCII characters)"),
        Option("window", _parse_window, 1000, "how many of the newest builds each run looks at"),
    ),
    tick=tick,
)
