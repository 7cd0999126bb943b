"""Writing pages in the Prometheus text format (0.0.4) and OpenMetrics 1.0, fast.

prometheus_client's encoders validate and escape every label of every
sample (about 5-20 µs a sample here); a scrape of a node with 50 groups
renders thousands of samples, in the node and in every child. Our families
have fixed, valid names and label sets known when the state is created, so
label strings are built once (:func:`labels`), a family's HELP/TYPE lines
once per process (they are constant text), and a sample costs one string
format. Format negotiation still uses prometheus_client's ``choose_encoder``
(remembered per ``Accept`` value: scrapers send the same one every time);
this module writes what the negotiated content type says.

Every family starts with its ``# HELP`` line (the page merge relies on it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels(**pairs: str) -> str:
    """``member="api",endpoint="GetJob"``: build once, reuse for every sample."""
    return ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs.items())


def join_labels(*parts: str) -> str:
    return ",".join(p for p in parts if p)


def format_value(value: float) -> str:
    if type(value) is int:  # counts, bytes: the common case, and the cheapest
        return str(value)
    text = repr(value)  # the shortest text that reads back as the same float: "0.25", "3.0", "1e+16"
    if text[-1] in "nf":  # "nan", "inf", "-inf"
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    return text


def is_openmetrics(content_type: str) -> bool:
    return content_type.startswith("application/openmetrics-text")


@functools.lru_cache(maxsize=64)
def negotiate(accept: str) -> str:
    """The content type to answer ``accept`` with (prometheus_client's choice)."""
    return choose_encoder(accept)[1]


@functools.lru_cache(maxsize=1024)
def family_head(name: str, kind: str, help_text: str, openmetrics: bool) -> str:
    """The ``# HELP``/``# TYPE`` lines of a family. ``name`` as samples use it: ``..._total`` for a counter."""
    if openmetrics:
        if kind == "counter" and name.endswith("_total"):
            name = name[:-6]
        help_text = help_text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    else:
        help_text = help_text.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"


@functools.lru_cache(maxsize=4096)
def histogram_template(name: str, label_text: str, les: tuple[str, ...]) -> str:
    """The lines of one histogram as a ``%`` template: a ``%d`` per bucket and the count, ``%s`` the sum.

    A histogram has a dozen buckets and most are written unchanged from
    scrape to scrape: one ``%`` of a template built once per histogram is
    several times cheaper than formatting each line.
    """
    def esc(text: str) -> str:
        return text.replace("%", "%%")

    labels_comma = f"{esc(label_text)}," if label_text else ""
    lines = [f'{esc(name)}_bucket{{{labels_comma}le="{esc(le)}"}} %d\n' for le in les]
    braces = f"{{{esc(label_text)}}}" if label_text else ""
    lines.append(f"{esc(name)}_count{braces} %d\n")
    lines.append(f"{esc(name)}_sum{braces} %s\n")
    return "".join(lines)


def sample_line(name: str, label_text: str, value: float) -> str:
    if label_text:
        return f"{name}{{{label_text}}} {format_value(value)}\n"
    return f"{name} {format_value(value)}\n"


def histogram_lines(name: str, label_text: str, les: Sequence[str], cumulative: Sequence[int], total: float) -> str:
    """The ``_bucket`` lines (``les`` already formatted, ending with ``+Inf``), ``_count`` and ``_sum`` of one histogram."""
    if len(les) != len(cumulative) or not les:
        raise ValueError(f"histogram {name}: {len(les)} buckets but {len(cumulative)} counts")
    return histogram_template(name, label_text, tuple(les)) % (*cumulative, cumulative[-1], format_value(total))


class PageWriter:
    """Families and samples, appended in order; :meth:`finish` gives the page."""

    def __init__(self, *, openmetrics: bool) -> None:
        self.openmetrics = openmetrics
        self._out: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        """Start a family. ``name`` as samples use it: ``..._total`` for a counter."""
        self._out.append(family_head(name, kind, help_text, self.openmetrics))

    def sample(self, name: str, label_text: str, value: float) -> None:
        self._out.append(sample_line(name, label_text, value))

    def histogram(self, name: str, label_text: str, les: Sequence[str], cumulative: Sequence[int], total: float) -> None:
        """The ``_bucket`` samples (``les`` already formatted, ending with ``+Inf``), ``_count`` and ``_sum``."""
        self._out.append(histogram_lines(name, label_text, les, cumulative, total))

    def lines(self, text: str) -> None:
        """Sample lines rendered earlier (by :func:`sample_line`/:func:`histogram_lines`), appended as they are."""
        self._out.append(text)

    def metric(self, metric: Metric) -> None:
        """A family from prometheus_client (a registry's collector), written the same way."""
        name = metric.name + "_total" if metric.type == "counter" else metric.name
        kind = metric.type if metric.type in ("counter", "gauge", "histogram", "summary") else "untyped"
        if self.openmetrics and kind == "untyped":
            kind = "unknown"
        self.family(name, kind, metric.documentation)
        for s in metric.samples:
            if s.name.endswith("_created"):
                continue  # creation timestamps: noise for these metrics
            self.sample(s.name, ",".join(f'{k}="{escape_label_value(v)}"' for k, v in s.labels.items()), s.value)

    def finish(self) -> bytes:
        if self.openmetrics:
            self._out.append("# EOF\n")
        return "".join(self._out).encode("utf-8")

    def text(self) -> str:
        """The page so far, without the OpenMetrics end marker (for merging)."""
        return "".join(self._out)
