"""Merging exposition pages: the node's own families and each child's page, as one page.

Children export the same families (every http child has
``web_node_http_requests_total``), each with its own ``member`` labels. A
valid page names each family once, so the pages are merged by family: the
HELP/TYPE/UNIT lines once (from the first page that has the family), then
every page's samples of it.

This works on the text, family block by family block (a block is the
metadata lines of a family and the sample lines after them, up to the next
``# HELP``), which is much cheaper than parsing and re-rendering every sample,
and works alike for the Prometheus text format and OpenMetrics, as long as
every page was written in the same format (the node asks each child for the
format it answers in). Both formats escape newlines inside HELP texts and
label values, so a line that starts with ``# HELP`` always starts a family.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from web_node.metrics._exposition import family_head
from web_node.metrics._member_families import BLOCK_END, MEMBER_FAMILIES

_HELP = b"# HELP "
_SPLIT = b"\n# HELP "
_EOF = b"# EOF\n"


def merge_pages(pages: Iterable[bytes], *, openmetrics: bool) -> bytes:
    """One page with each family once; ``openmetrics`` ends it with the one ``# EOF``."""
    heads: dict[bytes, bytes] = {}
    bodies: dict[bytes, list[bytes]] = {}
    for text in pages:
        if text.endswith(_EOF):
            text = text[: -len(_EOF)]
        if not text.startswith(_HELP):
            # Samples before any HELP: a family without metadata (not written by web-node), kept as is.
            cut = text.find(_SPLIT)
            lead, text = (text, b"") if cut < 0 else (text[: cut + 1], text[cut + 1:])
            if lead.strip():
                heads.setdefault(b"", b"")
                bodies.setdefault(b"", []).append(lead if lead.endswith(b"\n") else lead + b"\n")
            if not text:
                continue
        # bytes.split finds the family starts at C speed; each block is one family of this page.
        for block in text[len(_HELP):].split(_SPLIT):
            if not block.endswith(b"\n"):
                block += b"\n"
            pos = block.find(b"\n") + 1  # past the HELP line
            while block.startswith(b"# ", pos):  # TYPE and UNIT lines
                pos = block.find(b"\n", pos) + 1
            name = block[: block.find(b" ")]
            if name not in heads:
                heads[name] = _HELP + block[:pos]
                bodies[name] = []
            if pos < len(block):
                bodies[name].append(block[pos:])
    out = [heads[name] + b"".join(bodies[name]) for name in heads]
    if openmetrics:
        out.append(_EOF)
    return b"".join(out)


def split_blocks(body: bytes) -> list[bytes] | None:
    """A child's compact answer (see _member_families): one block per family of MEMBER_FAMILIES, then the
    empty rest after the last ``#`` line; None when it does not have that shape."""
    parts = body.split(_BLOCK_END, len(MEMBER_FAMILIES))
    return parts if len(parts) == len(MEMBER_FAMILIES) + 1 and not parts[-1] else None


def join_blocks(children: Sequence[Sequence[bytes]], *, openmetrics: bool, before: bytes = b"", after: bytes = b"") -> bytes:
    """Each family of MEMBER_FAMILIES once: its HELP/TYPE lines, then every child's block of it, in children's order;
    between ``before`` and ``after`` (one join: the page is copied once)."""
    out = [before]
    for i, (name, kind, help_text, optional) in enumerate(MEMBER_FAMILIES):
        blocks = [child[i] for child in children]
        if optional and not any(blocks):
            continue  # no process accounts task CPU: leave the family out, as a child's own page does
        out.append(_head(name, kind, help_text, openmetrics))
        out.extend(blocks)
    out.append(after)
    return b"".join(out)


_BLOCK_END = BLOCK_END.encode()


@functools.lru_cache(maxsize=64)
def _head(name: str, kind: str, help_text: str, openmetrics: bool) -> bytes:
    return family_head(name, kind, help_text, openmetrics).encode("utf-8")
