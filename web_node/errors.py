"""Every error web-node raises on purpose.

::

    WebNodeError                    base; ``str(e)`` is a complete sentence for an operator
    ├── ConfigError                 bad configuration: .key .value .valid; exit code 2
    ├── PipelineConfigError         a pipeline config sent to SetPipeline is invalid (web_node.pipeline_config; also a ValueError)
    ├── StoreError                  the database failed: .backend
    │   ├── NotFound                a named record does not exist: .kind .name
    │   └── Conflict                the request contradicts stored state
    ├── MemberError                 a member failed: .member
    └── SupervisorError             the node could not start or steer a group: .group .pid

Messages say what was wrong, the value, and what to do about it.

Two ValueErrors of the low-level parsers carry a message for the user; the
caller adds the key and turns them into one of the above (or a 400):

    ValueError
    ├── OutOfRange                  a duration or size past its maximum: .maximum (web_node.units)
    └── JsonBodyError               a request body that is not strict JSON (web_node.strict_json)
"""

from __future__ import annotations


class WebNodeError(Exception):
    """Base of every deliberate web-node error."""


class ConfigError(WebNodeError):
    """A configuration value is invalid; nothing has been started."""

    exit_code = 2

    def __init__(self, message: str, *, key: str | None = None, value: object = None, valid: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.value = value
        self.valid = valid


class StoreError(WebNodeError):
    """The store could not do what was asked."""

    def __init__(self, message: str, *, backend: str | None = None) -> None:
        super().__init__(message)
        self.backend = backend


class NotFound(StoreError):
    """A named record (pipeline, job, build, worker, component) does not exist."""

    def __init__(self, kind: str, name: object) -> None:
        super().__init__(f"{kind} {name!s} does not exist")
        self.kind = kind
        self.name = name


class Conflict(StoreError):
    """The request contradicts what is stored (e.g. aborting a finished build)."""


class MemberError(WebNodeError):
    """A member failed in a way its group's restart policy must judge."""

    def __init__(self, message: str, *, member: str) -> None:
        super().__init__(message)
        self.member = member


class SupervisorError(WebNodeError):
    """The node could not start, place or stop a group."""

    def __init__(self, message: str, *, group: str | None = None, pid: int | None = None) -> None:
        super().__init__(message)
        self.group = group
        self.pid = pid
