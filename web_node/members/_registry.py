"""The registry: the one list of members.

Everything that differs per member (subcommands, config sections, env
switches, metrics, rows of ``web-node members``) is generated from it, so
registering a member is the only step needed to give it all of those.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from web_node.members._member import ROLES, Endpoint, Member, Role


class Registry:
    """An ordered set of members with unique names and unique endpoint names."""

    def __init__(self, members: Iterable[Member] = ()) -> None:
        self._members: dict[str, Member] = {}
        self._endpoint_owner: dict[str, str] = {}
        for member in members:
            self.register(member)

    def register(self, member: Member) -> Member:
        if member.name in self._members:
            raise ValueError(f"member {member.name!r} is registered twice")
        # A member may share its name with its own role (api, ui, gateway): the role command runs it.
        if member.name in RESERVED_COMMANDS or (member.name in ROLES and member.role != member.name):
            raise ValueError(f"member name {member.name!r} collides with a command of the same name")
        if member.env_disable_var == "WEB_NODE_DISABLE_ENDPOINTS":
            raise ValueError(f"member name {member.name!r} would make its switch WEB_NODE_DISABLE_ENDPOINTS, "
                             "which already switches endpoints off; choose another name")
        for endpoint in member.endpoints:
            owner = self._endpoint_owner.get(endpoint.name)
            if owner is not None:
                raise ValueError(f"endpoint {endpoint.name} of member {member.name} is already declared by member {owner}")
        self._members[member.name] = member
        for endpoint in member.endpoints:
            self._endpoint_owner[endpoint.name] = member.name
        return member

    def copy(self) -> Registry:
        return Registry(self._members.values())

    def __iter__(self) -> Iterator[Member]:
        return iter(self._members.values())

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def get(self, name: str) -> Member:
        return self._members[name]

    def names(self) -> list[str]:
        return list(self._members)

    def by_role(self, role: Role) -> list[Member]:
        return [m for m in self._members.values() if m.role == role]

    def endpoint_names(self) -> list[str]:
        return list(self._endpoint_owner)

    def endpoint_owner(self, endpoint: str) -> Member:
        return self._members[self._endpoint_owner[endpoint]]

    def endpoints(self) -> list[tuple[Member, Endpoint]]:
        return [(m, e) for m in self._members.values() for e in m.endpoints]


# Subcommands that are not member names; a member may not shadow them.
RESERVED_COMMANDS = frozenset({"web", "members", "plan", "quickstart", "worker", "status", "top", "group", "help"})
