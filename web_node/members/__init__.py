"""Members and the registry: the one list of what the web node runs.

To add a member, write a module with a ``MEMBER`` and add it to
``_BUILT_IN`` below; subcommand, config section, env switch, metrics and a
row in ``web-node members`` follow from the registry.
"""

from __future__ import annotations

from web_node.members._context import MemberContext
from web_node.members._member import KINDS, RESERVED_MEMBER_KEYS, ROLES, Endpoint, Kind, Member, Option, Role
from web_node.members._registry import RESERVED_COMMANDS, Registry


def default_registry() -> Registry:
    """A fresh registry holding the built-in members (a new one per call, so
    tests may register more without affecting others)."""
    from web_node.members import api, build_tracker, gateway, gc, scheduler, syslog_drainer, ui

    return Registry(m.MEMBER for m in (api, ui, scheduler, build_tracker, gc, syslog_drainer, gateway))


__all__ = [
    "KINDS", "RESERVED_COMMANDS", "RESERVED_MEMBER_KEYS", "ROLES",
    "Endpoint", "Kind", "Member", "MemberContext", "Option", "Registry", "Role", "default_registry",
]
