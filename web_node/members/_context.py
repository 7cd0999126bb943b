"""What a running member gets to work with."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from web_node.config import Config, MemberSettings
    from web_node.members._member import Member
    from web_node.metrics import ProcessMetrics
    from web_node.store import AsyncStore


@dataclass
class MemberContext:
    """Live per-member state handed to ``tick``, ``make_app`` and ``run``.

    ``store`` is shared by every member of the process; ``listen_fd`` is the
    socket the node bound for an http member (None when the member binds its
    own ``settings.listen``, as with ``--in-process``).
    """

    member: Member
    config: Config
    group: str
    log: logging.LoggerAdapter[logging.Logger]
    store: AsyncStore
    metrics: ProcessMetrics
    listen_fd: int | None = None
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> MemberSettings:
        return self.config.members[self.member.name]

    def option(self, name: str) -> Any:
        """The typed value of one of this member's own options."""
        return self.settings.options[name]
