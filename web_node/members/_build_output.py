"""The per-build output cap, enforced by the gateway on what workers send.

A build may write at most ``[members.gateway] max_build_output`` of events
(counted as their stored JSON payloads). The batch that would pass the cap
stores what fits, then one ``truncated`` event; everything the build sends
after that is dropped (the worker is told ``accepted`` 0 and carries on, or
is stopped by its timeout). The cap is the gateway's, not the worker's: a
worker that ignores it cannot make the store, the event streams or the syslog
drainer hold more.

Each gateway process remembers the count of the builds it has seen lately
and asks the store once for a build it does not know (after a restart, or a
build another gateway started), so the count survives restarts. Gateways
sharing one PostgreSQL each keep their own count: a build whose batches are
spread over N gateways may write up to N times the cap.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from web_node.store import AsyncStore
from web_node.units import format_size

#: The event that says a build's output was cut; workers may not send it.
TRUNCATED = "truncated"
DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024
_DONE = -1  # a build whose truncated event is stored: nothing more is kept

Event = tuple[str, dict[str, Any]]


@dataclass
class OutputBudget:
    """Output counts of the builds this gateway saw lately (at most ``remembered`` builds)."""

    max_bytes: int
    remembered: int = 4096
    _used: OrderedDict[int, int] = field(default_factory=OrderedDict)

    _pending: dict[int, int] = field(default_factory=dict)

    async def admit(self, store: AsyncStore, build_id: int, events: Sequence[Event]) -> list[Event]:
        """The events of this batch to store: those within the cap, then a truncated event once.

        The count changes only at :meth:`settle`, once the store has taken the batch: a batch the
        store refuses (not this worker's build, a re-sent batch) costs the build nothing."""
        if build_id not in self._used:
            stored, truncated = await store.output_size(build_id, TRUNCATED)
            self._used.setdefault(build_id, _DONE if truncated else stored)
        self._used.move_to_end(build_id)
        while len(self._used) > self.remembered:
            self._used.popitem(last=False)
        used = self._used[build_id]
        if used == _DONE:
            return []
        kept: list[Event] = []
        for type_, payload in events:
            size = len(json.dumps(payload))
            if used + size > self.max_bytes:
                kept.append((TRUNCATED, self.truncated_payload()))
                used = _DONE
                break
            used += size
            kept.append((type_, payload))
        self._pending[build_id] = used
        return kept

    def settle(self, build_id: int, stored: bool) -> None:
        """The store took (``stored``) or refused the batch :meth:`admit` prepared for ``build_id``."""
        used = self._pending.pop(build_id, None)
        if stored and used is not None and build_id in self._used:
            self._used[build_id] = used

    def truncated_payload(self) -> dict[str, Any]:
        return {"message": f"[web-node: this build's output passed {format_size(self.max_bytes)}; the rest is dropped "
                           "(the gateway's [members.gateway] max_build_output)]",
                "limit_bytes": self.max_bytes}
