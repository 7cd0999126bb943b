"""What each configuration key means: its type, default, twins and use.

The parser (:mod:`web_node.config`) decides which keys exist; this table
says what they mean, and ``docs/configuration.md`` is generated from both
(``make docs``). ``tests/test_docs.py`` fails when the parser accepts a key
that has no entry here, and when a default written here is not the one the
parser applies; so a new key is added in two places: its parsing in
config.py, its meaning here.

Keys are named ``SECTION.KEY``; ``members.KEY`` are the keys every member
section may hold (which ones apply depends on the member's kind: the parser
says), and a member's own options are documented by its ``Option`` in the
registry. A default is the TOML text of the value the parser uses when the
key is left out, or a sentence in parentheses when it depends on something.
"""

from __future__ import annotations

from dataclasses import dataclass

from web_node.units import DURATION_HELP, SIZE_HELP


@dataclass(frozen=True)
class KeyDoc:
    type: str
    default: str
    help: str
    env: str = ""  # the environment variable that sets it
    flag: str = ""  # the command-line flag that sets it

    @property
    def default_is_toml(self) -> bool:
        """Whether ``default`` is a TOML value (checked against the parser) rather than a sentence."""
        return not self.default.startswith("(")


KEYS: dict[str, KeyDoc] = {
    # ------------------------------------------------------------ [node]
    "node.data_dir": KeyDoc(
        "path", "(/var/lib/web-node as root, else $XDG_STATE_HOME/web-node)",
        "where the node keeps its SQLite database, generated tokens and control socket", flag="--data-dir DIR"),
    "node.database": KeyDoc(
        "URL", "(sqlite:///DATA_DIR/node.db)", "sqlite:///PATH, or postgresql://USER@HOST/DB for a shared PostgreSQL"),
    "node.cgroup_root": KeyDoc(
        "string", '"web-node"',
        "the cgroup directory the groups are made in: relative to the node's own cgroup, or absolute"),
    "node.metrics_listen": KeyDoc(
        "HOST:PORT", '"127.0.0.1:9391"', 'where the node serves /metrics; "" switches the page off'),
    "node.shutdown_grace": KeyDoc(
        "duration", '"10s"', "how long a group may take to stop after SIGTERM before its cgroup is killed"),
    "node.log_format": KeyDoc("text or json", '"text"', "log lines as text or as one JSON object each",
                              flag="--log-format"),
    "node.log_level": KeyDoc("debug, info, warning or error", '"info"', "the least important log lines written"),
    "node.user": KeyDoc(
        "user name", "(unset: the node's own user)",
        "the unprivileged user the group children run as; the node keeps root for cgroup writes and low ports"),
    # ------------------------------------------------------------ [members.NAME]
    "members.enabled": KeyDoc(
        "boolean", "true", "false switches the member off: it is not started, its endpoints are not served",
        env="WEB_NODE_DISABLE_<MEMBER>=1", flag="--disable MEMBER"),
    "members.interval": KeyDoc("duration", "(the member's own, see below)", "time between two runs of a periodic member"),
    "members.listen": KeyDoc("HOST:PORT", "(the member's own, see below)", "the address an http member serves on"),
    "members.disabled_endpoints": KeyDoc(
        "list of endpoint names", "[]", "endpoints switched off: they answer 404 and their handler never runs",
        env="WEB_NODE_DISABLE_ENDPOINTS=A,B", flag="--disable-endpoint NAME"),
    "members.allowed_hosts": KeyDoc(
        "list of host names", "[]",
        'the Host names the listener answers; [] means the listen host, localhost, 127.0.0.1 and ::1; ["*"] any'),
    "members.certfile": KeyDoc("path", "(unset: plain HTTP)", "TLS certificate (PEM); needs keyfile"),
    "members.keyfile": KeyDoc("path", "(unset: plain HTTP)", "TLS private key (PEM); needs certfile"),
    "members.max_connections": KeyDoc(
        "integer 1..100000", "100", "connections served at once; more wait in the kernel's backlog"),
    "members.max_streams": KeyDoc(
        "integer 0..100000", "32", "live event streams (server-sent events) at once; more answer 503"),
    "members.header_timeout": KeyDoc(
        "duration", '"10s"', "from connect (or the previous answer) to a complete request head; at most 1h"),
    "members.body_timeout": KeyDoc("duration", '"30s"', "from the request head to the end of its body; at most 1h"),
    "members.max_body": KeyDoc(
        "size", "(the member's own limit)", "the body limit of endpoints without one of their own; larger bodies answer 413"),
    "members.body_limits": KeyDoc(
        "table of endpoint = size", "{}", 'body limits per endpoint, e.g. { SetPipeline = "2M" }'),
    # ------------------------------------------------------------ [groups.NAME]
    "groups.members": KeyDoc(
        "list of member names", "(the member the group is named after)",
        "the members that share this group's process and cgroup; a member is in exactly one group"),
    "groups.memory_max": KeyDoc(
        "size", "(unlimited)", "hard memory limit (memory.max / memory.limit_in_bytes): beyond it the OOM killer acts",
        flag="--memory-max GROUP=SIZE"),
    "groups.memory_high": KeyDoc("size", "(unlimited)", "memory throttling threshold (memory.high); at most memory_max"),
    "groups.memory_low": KeyDoc("size", "(none)", "memory protected from reclaim (memory.low)"),
    "groups.swap_max": KeyDoc("size", "(unlimited)", "swap limit (memory.swap.max)"),
    "groups.cpu_max": KeyDoc("number of cores", "(unlimited)", 'CPU limit in cores, e.g. "0.5" (cpu.max / cfs quota)'),
    "groups.cpu_weight": KeyDoc("integer 1..10000", "(the kernel's: 100)", "CPU share against other groups (cpu.weight)"),
    "groups.pids_max": KeyDoc("integer 1..4194304", "(unlimited)", "processes and threads the group may have (pids.max)"),
    "groups.restart": KeyDoc(
        "always, on-failure or never", '"on-failure"', "when the supervisor restarts the group's process after it ends"),
    "groups.restart_limit": KeyDoc(
        "integer 0..1000000", "5", "more restarts than this within restart_window: a crash loop, the group is given up"),
    "groups.restart_window": KeyDoc("duration", '"60s"', "the window restart_limit counts restarts in"),
}

#: How a type word of the table is written, for the reference's legend.
TYPE_HELP = {"duration": DURATION_HELP, "size": SIZE_HELP}
