"""web-node: the web node of a CI server whose members run in processes and
cgroups of the operator's choosing.

The command line is :mod:`web_node.cli`; the member list is
:func:`web_node.members.default_registry`.
"""

from __future__ import annotations

__version__ = "0.1.0"
