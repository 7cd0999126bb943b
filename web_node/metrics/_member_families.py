"""The families every group's process exports, in page order, and the compact form the node fetches them in.

A child's page for a person (curl on its socket, ``--in-process``) is the
usual exposition text. The node asks for a compact form instead, because it
merges 50 such pages per scrape: each family's sample lines in the order of
:data:`MEMBER_FAMILIES`, each block followed by a ``#`` line, nothing after
the last one. The node writes the HELP/TYPE lines itself, so merging is a
split and an append per family, not a parse of every page.

A ``#`` line cannot be part of a block: a sample line ends with its value,
and label values carry newlines escaped. The node names the table it expects
(:data:`FAMILIES_FINGERPRINT`) in its request; a child built from another
table (a package upgraded under a running node) answers plain text instead.
"""

from __future__ import annotations

import hashlib

#: (name as samples use it, type, help, left out when no process has samples: the task-accounting families).
MEMBER_FAMILIES: tuple[tuple[str, str, str, bool], ...] = (
    ("web_node_member_enabled", "gauge", "1 when the member is enabled and running in this node", False),
    ("web_node_member_cpu_seconds_total", "counter",
     "CPU time spent running the member's own trio tasks (its endpoints' included), "
     "told apart also when members share a process", True),
    ("web_node_member_runs_total", "counter", "Runs of a periodic member by outcome (ok, error, skipped_paused)", False),
    ("web_node_member_last_run_timestamp_seconds", "gauge", "UNIX time the member's last run ended", False),
    ("web_node_member_run_duration_seconds", "histogram", "How long each run of a periodic member took", False),
    ("web_node_http_requests_total", "counter", "HTTP requests answered, by endpoint, method and status code", False),
    ("web_node_http_request_duration_seconds", "histogram",
     "Time from a request's arrival at the app to the end of its answer", False),
    ("web_node_http_requests_in_flight", "gauge", "Requests being answered right now", False),
    ("web_node_http_endpoint_enabled", "gauge",
     "1 for each declared endpoint that is on, 0 when disabled by configuration", False),
    ("web_node_endpoint_cpu_seconds_total", "counter",
     "CPU time spent running the tasks that answer the endpoint's requests", True),
)

#: Ends each family's block in the compact form.
BLOCK_END = "#\n"

FAMILIES_FINGERPRINT = hashlib.sha256(repr(MEMBER_FAMILIES).encode()).hexdigest()[:16]

#: The request header the node names the table with, and the content type of a compact answer.
BLOCKS_HEADER = "x-web-node-blocks"
BLOCKS_CONTENT_TYPE = f"application/x-web-node-blocks; families={FAMILIES_FINGERPRINT}"
